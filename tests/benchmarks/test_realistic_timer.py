"""The realistic benchmark's timer: a run past `--side-timeout` is stopped and shown as a bound.

Needs neither laplace-torch nor data: one `Timer.pair` with a busy loop on the laplace-torch side.
"""

from __future__ import annotations

import pytest
import torch

from tests.benchmarks.realistic_module import load_realistic


def test_a_run_past_the_side_timeout_is_stopped_and_shown_as_a_bound() -> None:
    realistic = load_realistic()
    timer = realistic.Timer(repeats=2, device=torch.device("cpu"), timeout=0.2)

    def slow():
        import time

        end = time.perf_counter() + 5
        while time.perf_counter() < end:
            pass

    row = timer.pair("slow", lambda: sum(range(10_000)), slow)
    assert row["timed_out_after"] == {"laplace-torch": 0.2}
    assert row["laplace-torch"] is None and row["runs"]["laplace-torch"] == 0
    assert row["speedup_at_least"] == pytest.approx(0.2 / row["ours"])
    assert realistic.fmt_pair(row).startswith(
        realistic.fmt_pair({"ours": row["ours"]}).split(" /")[0]
    )
    assert "/ > 0.2 (> " in realistic.fmt_pair(row) and "error" not in realistic.fmt_pair(row)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [("RuntimeError: DefaultCPUAllocator: can't allocate memory", "bound"), ("boom", None)],
)
def test_a_memory_worker_out_of_memory_is_a_bound(monkeypatch, stderr, expected) -> None:
    import argparse
    import subprocess

    realistic = load_realistic()

    def fails(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd, output="", stderr=f"trace\n{stderr}")

    monkeypatch.setattr(realistic.subprocess, "run", fails)
    args = argparse.Namespace(
        device="cpu", threads=1, quick=False, n_train=None, n_test=None, side_timeout=1
    )
    peak = realistic.memory_run("theirs", "fmnist_cnn", "all", "kron", args)
    if expected is None:
        assert peak is None and realistic.mb_cell(peak) == "—"
    else:
        cap_mb = realistic._address_space_cap() / 2**20
        assert peak == f"> {cap_mb:,.0f} (cap)" and realistic.mb_cell(peak) == peak
    assert realistic.mb_cell(1234.4) == "1,234"
