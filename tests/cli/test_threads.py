"""`--threads N` on every command, the default thread count, and OpenMP's wait policy.

A shared 2-core machine made `laplace predict` ~10x slower with torch's default threads than
with one; `--threads` chooses, the default counts the CPUs this process may use (affinity and a
cgroup quota, capped), and the CLI makes OpenMP threads sleep rather than spin while waiting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.core import threads as threads_mod
from laplace_cli.core.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "sample_models" / "digits_mlp"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- the default ------------------------------------------------------------------------------
@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No OMP_NUM_THREADS / LOCAL_WORLD_SIZE and no cgroup quota files."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads_mod, "_cgroup_cpu_limit", lambda: None)
    return monkeypatch


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (3, 3), (8, 8), (64, 8)])
def test_default_is_the_affinity_mask_capped(no_env, cpus: int, expected: int) -> None:
    no_env.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert threads_mod.default_threads() == expected


def test_a_cgroup_quota_limits_the_default(no_env) -> None:
    # a container limited to 2 CPUs on a 64-core host: affinity alone would give 8 (capped 64)
    no_env.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    no_env.setattr(threads_mod, "_cgroup_cpu_limit", lambda: 2)
    assert threads_mod.default_threads() == 2


def test_omp_num_threads_and_local_world_size(no_env) -> None:
    no_env.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    no_env.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share 6 CPUs
    assert threads_mod.default_threads() == 1
    no_env.setenv("OMP_NUM_THREADS", "3")  # the user's (or torchrun's) explicit choice wins
    assert threads_mod.default_threads() == 3


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("max 100000\n", None, None),
        ("200000 100000\n", None, 2),
        ("150000 100000\n", None, 2),  # 1.5 CPUs: round up, a thread may use the half
        ("50000 100000\n", None, 1),
        (None, ("-1", "100000"), None),
        (None, ("400000", "100000"), 4),
        (None, None, None),
    ],
)
def test_cgroup_quota_files(tmp_path: Path, v2, v1, expected) -> None:
    paths = [tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"]
    if v2 is not None:
        paths[0].write_text(v2)
    if v1 is not None:
        paths[1].write_text(v1[0])
        paths[2].write_text(v1[1])
    assert threads_mod._cgroup_cpu_limit(*paths) == expected


def test_set_threads_sets_torch_and_refuses_zero(restore_threads) -> None:
    assert threads_mod.set_threads(3) == 3
    assert torch.get_num_threads() == 3
    with pytest.raises(BadInputError, match="--threads"):
        threads_mod.set_threads(0)


# --- every command ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 60-row digits spec, a diag last-layer posterior of it and a one-stage recipe."""
    folder = tmp_path_factory.mktemp("threads")
    lines = ["task: classification", "batch_size: 32", "splits:"]
    for split in ("train", "val", "test"):
        d = np.load(DIGITS / f"{split}.npz")
        np.savez(folder / f"{split}.npz", x=d["x"][:60], y=d["y"][:60])
        lines.append(f"  {split}: {{path: {split}.npz, x: x, y: y}}")
    (folder / "data.yaml").write_text("\n".join(lines) + "\n")
    np.savez(folder / "x.npz", x=np.load(DIGITS / "test.npz")["x"][:5])
    (folder / "recipe.yaml").write_text(
        f"model:\n  path: {DIGITS / 'model.pt2'}\ndata: data.yaml\nstages: [fit]\n"
        "fit: {subset: last_layer, structure: diag}\n"
    )
    post = folder / "post.st"
    result = CliRunner().invoke(
        app,
        [
            "fit", str(DIGITS / "model.pt2"), "--data", str(folder / "data.yaml"),
            "--subset", "last_layer", "--structure", "diag", "-o", str(post), "--quiet",
            "--threads", "1",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"dir": folder, "data": folder / "data.yaml", "post": post}


def _commands(s: dict[str, Path]) -> dict[str, list[str]]:
    d, data, post = s["dir"], str(s["data"]), str(s["post"])
    return {
        "fit": ["fit", str(DIGITS / "model.pt2"), "--data", data, "--subset", "last_layer",
                "--structure", "diag", "-o", str(d / "fit.st"), "--quiet"],
        "tune": ["tune", "-p", post, "-o", str(d / "tuned.st"), "--prior-structure", "scalar", "--quiet"],
        "evaluate": ["evaluate", "-p", post, "--data", data, "--quiet"],
        "predict": ["predict", "-p", post, "--input", str(d / "x.npz"), "-o", str(d / "p.csv"), "--quiet"],
        "run": ["run", str(d / "recipe.yaml"), "-o", str(d / "run"), "--quiet"],
        "inspect": ["inspect", post],  # no --quiet: it prints tables only
        "marglik": ["marglik", post, "--quiet"],
    }  # fmt: skip


COMMANDS = ["fit", "tune", "evaluate", "predict", "run", "inspect", "marglik"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_threads_and_sets_torch(
    small: dict[str, Path], restore_threads, command: str
) -> None:
    args = _commands(small)[command]
    runner = CliRunner()
    torch.set_num_threads(2)
    result = runner.invoke(app, [*args, "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1
    torch.set_num_threads(3)
    result = runner.invoke(app, [*args, "--threads", "2"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_without_threads_the_default_is_applied(
    small: dict[str, Path], restore_threads, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setattr(threads_mod, "default_threads", lambda: 3)
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, _commands(small)[command])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_threads_is_exit_2(small: dict[str, Path], bad: str) -> None:
    result = CliRunner().invoke(app, ["inspect", str(small["post"]), "--threads", bad])
    assert result.exit_code == 2
    assert "--threads" in result.output


# --- in a fresh process: no torch for --help, OpenMP sleeps -----------------------------------
_PROBE = """
import json, os, sys
from laplace_cli.cli.app import main
seen = {"after_import": "torch" in sys.modules}
for command in [None, "fit", "tune", "evaluate", "predict", "run", "inspect", "marglik"]:
    sys.argv = ["laplace"] + ([command] if command else []) + ["--help"]
    try:
        main()
    except SystemExit:
        pass
seen["after_help"] = "torch" in sys.modules
seen["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
print(json.dumps(seen))
"""


def _probe(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_does_not_import_torch_and_omp_threads_sleep() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    seen = _probe(env)
    assert seen == {"after_import": False, "after_help": False, "omp_wait_policy": "PASSIVE"}
    # the user's choice is kept
    assert _probe({**env, "OMP_WAIT_POLICY": "ACTIVE"})["omp_wait_policy"] == "ACTIVE"
