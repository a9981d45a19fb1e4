"""Faults: interrupted writes, Ctrl-C during a fit, a full disk during predict.

Posterior writes and `predict -o FILE` are atomic (a temporary file in the same folder, renamed
into place): whatever fails, the old file stays as it was and no temporary file is left.
Prediction rows on stdout are streamed; when the disk fills up, a redirected file is cut back to
its last whole row and the command exits 2.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hardening_support import Workspace, case, invoke, record
from typer.testing import CliRunner

import laplace_cli.io.atomic as atomic
from laplace_cli.io.posterior_file import read_posterior
from laplace_cli.pipeline.prediction_stream import stream_position


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- interrupted writes ------------------------------------------------------------------------


def _fail_fsync_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Simulate a write that dies after the bytes went out and before the rename."""

    def broken(fd: int) -> None:
        raise exc

    monkeypatch.setattr(atomic.os, "fsync", broken)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 2, "cannot write (No space left"),
        (KeyboardInterrupt(), 130, "error: interrupted"),
    ],
    ids=["disk-full", "ctrl-c"],
)
@case(
    "faults",
    "`fit -o keep.st` over an existing posterior, the write fails (ENOSPC at fsync)",
    2,
    "keep.st: cannot write (No space left on device)",
    "the old file is byte-identical; no `.tmp` left",
)
@case(
    "faults",
    "the same interrupted by Ctrl-C during the write",
    130,
    "interrupted",
    "the old file is byte-identical; no `.tmp` left",
)
def test_interrupted_fit_write_keeps_the_old_posterior(
    runner: CliRunner,
    fitted: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
    code: int,
    message: str,
) -> None:
    out = fitted / "keep.st"
    out.write_bytes((fitted / "post_full.st").read_bytes())
    before = out.read_bytes()
    _fail_fsync_with(monkeypatch, exc)
    result = invoke(runner, fitted.fit_args(fitted / "data.yaml", out, structure="diag"), code)
    assert message in result.stderr
    if code == 2:
        assert str(out) in result.stderr
    assert out.read_bytes() == before
    assert _litter(fitted.root) == []


@case(
    "faults",
    "`tune` rewriting a posterior in place, the write fails (EIO)",
    2,
    "post.st: cannot write (Input/output error)",
    "the old posterior is intact and still reads",
)
def test_interrupted_tune_in_place_keeps_the_old_posterior(
    runner: CliRunner, fitted: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    post = tmp_path / "post.st"
    post.write_bytes((fitted / "post_full.st").read_bytes())
    before = post.read_bytes()
    _fail_fsync_with(monkeypatch, OSError(errno.EIO, "Input/output error"))
    invoke(runner, ["tune", "-p", str(post), "-q"], 2, f"{post}: cannot write (Input/output")
    assert post.read_bytes() == before
    read_posterior(post)
    assert _litter(tmp_path) == []


# --- Ctrl-C during a fit (a real process and a real SIGINT) ------------------------------------

SLOW_DATA = textwrap.dedent(
    '''
    """A slow split: 2 ms per item, and a marker file once fitting has started."""
    import time
    from pathlib import Path

    import torch
    from torch.utils.data import Dataset


    class Slow(Dataset):
        def __init__(self, marker, n):
            self.marker, self.n = Path(marker), n
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 4, generator=g)
            self.y = torch.arange(n) % 3

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            if i == 1:  # item 0 is read once when the split is checked; 1 only by the fit
                self.marker.touch()
            time.sleep(0.002)
            return self.x[i], self.y[i]


    def make(marker, n=20000):
        return Slow(marker, n)
    '''
)


@case(
    "faults",
    "SIGINT to `python -m laplace_cli fit` in the middle of the fit loop (real process and signal)",
    130,
    "interrupted",
    "stderr ends with `error: interrupted`, no traceback, no output file, no temporary file",
)
def test_sigint_during_fit_exits_130_and_writes_nothing(ws: Workspace) -> None:
    (ws / "slow.py").write_text(SLOW_DATA)
    marker = ws / "fitting"
    ws.spec(
        "slow.yaml",
        f"task: classification\nbatch_size: 4\nsplits:\n"
        f"  train: {{callable: slow.py:make, kwargs: {{marker: {str(marker)!r}}}}}\n",
    )
    args = ws.fit_args(ws / "slow.yaml", ws / "post.st")
    proc = subprocess.Popen(
        [sys.executable, "-m", "laplace_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "LAPLACE_DEBUG"},
        # A test run started in the background of a non-interactive shell (`cmd &`) inherits
        # SIGINT ignored, and Python then keeps it ignored: give the child the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the fit never started"
            time.sleep(0.05)
        time.sleep(0.3)  # well inside the 40 s loop over 20,000 slow items
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    record(proc.returncode, stderr)
    assert proc.returncode == 130, stderr
    assert stderr.strip().endswith("error: interrupted"), stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not (ws / "post.st").exists()
    assert _litter(ws.root) == []


# --- a full disk during predict ----------------------------------------------------------------


class _FillingDisk:
    """A text file on a device with `capacity` bytes: a write that does not fit puts what fits
    on disk (a short write, as the OS does) and raises ENOSPC."""

    def __init__(self, path: Path | int, capacity: int) -> None:
        self.raw = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self.capacity, self.used = capacity, 0
        self.encoding = "utf-8"

    def __enter__(self) -> _FillingDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, text: str) -> int:
        data = text.encode()
        room = self.capacity - self.used
        if len(data) > room:
            self.used += self.raw.write(data[:room])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.used += self.raw.write(data)
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.raw.fileno()

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()


def _predict_rows(path: Path, fmt: str) -> list:
    lines = path.read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)  # no partial last line
    if fmt == "jsonl":
        return [json.loads(line) for line in lines]
    header = lines[0].rstrip("\n").split(",")
    rows = [line.rstrip("\n").split(",") for line in lines[1:]]
    assert all(len(r) == len(header) for r in rows)
    return rows


@case(
    "faults",
    "disk full in the middle of a batch, `predict -o rows.jsonl` (the temporary"
    " file's device takes what fits, then raises ENOSPC)",
    2,
    "rows.jsonl: cannot write the predictions (No space left on device); rows.jsonl was left as"
    " it was (written only once complete)",
    "the old file is byte-identical; no `.tmp` left",
)
@case(
    "faults",
    "the same, `predict -o rows.csv`",
    2,
    "rows.csv: cannot write the predictions (No space left on device); rows.csv was left as it"
    " was ...",
    "the same",
)
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_disk_full_during_predict_keeps_the_old_file(
    runner: CliRunner,
    fitted: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fmt: str,
) -> None:
    """`predict -o FILE` is written atomically: the disk filling up in the middle of a batch
    leaves the FILE that was there before, byte for byte, and no temporary file."""
    out = tmp_path / f"rows.{fmt}"
    out.write_text("the old predictions\n")
    args = ["predict", "-p", str(fitted / "post_full.st"), "--data", str(fitted / "data.yaml")]
    args += ["--split", "train", "-b", "4", "-o", str(out), "-q"]
    full = tmp_path / f"full.{fmt}"
    invoke(runner, [*args[:-3], "-o", str(full), "-q"], 0)
    capacity = len(full.read_bytes()) * 3 // 5  # the disk fills up in the middle of a batch
    monkeypatch.setattr(
        atomic.os, "fdopen", lambda fd, *a, **k: _FillingDisk(fd, capacity), raising=False
    )
    invoke(
        runner,
        args,
        2,
        f"{out}: cannot write the predictions (No space left on device); {out} was left as it was",
    )
    assert out.read_text() == "the old predictions\n"
    assert _litter(tmp_path) == []


def _predict_process(fitted: Workspace, stdout, env_extra: dict[str, str], limit: int | None):
    def set_limit() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["predict", "-p", str(fitted / "post_full.st"), "--data", str(fitted / "data.yaml")]
    return subprocess.run(
        [sys.executable, "-m", "laplace_cli", *args, "--split", "train", "-b", "4"],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=set_limit,
        env={**os.environ, **env_extra},
        timeout=120,
    )


@case(
    "faults",
    "`predict > /dev/full` (real process)",
    2,
    "<stdout>: cannot write the predictions (No space left on device)",
    "stderr is exactly that one line (was: internal error, exit 70)",
)
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_predict_to_dev_full_exits_2(fitted: Workspace) -> None:
    with open("/dev/full", "w") as sink:
        proc = _predict_process(fitted, sink, {}, None)
    record(proc.returncode, proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: <stdout>: cannot write the predictions (No space left on device)"
    )


@case(
    "faults",
    "`predict > rows.jsonl` with a file size limit (RLIMIT_FSIZE 3000 bytes, real process,"
    " `PYTHONUNBUFFERED=1`)",
    2,
    "<stdout>: cannot write the predictions (...); kept the ... whole rows",
    "the file ends on a whole row; the rows kept are a multiple of the batch size",
)
def test_file_size_limit_on_redirected_stdout_keeps_whole_rows(
    fitted: Workspace, tmp_path: Path
) -> None:
    """`laplace predict > rows.jsonl` on a disk that fills up (RLIMIT_FSIZE: the OS takes what
    fits, then EFBIG). An unbuffered stdout (PYTHONUNBUFFERED=1, the hard case) drops a short
    write's tail without an error; the offset check catches it. The file ends on a whole row."""
    out = tmp_path / "rows.jsonl"
    with open(out, "w") as sink:
        proc = _predict_process(fitted, sink, {"PYTHONUNBUFFERED": "1"}, 3000)
    record(proc.returncode, proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: <stdout>: cannot write the predictions ("), proc.stderr
    rows = _predict_rows(out, "jsonl")
    assert 0 < len(rows) < 20 and len(rows) % 4 == 0
    assert f"kept the {len(rows)} whole rows" in proc.stderr
    assert [r["id"] for r in rows] == list(range(len(rows)))


def test_row_offsets_are_checked_only_on_regular_files(tmp_path: Path) -> None:
    """/dev/null is seekable but its offset stays 0: taking it for a short write would turn
    `laplace predict > /dev/null` into an error."""
    position = stream_position
    with open(tmp_path / "f.jsonl", "w") as f:
        f.write("{}\n")
        f.flush()
        assert position(f) == 3
    with open(os.devnull, "w") as f:
        assert position(f) is None
    read, write = os.pipe()
    with os.fdopen(read) as r, os.fdopen(write, "w") as w:
        assert position(w) is None and position(r) is None
