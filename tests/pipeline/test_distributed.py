"""Fits and predictions over several processes (laplace_cli.pipeline.distributed).

The acceptance tests launch 2 CPU processes with torchrun (gloo) running the real CLI and
compare the posterior (float64, rtol 1e-6) and the prediction rows with one process. The
in-process tests check the pieces: sharding without padding, and `Laplace.fit(reduce=...)`
summing shard states into exactly the one-process posterior (diag, kron, full, a posterior
folded in as prior, the MC Fisher's raw sums).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline import distributed
from laplace_cli.pipeline.stages import load_posterior
from tests import reference as ref
from tests.conftest import tiny_data, tiny_mlp

FACTORY = """
from torch import nn


def make(n_in=3, hidden=6, n_out=4):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))
"""


def write_problem(folder: Path, n_train: int = 45, seed: int = 0) -> dict[str, Path]:
    """A tiny MLP (safetensors + factory file) and a classification data spec in `folder`."""
    (folder / "factory.py").write_text(FACTORY)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4)
    )  # the factory's architecture
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "m.safetensors")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train, 3))
    y = rng.integers(0, 4, n_train)
    np.savez(folder / "train.npz", x=x, y=y)
    np.savez(folder / "test.npz", x=x[:23], y=y[:23])
    (folder / "data.yaml").write_text(
        "task: classification\nbatch_size: 4\n"
        "splits:\n  train: {path: train.npz}\n  test: {path: test.npz}\n"
    )
    return {
        "model": folder / "m.safetensors",
        "factory": folder / "factory.py",
        "data": folder / "data.yaml",
    }


def fit_args(p: dict[str, Path], structure: str, out: Path) -> list[str]:
    return [
        "fit",
        str(p["model"]),
        "--model-factory",
        f"{p['factory']}:make",
        "--data",
        str(p["data"]),
        "--subset",
        "all",
        "--structure",
        structure,
        "--dtype",
        "float64",
        "--batch-size",
        "4",
        "-o",
        str(out),
        "-q",
    ]


DRIVER = """
import json, os, sys
from laplace_cli.pipeline import distributed
from laplace_cli.cli.app import app

shard_loader = distributed.shard_loader


def recording_shard_loader(loader, ctx):  # each shard's rows, to show the work was shared
    shard = shard_loader(loader, ctx)
    with open(f"shards.rank{os.environ['RANK']}.txt", "a") as f:
        f.write(f"{len(shard.dataset)}\\n")
    return shard


distributed.shard_loader = recording_shard_loader
if os.environ.get("KILL_AFTER_CHECKPOINTS"):  # "1,2": rank r dies after its n_r-th save
    import signal
    import time
    from laplace_cli.pipeline.resume import FitCheckpoint

    save = FitCheckpoint.save
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    limit = int(os.environ["KILL_AFTER_CHECKPOINTS"].split(",")[rank])

    def save_then_die(self, batches_done):
        save(self, batches_done)
        if self.saves >= limit:
            # torchrun stops every worker within ~0.1 s of the first death, so a rank that
            # died at once could stop another before its own planned checkpoint (on a busy
            # machine the ranks drift apart by seconds). Each rank marks that it is done and
            # waits for the others (no collective runs before the fit's end): all die together.
            open(f"killed.rank{rank}", "w").close()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                os.path.exists(f"killed.rank{r}") for r in range(world)
            ):
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

    FitCheckpoint.save = save_then_die
for args in json.load(open(sys.argv[1])):
    try:
        app(args, prog_name="laplace")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
"""


def torchrun(commands: list[list[str]], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """Run CLI commands in order under `torchrun --standalone --nproc-per-node N` (gloo, CPU).

    One launch for several commands: the processes start (and import torch) once, as they
    would for `torchrun -m laplace_cli ...`, and run the same `app` the entry point runs.
    """
    cmd, env = torchrun_command(commands, cwd, nproc)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def torchrun_command(
    commands: list[list[str]], cwd: Path, nproc: int = 2
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `torchrun` (writes the driver and commands to `cwd`)."""
    import json

    (cwd / "driver.py").write_text(DRIVER)
    (cwd / "commands.json").write_text(json.dumps(commands))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    runner = shutil.which("torchrun")
    launcher = [runner] if runner else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*launcher, "--standalone", "--nproc-per-node", str(nproc), "driver.py"]
    return [*cmd, "commands.json"], env


def assert_same_posterior(a: Path, b: Path) -> None:
    """Same posterior precision (dense), MAP, loss and marginal likelihood, rtol 1e-6."""
    la, lb = load_posterior(a, dtype="float64"), load_posterior(b, dtype="float64")
    Pa, Pb = ref.dense_precision(la.la), ref.dense_precision(lb.la)
    torch.testing.assert_close(Pb, Pa, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(lb.la.mean, la.la.mean, rtol=0, atol=0)
    assert lb.la.n_data == la.la.n_data
    torch.testing.assert_close(lb.la.loss, la.la.loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        lb.la.log_marginal_likelihood(), la.la.log_marginal_likelihood(), rtol=1e-8, atol=0
    )


RECIPE = """
model: {path: m.safetensors, factory: factory.py:make}
data: data.yaml
dtype: float64
batch_size: 5
stages: [fit, tune, evaluate, predict]
fit: {subset: all, structure: kron}
tune: {method: marglik}
evaluate: {split: test, fail_if: ["ece>0.99"]}
predict: {split: test}
"""


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One process and two processes (torchrun, gloo): fit diag and kron, predict and evaluate
    with kron, and run a recipe (fit, tune, evaluate, predict); one launch for all.

    45 training rows (contiguous shards of 23 and 22), batches of 4; 23 test rows predicted
    in chunks of 5 (dealt 0, 1, 0, 1, 0 to the ranks) and evaluated in batches of 5 (shards of
    12 and 11 rows, cut mid-batch); 22 validation rows fit the temperature.
    """
    folder = tmp_path_factory.mktemp("dist")
    p = write_problem(folder)
    train = np.load(folder / "train.npz")
    np.savez(folder / "val.npz", x=train["x"][23:], y=train["y"][23:])
    p["data"].write_text(p["data"].read_text() + "  val: {path: val.npz}\n")
    (folder / "recipe.yaml").write_text(RECIPE)
    post = folder / "one-kron.st"
    predict = ["predict", "-p", str(post), "--data", str(p["data"]), "--split", "test"]
    predict += ["--batch-size", "5", "-q"]
    evaluate = ["evaluate", "-p", str(post), "--data", str(p["data"]), "--batch-size", "5", "-q"]
    run = ["run", str(folder / "recipe.yaml"), "-q", "--output"]
    runner = CliRunner()
    for structure in ("diag", "kron"):
        res = runner.invoke(app, fit_args(p, structure, folder / f"one-{structure}.st"))
        assert res.exit_code == 0, res.output
    for args in (
        [*predict, "-o", str(folder / "one.csv")],
        [*evaluate, "--report", str(folder / "one.json")],
        [*run, str(folder / "one")],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    torchrun(
        [
            fit_args(p, "diag", folder / "two-diag.st"),
            fit_args(p, "kron", folder / "two-kron.st"),
            [*predict, "-o", str(folder / "two.csv")],
            [*evaluate, "--report", str(folder / "two.json")],
            [*run, str(folder / "two")],
        ],
        folder,
    )
    return folder


# --- acceptance: 2 processes with torchrun == 1 process --------------------------------------
@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_torchrun_fit_matches_one_process(two_process_run, structure):
    one, two = two_process_run / f"one-{structure}.st", two_process_run / f"two-{structure}.st"
    assert_same_posterior(one, two)
    meta = load_posterior(two).metadata
    assert meta["world_size"] == 2 and meta["shard_sizes"] == [23, 22]  # no padding
    assert "world_size" not in load_posterior(one).metadata
    assert not list(two_process_run.glob("*.ckpt"))


def test_torchrun_predict_matches_one_process(two_process_run):
    rows1 = list(csv.DictReader((two_process_run / "one.csv").open()))
    rows2 = list(csv.DictReader((two_process_run / "two.csv").open()))
    assert len(rows1) == len(rows2) == 23
    assert [r["id"] for r in rows2] == [str(i) for i in range(23)]  # input order
    for r1, r2 in zip(rows1, rows2):
        assert r1.keys() == r2.keys()
        for key in r1:  # mutual_info too: its Monte Carlo draws are seeded per row
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-9, abs=1e-12), key


def assert_same_report(one: dict, two: dict) -> None:
    """Same metrics, settings (the fitted temperature included) and gates, rtol 1e-6."""
    assert one["rows"].keys() == two["rows"].keys() == {"map", "temperature", "laplace"}
    for row in one["rows"]:
        assert one["rows"][row].keys() == two["rows"][row].keys()
        for name, value in one["rows"][row].items():
            assert two["rows"][row][name] == pytest.approx(value, rel=1e-6, abs=1e-12), (row, name)
    assert two["settings"].keys() == one["settings"].keys()
    for name, value in one["settings"].items():
        if isinstance(value, float) or (isinstance(value, list) and value):
            assert two["settings"][name] == pytest.approx(value, rel=1e-6), name
        else:
            assert two["settings"][name] == value, name
    assert [g["failed"] for g in two["gates"]] == [g["failed"] for g in one["gates"]]


def test_torchrun_evaluate_and_run_match_one_process(two_process_run):
    """`laplace evaluate` and a `laplace run` recipe under torchrun share the predictive work
    and write the report, posterior and predictions of one process; the recipe's marglik
    tuning runs on rank 0 and is shared.
    """
    import json

    tmp_path = two_process_run
    # Rank 1's shards: fit diag, fit kron, evaluate (test, val), run (fit; evaluate test, val).
    shards = (tmp_path / "shards.rank1.txt").read_text().split()
    assert [int(n) for n in shards] == [22, 22, 11, 11, 22, 11, 11]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["settings"]["n_test"] == 23 and "temperature" in two["settings"]
    assert_same_report(one, two)

    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert_same_report(one, two)
    assert two["tuning"]["prior_precision"] == pytest.approx(one["tuning"]["prior_precision"])
    assert_same_posterior(
        tmp_path / "one/posterior.safetensors", tmp_path / "two/posterior.safetensors"
    )
    rows1 = list(csv.DictReader((tmp_path / "one/predictions.csv").open()))
    rows2 = list(csv.DictReader((tmp_path / "two/predictions.csv").open()))
    assert [r["id"] for r in rows2] == [str(i) for i in range(23)]  # input order
    for r1, r2 in zip(rows1, rows2, strict=True):
        for key in r1:  # mutual_info too: its Monte Carlo draws are seeded per row
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-6, abs=1e-12), key
    assert sorted(f.name for f in (tmp_path / "two").iterdir()) == sorted(
        f.name for f in (tmp_path / "one").iterdir()
    )


# --- sharding -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_range_tiles_without_padding(n, world):
    ranges = [distributed.shard_range(n, r, world) for r in range(world)]
    rows = [i for start, stop in ranges for i in range(start, stop)]
    assert rows == list(range(n))  # every row once, in rank order
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_shard_loader_keeps_batches_and_refuses_iterable():
    ds = torch.utils.data.TensorDataset(torch.arange(10.0))
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    ctx = distributed.DistContext(rank=1, world_size=3, local_rank=1, backend="gloo")
    shard = distributed.shard_loader(loader, ctx)
    assert [b[0].tolist() for b in shard] == [[4.0, 5.0, 6.0]]
    assert distributed.shard_loader(loader, None) is loader

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from range(3)

    with pytest.raises(BadInputError, match="map-style"):
        distributed.shard_loader(torch.utils.data.DataLoader(Stream()), ctx)


def test_round_robin_alone_and_dealt():
    assert list(distributed.round_robin(range(5), None)) == [0, 1, 2, 3, 4]
    ctx = distributed.DistContext(rank=1, world_size=2, local_rank=1, backend="gloo")
    assert list(distributed.round_robin(range(5), ctx)) == [1, 3]


# --- Laplace.fit(reduce=...) in one process ---------------------------------------------------
def shard_batches(X, y, start, stop, bs=3):
    return [(X[i : min(i + bs, stop)], y[i : min(i + bs, stop)]) for i in range(start, stop, bs)]


def reduce_with(other: dict[str, torch.Tensor]):
    """A stand-in all-reduce over two shards: add the other shard's partial state."""

    def reduce(tensors):
        names = sorted(other)
        assert len(tensors) == len(names)
        for t, name in zip(tensors, names):
            t.add_(other[name].to(t.dtype))

    return reduce


@pytest.mark.parametrize(
    "structure,curvature",
    [("diag", "ggn"), ("kron", "ggn"), ("full", "ggn"), ("kron", "ef")],
    ids=lambda v: v,
)
@pytest.mark.parametrize("with_prior", [False, True], ids=["", "posterior-as-prior"])
def test_reduce_of_shards_equals_one_fit(float64, structure, curvature, with_prior):
    model = tiny_mlp()
    X, y = tiny_data("classification", n=14)
    kw = dict(hessian_structure=structure, curvature=curvature, prior_precision=0.7)
    prior = None
    if with_prior:
        # A posterior as prior is part of every rank's state (kron folds it into its sums):
        # it must be counted once, not once per shard.
        X0, y0 = tiny_data("classification", n=9, seed=5)
        prior = Laplace(model, "classification", **kw).fit(shard_batches(X0, y0, 0, 9))

    def make() -> Laplace:
        la = Laplace(model, "classification", **kw)
        return la.set_prior_from(prior) if prior is not None else la

    whole = make().fit(shard_batches(X, y, 0, 14))
    other = make()
    other.fit(shard_batches(X, y, 8, 14), reduce=lambda ts: None)
    assert other.n_data == 6  # a no-op reduce leaves the shard's own sums
    mine = make()
    mine.fit(shard_batches(X, y, 0, 8), reduce=reduce_with(other.partial_state()))
    assert mine.n_data == 14
    torch.testing.assert_close(mine.loss, whole.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        ref.dense_precision(mine), ref.dense_precision(whole), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        mine.log_marginal_likelihood(), whole.log_marginal_likelihood(), rtol=1e-10, atol=0
    )


def test_lowrank_refuses_shards(float64):
    X, y = tiny_data("classification", n=6)
    la = Laplace(tiny_mlp(), "classification", hessian_structure="lowrank", rank=3)
    with pytest.raises(BadInputError, match="cannot be fitted in shards"):
        la.fit(shard_batches(X, y, 0, 6), reduce=lambda ts: None)
