"""Resumable fits (laplace_cli.pipeline.resume): checkpoints of the partial sums, and fits continued.

The acceptance test kills a `laplace fit --checkpoint-every 2` process (SIGKILL) after its first
checkpoint, resumes it and gets the posterior of an uninterrupted fit; a second does the same
with both processes of a 2-process torchrun fit (one checkpoint per rank). The in-process tests
check `partial_state` / `load_partial_state` per structure (the MC Fisher's random stream
included), the refusal of a checkpoint written with other settings, and lowrank's refusal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline.stages import load_posterior
from tests import reference as ref
from tests.conftest import tiny_data, tiny_mlp
from tests.pipeline.test_distributed import (
    assert_same_posterior,
    fit_args,
    torchrun,
    torchrun_command,
    write_problem,
)


def checkpoint_meta(path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))["__metadata__"]


def test_killed_fit_resumes_to_the_same_posterior(tmp_path):
    # 400 rows in batches of 8: 50 batches; the poll (every 2 ms) sees the first checkpoint
    # (after 2 batches) long before the end.
    p = write_problem(tmp_path, n_train=400)
    ref, out = tmp_path / "ref.st", tmp_path / "post.st"
    args = [*fit_args(p, "kron", out), "--batch-size", "8", "--checkpoint-every", "2"]
    ckpt = tmp_path / "post.st.ckpt"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "laplace_cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:]
    assert not out.exists()  # killed before the end
    done = int(checkpoint_meta(ckpt)["batches_done"])
    assert 2 <= done < 50 and done % 2 == 0

    res = CliRunner().invoke(app, [*args, "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["resumed_batches"] >= done
    assert not ckpt.exists()  # removed once the posterior is written
    res = CliRunner().invoke(app, [*fit_args(p, "kron", ref), "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert_same_posterior(ref, out)
    assert load_posterior(out).metadata["n_data"] == 400


def test_killed_torchrun_fit_resumes_to_the_same_posterior(tmp_path):
    # 96 rows, shards of 48 in batches of 8: 6 batches per rank, a checkpoint every 2. Each
    # worker SIGKILLs itself right after a checkpoint, rank 0 after batch 2 and rank 1 after
    # batch 4 (the driver's KILL_AFTER_CHECKPOINTS), once both have saved: torchrun stops the
    # other workers as soon as one dies, so a rank dying alone would race the other's save.
    # Each rank resumes from its own checkpoint.
    from laplace_cli.pipeline.resume import checkpoint_path

    p = write_problem(tmp_path, n_train=96)
    ref, out = tmp_path / "ref.st", tmp_path / "post.st"
    args = [*fit_args(p, "kron", out), "--batch-size", "8", "--checkpoint-every", "2"]
    ckpts = [checkpoint_path(out, rank, 2) for rank in range(2)]
    cmd, env = torchrun_command([args], tmp_path)
    env["KILL_AFTER_CHECKPOINTS"] = "1,2"
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0  # the workers were killed
    # the workers' own messages come before torchrun's report: show both
    assert all(c.exists() for c in ckpts), proc.stderr[:3000] + "\n...\n" + proc.stderr[-2000:]
    assert not out.exists()
    assert [int(checkpoint_meta(c)["batches_done"]) for c in ckpts] == [2, 4]

    res = torchrun([[*args, "--resume", "--json"]], tmp_path)
    summary = json.loads(res.stdout[res.stdout.index("{") :])  # rank 0's
    assert summary["resumed_batches"] == 2 and summary["world_size"] == 2
    assert not any(c.exists() for c in ckpts)  # removed once the posterior is written
    res = CliRunner().invoke(app, [*fit_args(p, "kron", ref), "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert_same_posterior(ref, out)
    assert load_posterior(out).metadata["shard_sizes"] == [48, 48]


def test_resume_refuses_other_settings_and_starts_fresh_without_checkpoint(tmp_path):
    p = write_problem(tmp_path, n_train=20)
    out = tmp_path / "post.st"
    runner = CliRunner()
    # --resume with no checkpoint: a fresh fit, same as without --resume.
    res = runner.invoke(app, [*fit_args(p, "diag", out), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert "resumed_batches" not in json.loads(res.stdout)
    # A checkpoint from batches of 4 cannot continue a fit with batches of 5.
    from laplace_cli.pipeline.stages import FitOptions, ModelSpec, fit

    spec = ModelSpec(str(p["model"]), f"{p['factory']}:make")
    opts = FitOptions(
        subset="all", structure="diag", batch_size=4, checkpoint_every=1, output=str(out)
    )
    result = fit(spec, p["data"], opts, dtype="float64")
    assert result.checkpoint.saves == 5  # kept, as after a kill
    res = runner.invoke(
        app, [*fit_args(p, "diag", out), "--batch-size", "5", "--checkpoint-every", "1", "--resume"]
    )
    assert res.exit_code == 2
    assert "batch_size=4" in res.stderr and "batch_size=5" in res.stderr
    res = runner.invoke(app, [*fit_args(p, "full", out), "--resume"])
    assert res.exit_code == 2 and "structure='diag'" in res.stderr


def batches(X, y, bs=3):
    return [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X), bs)]


@pytest.mark.parametrize(
    "structure,curvature",
    [("diag", "ggn"), ("kron", "ggn"), ("full", "ef"), ("kron", "mc_fisher")],
    ids=lambda v: v,
)
def test_partial_state_round_trip_continues_the_fit(float64, structure, curvature):
    """Fit 2 of 5 batches, save the partial state, continue in a new object: same posterior."""
    model = tiny_mlp()
    X, y = tiny_data("classification", n=15)
    kw = dict(hessian_structure=structure, curvature=curvature, n_mc_samples=3, seed=4)
    whole = Laplace(model, "classification", **kw).fit(batches(X, y))

    saved: dict = {}
    first = Laplace(model, "classification", **kw)

    def on_batch(k: int) -> None:
        if k == 2:
            saved["state"] = {n: t.clone() for n, t in first.partial_state().items()}
            saved["rng"] = first._fit_generator.get_state()

    first.fit(batches(X, y)[:2], on_batch=on_batch)
    second = Laplace(model, "classification", **kw)
    second.load_partial_state(saved["state"], saved["rng"])
    second.fit(batches(X, y), override=False, start_batch=2)
    assert second.n_data == 15
    torch.testing.assert_close(second.loss, whole.loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        ref.dense_precision(second), ref.dense_precision(whole), rtol=1e-10, atol=1e-12
    )


def test_mc_fisher_without_its_stream_differs(float64):
    """The random stream matters: restoring the sums but not the stream gives another fit."""
    model = tiny_mlp()
    X, y = tiny_data("classification", n=15)
    kw = dict(hessian_structure="diag", curvature="mc_fisher", seed=4)
    whole = Laplace(model, "classification", **kw).fit(batches(X, y))
    first = Laplace(model, "classification", **kw).fit(batches(X, y)[:2])
    second = Laplace(model, "classification", **kw)
    second.load_partial_state(first.partial_state())  # stream restarted from the seed
    second.fit(batches(X, y), override=False, start_batch=2)
    assert not torch.allclose(second.posterior.h, whole.posterior.h, rtol=1e-6)


def test_lowrank_refuses_resume(float64):
    X, y = tiny_data("classification", n=6)
    la = Laplace(tiny_mlp(), "classification", hessian_structure="lowrank", rank=3)
    with pytest.raises(BadInputError, match="cannot be fitted in shards or resumed"):
        la.fit(batches(X, y), on_batch=lambda k: None)
    with pytest.raises(BadInputError, match="cannot be fitted in shards or resumed"):
        la.partial_state()
