"""`laplace tune --conformal` stores split conformal thresholds in the posterior file and
`laplace predict --conformal` emits the sets / intervals they give."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.core.errors import BadInputError

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
pytestmark = pytest.mark.usefixtures("one_thread")


def _invoke(args: list) -> object:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res


def _brute_quantile(scores: list[float], level: float) -> float:
    n = len(scores)
    for s in sorted(scores):
        if sum(1 for v in scores if v <= s) >= (n + 1) * level - 1e-9:
            return s
    return math.inf


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("conformal")
    posts = {}
    for model, subset, structure in (
        ("digits_mlp", "last_layer", "kron"),
        ("diabetes_mlp", "all", "diag"),
    ):
        data = SAMPLES / model / "data.yaml"
        post = out / f"{model}.st"
        res = _invoke(["fit", SAMPLES / model / "model.pt2", "--data", data, "--subset", subset,
                       "--structure", structure, "-o", post, "-q"])  # fmt: skip
        assert res.exit_code == 0, res.output
        res = _invoke(["tune", "-p", post, "--method", "gridsearch", "--data", data,
                       "--conformal", "0.9", "--conformal", "0.8", "-q"])  # fmt: skip
        assert res.exit_code == 0, res.output
        posts[model] = post
    return posts


def _predict(post: Path, model: str, split: str, out: Path, *extra: str) -> list[dict]:
    res = _invoke(["predict", "-p", post, "--data", SAMPLES / model / "data.yaml", "--split", split,
                   "-o", out, "-q", *extra])  # fmt: skip
    assert res.exit_code == 0, res.output
    return _rows(out)


def _labels(model: str, split: str) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.load(SAMPLES / model / f"{split}.npz")["y"])


def test_classification_sets_follow_the_stored_threshold(
    tuned: dict[str, Path], tmp_path: Path
) -> None:
    post = tuned["digits_mlp"]
    val = _predict(post, "digits_mlp", "val", tmp_path / "val.jsonl")
    y_val = _labels("digits_mlp", "val").tolist()
    q = _brute_quantile([1 - r["probs"][y] for r, y in zip(val, y_val, strict=True)], 0.9)
    test = _predict(post, "digits_mlp", "test", tmp_path / "test.jsonl", "--conformal", "0.9")
    covered = 0
    for row, y in zip(test, _labels("digits_mlp", "test").tolist(), strict=True):
        expected = [int(1 - p <= q + 1e-6) for p in row["probs"]]  # float32 rows vs float64 q
        assert row["conformal_set"] == expected
        covered += row["conformal_set"][y]
    coverage = covered / len(test)
    print(f"digits_mlp predict --conformal 0.9: test coverage {coverage:.4f}")
    assert abs(coverage - 0.9) <= 0.03


def test_regression_intervals_follow_the_stored_threshold(
    tuned: dict[str, Path], tmp_path: Path
) -> None:
    post = tuned["diabetes_mlp"]
    val = _predict(post, "diabetes_mlp", "val", tmp_path / "val.jsonl")
    y_val = _labels("diabetes_mlp", "val").reshape(-1).tolist()
    scores = [
        abs(y - r["mean"]) / math.sqrt(r["var_total"]) for r, y in zip(val, y_val, strict=True)
    ]
    q = _brute_quantile(scores, 0.9)
    test = _predict(post, "diabetes_mlp", "test", tmp_path / "test.jsonl", "--conformal", "0.9")
    for row in test:
        half = q * math.sqrt(row["var_total"])
        assert row["conformal_lower"] == pytest.approx(row["mean"] - half, rel=1e-5, abs=1e-5)
        assert row["conformal_upper"] == pytest.approx(row["mean"] + half, rel=1e-5, abs=1e-5)


def test_missing_level_and_other_predictive_are_refused(tuned: dict[str, Path]) -> None:
    base = [
        "predict",
        "-p",
        tuned["digits_mlp"],
        "--data",
        SAMPLES / "digits_mlp" / "data.yaml",
        "-q",
    ]
    res = _invoke([*base, "--conformal", "0.95"])
    assert res.exit_code == 2 and "no conformal calibration at that level" in res.output
    assert "0.8, 0.9" in res.output
    res = _invoke([*base, "--conformal", "0.9", "--link-approx", "mc"])
    assert res.exit_code == 2 and "calibrated for" in res.output
    res = _invoke(["tune", "-p", tuned["digits_mlp"], "--conformal", "0.9", "-q"])
    assert res.exit_code == 2 and "--data" in res.output


def test_validator_rejects_a_malformed_calibration(tuned: dict[str, Path], tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from laplace_cli.pipeline.model_loading import load_posterior

    with safe_open(str(tuned["digits_mlp"]), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tuning = json.loads(meta["tuning"])
    assert set(tuning["conformal"]["levels"]) == {"0.8", "0.9"}
    load_posterior(tuned["digits_mlp"], device="cpu")  # the stored record is valid
    for bad in ({"lac": "x"}, {"normalised": []}, {}):
        tuning["conformal"]["levels"]["0.9"] = bad
        path = tmp_path / "bad.st"
        save_file(tensors, str(path), metadata={**meta, "tuning": json.dumps(tuning)})
        with pytest.raises(BadInputError, match="tuning.conformal"):
            load_posterior(path, device="cpu")
