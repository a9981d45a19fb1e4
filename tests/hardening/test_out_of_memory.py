"""Out of memory during fit / tune / predict: exit 3 naming the step, the batch size and what to
lower, never a traceback; `predict` first retries a batch in halves.

The CUDA error is forced by raising `torch.OutOfMemoryError` (what the CUDA caching allocator
raises) from inside the step; the host's by a real allocator cap (RLIMIT_AS) in a subprocess.
The tests marked `cuda` run a real CUDA out-of-memory where a GPU is present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hardening_support import Workspace, case, invoke, record
from safetensors.torch import save_file
from typer.testing import CliRunner

from laplace_cli.cli.errors import report_error
from laplace_cli.core.errors import MemoryBudgetError, OutOfMemory
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline import predict_stage

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"
ADVICE = "lower --batch-size, choose a cheaper structure (--structure kron or diag"


def _raise(exc: BaseException):
    def raiser(*args, **kwargs):
        raise exc

    return raiser


@case(
    "memory",
    "CUDA out of memory while fitting (`torch.OutOfMemoryError` from the curvature)",
    3,
    "out of CUDA memory during fit kron on split 'train' (device cpu, batch size 8); lower "
    "--batch-size, choose a cheaper structure (--structure kron or diag, or --subset "
    "last_layer), or lower --max-memory ...",
)
def test_cuda_oom_during_fit_is_exit_3(
    runner: CliRunner, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Laplace, "fit", _raise(torch.OutOfMemoryError(CUDA_OOM)))
    invoke(runner, ws.fit_args(ws / "data.yaml"), 3, "during fit kron on split 'train'", ADVICE)
    assert not (ws / "post.st").exists()


@case(
    "memory",
    "host out of memory while fitting (`MemoryError`)",
    3,
    "out of host (CPU) memory during fit diag on split 'train' (device cpu, batch size 4); ...",
)
def test_host_oom_during_fit_is_exit_3(
    runner: CliRunner, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Laplace, "fit", _raise(MemoryError()))
    args = ws.fit_args(ws / "data.yaml", structure="diag", extra=("-b", "4"))
    invoke(runner, args, 3, "batch size 4", ADVICE)


def test_the_memory_guard_refusal_stays_exit_2(
    runner: CliRunner, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MemoryBudgetError is a MemoryError too, but a refusal before any work: exit 2."""
    monkeypatch.setattr(Laplace, "fit", _raise(MemoryBudgetError("full needs 7.3 TiB; use kron")))
    invoke(runner, ws.fit_args(ws / "data.yaml"), 2, "full needs 7.3 TiB; use kron")


@case(
    "memory",
    "`fit --max-memory` too small for the structure (the guard, before any work)",
    2,
    "full needs ... for 51 parameters; ... (budget 100 B; or raise max_memory)",
)
def test_max_memory_flag_reaches_the_guard(runner: CliRunner, ws: Workspace) -> None:
    args = ws.fit_args(ws / "data.yaml", structure="full", extra=("--max-memory", "100"))
    invoke(runner, args, 2, "(budget 100 B; or raise max_memory)")
    invoke(runner, ws.fit_args(ws / "data.yaml", extra=("--max-memory", "4x")), 2, "--max-memory")
    invoke(runner, ws.fit_args(ws / "data.yaml", extra=("--max-memory", "64MiB")), 0)


@case(
    "memory",
    "CUDA out of memory while tuning (grid search)",
    3,
    "out of CUDA memory during tune (gridsearch) (device cpu, batch size 8); lower --batch-size ...",
)
def test_cuda_oom_during_tune_is_exit_3(
    runner: CliRunner, fitted: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    post = tmp_path / "post.st"
    post.write_bytes((fitted / "post_full.st").read_bytes())
    before = post.read_bytes()
    monkeypatch.setattr(
        Laplace, "optimize_prior_precision", _raise(torch.OutOfMemoryError(CUDA_OOM))
    )
    args = ["tune", "-p", str(post), "--method", "gridsearch", "--data", str(fitted / "data.yaml")]
    invoke(runner, [*args, "--split", "test", "-q"], 3, "during tune (gridsearch)", ADVICE)
    assert post.read_bytes() == before  # nothing rewritten


def _oom_above(monkeypatch: pytest.MonkeyPatch, limit: int, exc_type: type) -> list[int]:
    """Make `predict_batch` fail for batches of more than `limit` rows; returns the sizes run."""
    real = predict_stage.predict_batch
    sizes: list[int] = []

    def fussy(la, x, *args, **kwargs):
        sizes.append(len(x))
        if len(x) > limit:
            raise exc_type(CUDA_OOM) if exc_type is torch.OutOfMemoryError else exc_type()
        return real(la, x, *args, **kwargs)

    monkeypatch.setattr(predict_stage, "predict_batch", fussy)
    return sizes


@pytest.mark.parametrize("exc_type", [torch.OutOfMemoryError, MemoryError])
@pytest.mark.parametrize("link", ["probit", "mc"])
def test_predict_retries_in_halves_with_the_same_rows(
    runner: CliRunner,
    fitted: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    exc_type: type,
    link: str,
) -> None:
    """A batch of 8 that does not fit runs as 4 + 4 → 2 + 2 + 2 + 2 (limit 3); the rows are
    the same as without the error, Monte Carlo ones included (seeded per row)."""
    args = ["predict", "-p", str(fitted / "post_full.st"), "--data", str(fitted / "data.yaml")]
    args += ["--split", "train", "-b", "8", "--link-approx", link, "-q"]
    invoke(runner, [*args, "-o", str(tmp_path / "full.jsonl")], 0)
    sizes = _oom_above(monkeypatch, 3, exc_type)
    invoke(runner, [*args, "-o", str(tmp_path / "halved.jsonl")], 0)
    assert sizes[:5] == [8, 4, 2, 2, 4]  # first batch: halved twice, depth first
    assert max(s for s in sizes if s <= 3) <= 3
    full = [json.loads(line) for line in (tmp_path / "full.jsonl").read_text().splitlines()]
    halved = [json.loads(line) for line in (tmp_path / "halved.jsonl").read_text().splitlines()]
    # The same rows up to float32 rounding (a batched matmul of 2 rows sums in another order
    # than one of 8): ids and classes equal, values within 1e-5 relative.
    assert len(full) == 20 and [r["id"] for r in halved] == [r["id"] for r in full]
    for a, b in zip(halved, full):
        assert a.keys() == b.keys() and a["pred"] == b["pred"]
        for key in a:
            torch.testing.assert_close(
                torch.tensor(a[key], dtype=torch.float64),
                torch.tensor(b[key], dtype=torch.float64),
                rtol=1e-5,
                atol=1e-6,
            )


@case(
    "memory",
    "CUDA out of memory in `predict` even one row at a time (after halving 8 → 4 → 2 → 1)",
    3,
    "out of CUDA memory during predict (even one row at a time) (device cpu, batch size 1); "
    "lower --batch-size ...",
)
def test_predict_gives_up_at_one_row(
    runner: CliRunner, fitted: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sizes = _oom_above(monkeypatch, 0, torch.OutOfMemoryError)
    out = tmp_path / "rows.jsonl"
    args = ["predict", "-p", str(fitted / "post_full.st"), "--data", str(fitted / "data.yaml")]
    invoke(runner, [*args, "-b", "8", "-o", str(out), "-q"], 3, "even one row at a time", ADVICE)
    assert sizes == [8, 4, 2, 1]
    assert not out.exists()


def test_a_bare_oom_anywhere_is_exit_3_with_the_advice() -> None:
    """Where no stage names the step (evaluate, marglik, inspect), the exit table still maps an
    out-of-memory error to 3 with the advice."""
    from io import StringIO

    from rich.console import Console

    for exc in (
        torch.OutOfMemoryError(CUDA_OOM),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate"),
    ):
        buf = StringIO()
        assert report_error(exc, console=Console(file=buf, width=400)) == 3
        assert (
            buf.getvalue().startswith("error: out of memory (") and "--batch-size" in buf.getvalue()
        )
    buf = StringIO()
    assert report_error(OutOfMemory("x"), console=Console(file=buf)) == 3
    assert report_error(RuntimeError("shape mismatch"), console=Console(file=buf)) == 70


WIDE = 2000  # the mlp factory at hidden=2000: 16,003 parameters, a 1 GB full precision (float32)

CAPPED = textwrap.dedent(
    """
    import resource, sys
    import laplace_cli.cli.app as app
    import laplace_cli.pipeline.fit_stage  # everything imported before the cap is measured
    with open("/proc/self/status") as fh:
        vm = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:"))
    cap = vm + int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.exit(app.app(sys.argv[2:], standalone_mode=True))
    """
)


@case(
    "memory",
    "host out of memory for real: `fit --structure full` of 16,003 parameters (1 GB) under a "
    "400 MB address-space cap (RLIMIT_AS), the guard's budget raised with `--max-memory 64GiB`",
    3,
    "out of host (CPU) memory during fit full (allocating the posterior) (device cpu, batch "
    "size 8); lower --batch-size ...",
)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_real_host_oom_under_an_allocator_cap(ws: Workspace) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, WIDE), torch.nn.Tanh(), torch.nn.Linear(WIDE, 3))
    save_file(net.state_dict(), str(ws / "wide.safetensors"))
    args = ws.fit_args(ws / "data.yaml", model="wide.safetensors", structure="full")
    args += ["--model-kwargs", json.dumps({"hidden": WIDE}), "--max-memory", "64GiB"]
    proc = subprocess.run(
        [sys.executable, "-c", CAPPED, str(400 << 20), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "300"},
    )
    record(proc.returncode, proc.stderr)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and ADVICE in proc.stderr
    assert not (ws / "post.st").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_oom_is_exit_3(ws: Workspace) -> None:
    """A real CUDA out-of-memory: the process may use 1% of the device (per-process fraction),
    the full precision of 16,003 parameters needs 1 GB."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, WIDE), torch.nn.Tanh(), torch.nn.Linear(WIDE, 3))
    save_file(net.state_dict(), str(ws / "wide.safetensors"))
    args = ws.fit_args(ws / "data.yaml", model="wide.safetensors", structure="full")
    args += ["--model-kwargs", json.dumps({"hidden": WIDE}), "--max-memory", "64GiB"]
    args += ["--device", "cuda"]
    script = (
        "import sys, torch; torch.cuda.set_per_process_memory_fraction(0.005);"
        "import laplace_cli.cli.app as app; sys.exit(app.app(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr
    assert "out of CUDA memory during fit full" in proc.stderr and ADVICE in proc.stderr
