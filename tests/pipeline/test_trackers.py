"""Trackers: a missing extra is bad input naming it; TensorBoard logs when installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from laplace_cli.core.errors import BadInputError
from laplace_cli.pipeline.trackers import check_trackers, flat_metrics, log_report

REPORT = {
    "rows": {"laplace": {"ece": 0.05, "nll": float("nan")}},
    "timings": {"predict_test": 1.0},
    "gates": [{"failed": True}],
    "settings": {"n_test": 3},
    "identity": {},
}


@pytest.mark.parametrize("name", ["mlflow", "wandb", "tensorboard"])
def test_absent_extra_names_it(name: str) -> None:
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed")
    with pytest.raises(BadInputError, match=rf"pip install 'laplace-cli\[{name}\]'"):
        check_trackers([name])


def test_unknown_tracker() -> None:
    with pytest.raises(BadInputError, match="expected one of mlflow, wandb, tensorboard"):
        check_trackers(["neptune"])


def test_flat_metrics() -> None:
    assert flat_metrics(REPORT) == {
        "laplace/ece": 0.05,
        "timings/predict_test": 1.0,
        "gates/failed": 1.0,
    }  # NaN left out


def test_tensorboard_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("LAPLACE_TENSORBOARD_DIR", str(tmp_path))
    log_report(["tensorboard"], REPORT)
    assert list(tmp_path.glob("events.out.tfevents.*"))
