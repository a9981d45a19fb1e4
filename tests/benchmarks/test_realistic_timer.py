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
