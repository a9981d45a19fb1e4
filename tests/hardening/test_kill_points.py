"""`kill -9` at 20 points of `tune` (in-place rewrite), `fit --checkpoint-every` and `predict -o`:
the output is the old file or a complete new one, never a torn one; and two processes writing
the same output path: one wins whole.

Each kill point is an event of the atomic write (laplace_cli.io.atomic): the k-th `write` to a
temporary file (half of its bytes written and flushed, so a torn temporary file is on disk),
the k-th `fsync`, just before or just after the k-th `rename`. The commands run in children
forked from one warm interpreter whose `atomic` module is instrumented to announce the event
and wait (`SERVER`); the test then sends the child SIGKILL from outside, as `kill -9` would.
Points chosen by event, not by a delay, fall into the writes every time whatever the machine's
speed, and a fork instead of a Python start-up per point keeps the 20 of them within seconds
of CPU (the three uninterrupted runs are made in the server itself first, so that every child
starts with warm imports and caches). After each kill the file is validated by loading it
(`read_posterior`; the fit checkpoint's safetensors and format; every JSONL row), and one
surviving checkpoint is resumed to the same posterior as an uninterrupted fit.

A SIGKILL leaves the temporary file of an atomic write behind (nothing runs to remove it): it
is named `.<name>.<random>.tmp`, never the output's name, and the next run does not read it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hardening_support import Workspace

from laplace_cli.io.posterior_file import read_posterior

# A fork server: imports laplace-cli once, instruments atomic.py's write steps, then runs each
# job (one JSON line on stdin) in a forked child, so that a kill point costs a fork, not a
# Python start-up. At the event named by the job (`write:3`, `fsync:1`, `rename:2`,
# `renamed:2`) the child says AT and waits for the test's SIGKILL. Protocol lines on the
# server's stdout: `PID <pid>`, `AT`, `EXIT <status>`; the children's own output goes to a log.
SERVER = """
import json, os, signal, sys, time
import laplace_cli.io.atomic as atomic
import laplace_cli.cli.app as app
import laplace_cli.pipeline.fit_stage, laplace_cli.pipeline.tune_stage
import laplace_cli.pipeline.prediction_stream, laplace_cli.pipeline.resume
proto = os.dup(1)
def say(text): os.write(proto, (text + "\\n").encode())
job = {"kind": "", "nth": 0}
counts = {}
def at(event):
    counts[event] = counts.get(event, 0) + 1
    if event == job["kind"] and counts[event] == job["nth"]:
        say("AT"); time.sleep(120)
class Torn:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *a): return self.f.__exit__(*a)
    def __getattr__(self, name): return getattr(self.f, name)
    def write(self, data):
        if job["kind"] == "write" and counts.get("write", 0) + 1 == job["nth"]:
            self.f.write(data[: len(data) // 2]); self.f.flush(); os.fsync(self.f.fileno())
        at("write")
        return self.f.write(data)
real_fdopen, real_fsync, real_replace = atomic.os.fdopen, atomic.os.fsync, atomic.os.replace
class OS:
    def __getattr__(self, name): return getattr(os, name)
    def fdopen(self, *a, **k): return Torn(real_fdopen(*a, **k))
    def fsync(self, fd): at("fsync"); return real_fsync(fd)
    def replace(self, a, b): at("rename"); real_replace(a, b); at("renamed")
atomic.os = OS()
def run(spec, args):
    code = 70
    try:
        kind, _, nth = (spec["kill_at"] or ":0").partition(":")
        counts.clear(); job.update(kind=kind, nth=int(nth))
        os.chdir(spec["cwd"])
        log = os.open("child.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1); os.dup2(log, 2); os.close(log)
        app.app(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush(); sys.stderr.flush()
    return code
say("READY")
saved = (os.dup(1), os.dup(2))
for line in sys.stdin:
    spec = json.loads(line)
    if spec["inline"]:  # in the server itself: warms lazy imports and caches for the children
        code = run(spec, spec["runs"][0]); os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        say("PID 0"); say(f"EXIT {code}"); continue
    pids = []
    for args in spec["runs"]:  # several at once: processes racing for the same output
        pid = os.fork()
        if pid == 0:
            os._exit(run(spec, args))
        pids.append(pid)
    say("PID " + " ".join(map(str, pids)))
    codes = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        codes.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    say("EXIT " + " ".join(map(str, codes)))
"""


class ForkServer:
    """Runs CLI commands in forked children of one warm interpreter (see SERVER)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert self._line() == "READY"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "the fork server died"
        return line

    def _send(self, runs: list[list[str]], kill_at: str | None, cwd: Path, inline: bool) -> None:
        assert self.proc.stdin is not None
        job = {"runs": runs, "kill_at": kill_at, "cwd": str(cwd), "inline": inline}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def run(
        self, args: list[str], kill_at: str | None, cwd: Path, inline: bool = False
    ) -> tuple[int, str]:
        """(exit status, the child's output); with `kill_at`, SIGKILL at that event (-9).

        `inline` runs the command in the server itself (no kill): its lazy imports and caches
        are then inherited by every later child, which keeps a kill point cheap.
        """
        assert not (inline and kill_at)
        self._send([args], kill_at, cwd, inline)
        pid = int(self._line().split()[1])
        line = self._line()
        if kill_at is not None:
            log = (cwd / "child.log").read_text() if (cwd / "child.log").exists() else ""
            assert line == "AT", f"{kill_at}: never reached ({line}; {log})"
            os.kill(pid, signal.SIGKILL)
            line = self._line()
        log = (cwd / "child.log").read_text() if (cwd / "child.log").exists() else ""
        return int(line.split()[1]), log

    def race(self, runs: list[list[str]], cwd: Path) -> tuple[list[int], str]:
        """Run the commands at once, in one child process each; (exit statuses, their output)."""
        self._send(runs, None, cwd, False)
        assert len(self._line().split()) == 1 + len(runs)
        codes = [int(code) for code in self._line().split()[1:]]
        return codes, (cwd / "child.log").read_text()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# (command, event, what the file is afterwards): 4 points of tune's one write, 8 of fit's
# checkpoints (10 batches of 2 rows, one checkpoint each) and of its posterior (the 11th write),
# 8 of predict's rows (10 batches of 2 rows, one write per row). The test asserts each outcome
# exactly; docs/hardening.md's kill table is generated from this list (hardening_doc.py).
KILL_POINTS = [
    ("tune", "write:1", "old posterior"),
    ("tune", "fsync:1", "old posterior"),
    ("tune", "rename:1", "old posterior"),
    ("tune", "renamed:1", "new posterior"),
    ("fit", "write:1", "old posterior, checkpoint none"),
    ("fit", "renamed:1", "old posterior, checkpoint after 1 batches"),
    ("fit", "write:3", "old posterior, checkpoint after 2 batches"),
    ("fit", "rename:6", "old posterior, checkpoint after 5 batches"),
    ("fit", "renamed:6", "old posterior, checkpoint after 6 batches"),
    ("fit", "write:11", "old posterior, checkpoint after 10 batches"),
    ("fit", "rename:11", "old posterior, checkpoint after 10 batches"),
    ("fit", "renamed:11", "new posterior, checkpoint after 10 batches"),
    ("predict", "write:1", "old rows"),
    ("predict", "write:2", "old rows"),
    ("predict", "write:7", "old rows"),
    ("predict", "write:13", "old rows"),
    ("predict", "write:20", "old rows"),
    ("predict", "fsync:1", "old rows"),
    ("predict", "rename:1", "old rows"),
    ("predict", "renamed:1", "all 20 new rows"),
]
OLD_ROWS = "the old rows\n"


def _posterior_state(path: Path, old: bytes) -> str:
    data = path.read_bytes()
    if data == old:
        return "old posterior"
    read_posterior(path)  # raises on a torn file: header, offsets, tensors, finiteness
    return "new posterior"


def _checkpoint_state(path: Path) -> str:
    from safetensors import safe_open

    if not path.exists():
        return "none"
    with safe_open(str(path), "pt") as f:  # a torn file fails here
        assert f.metadata()["format"] == "laplace-cli/fit-checkpoint"
        for key in f.keys():
            f.get_tensor(key)
        return f"after {f.metadata()['batches_done']} batches"


def _rows_state(path: Path, old: str, n_rows: int) -> str:
    text = path.read_text()
    if text == old:
        return "old rows"
    rows = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and [r["id"] for r in rows] == list(range(n_rows)), text[-200:]
    return f"all {n_rows} new rows"


def _commands(ws: Workspace, folder: Path) -> dict[str, list[str]]:
    fit = ws.fit_args(ws / "data.yaml", folder / "fitted.st", structure="full")
    predict = ["predict", "-p", str(ws / "post_full.st"), "--data", str(ws / "data.yaml")]
    return {
        "tune": ["tune", "-p", str(folder / "post.st"), "--method", "marglik", "-q"],
        "fit": [*fit, "--checkpoint-every", "1", "-b", "2"],
        "predict": [*predict, "--split", "train", "-b", "2", "-o", str(folder / "rows.jsonl")],
    }


def _state(name: str, folder: Path, old_post: bytes) -> str:
    if name == "tune":
        return _posterior_state(folder / "post.st", old_post)
    if name == "fit":
        ckpt = _checkpoint_state(folder / "fitted.st.ckpt")
        return f"{_posterior_state(folder / 'fitted.st', old_post)}, checkpoint {ckpt}"
    return _rows_state(folder / "rows.jsonl", OLD_ROWS, 20)


def _prepare(folder: Path, old_post: bytes) -> Path:
    folder.mkdir()
    (folder / "post.st").write_bytes(old_post)
    (folder / "fitted.st").write_bytes(old_post)
    (folder / "rows.jsonl").write_text(OLD_ROWS)
    return folder


@pytest.fixture(scope="module")
def server():
    """One fork server for the module: one Python start-up for every kill point and race."""
    server = ForkServer()
    yield server
    server.close()


def test_kill_9_never_leaves_a_torn_file(
    fitted: Workspace, server: ForkServer, capsys: pytest.CaptureFixture
) -> None:
    # The old file of every point is the module's fitted full posterior (fitted once).
    old_post = (fitted / "post_full.st").read_bytes()

    def reference(name: str) -> str:
        # Run in the server itself, so that the kill points' children start warm.
        folder = _prepare(fitted / f"complete-{name}", old_post)
        code, log = server.run(_commands(fitted, folder)[name], None, folder, inline=True)
        assert code == 0, log
        return _state(name, folder, old_post)

    def kill(name: str, event: str) -> str:
        folder = _prepare(fitted / f"kill-{name}-{event.replace(':', '-')}", old_post)
        code, _ = server.run(_commands(fitted, folder)[name], event, folder)
        assert code == -signal.SIGKILL
        return _state(name, folder, old_post)

    complete = [reference(name) for name in ("tune", "fit", "predict")]
    # The complete runs wrote complete new files (the fit removed its checkpoint).
    assert complete == ["new posterior", "new posterior, checkpoint none", "all 20 new rows"]
    table = [(name, event, kill(name, event)) for name, event, _ in KILL_POINTS]
    with capsys.disabled():  # the kill points and what each left
        print("\n" + "\n".join(f"{n} killed at {e}: {after}" for n, e, after in table))
    # Every point left exactly what docs/hardening.md says: never a torn file (a torn one
    # fails to load above), and outcomes on both sides of the renames.
    assert table == KILL_POINTS
    assert len(table) == 20

    # A checkpoint that survived a kill resumes to the posterior of an uninterrupted fit.
    folder = fitted / "kill-fit-renamed-6"
    code, log = server.run([*_commands(fitted, folder)["fit"], "--resume"], None, folder)
    assert code == 0, log
    resumed = read_posterior(folder / "fitted.st").tensors
    whole = read_posterior(fitted / "complete-fit" / "fitted.st").tensors
    assert resumed.keys() == whole.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-6, atol=1e-7)


def test_two_writers_of_the_same_output_one_wins_whole(
    fitted: Workspace, server: ForkServer, tmp_path: Path
) -> None:
    """Two `predict -o rows.jsonl` at once (different batch sizes, same rows), and two `fit -o`
    of different structures: each file is afterwards one run's complete output. The two run
    in separate processes (forked by the server) that race for the same name."""
    rows, post = tmp_path / "rows.jsonl", tmp_path / "post.st"
    base = ["predict", "-p", str(fitted / "post_full.st"), "--data", str(fitted / "data.yaml")]
    base += ["--split", "train"]
    fits = [fitted.fit_args(fitted / "data.yaml", post, structure=s) for s in ("diag", "kron")]
    post.write_bytes((fitted / "post_full.st").read_bytes())  # both replace an existing file
    for job in (
        [[*base, "-b", "1", "-o", str(rows), "-q"], [*base, "-b", "7", "-o", str(rows), "-q"]],
        fits,
    ):
        codes, log = server.race(job, tmp_path)
        assert codes == [0, 0], log  # both write whole; the last rename wins
    assert _rows_state(rows, "", 20) == "all 20 new rows"
    structure = read_posterior(post).metadata["structure"]
    assert getattr(structure, "value", structure) in ("diag", "kron")  # one of the racers
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
