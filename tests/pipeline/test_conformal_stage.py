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
    bad_values = (
        {"lac": "x"},
        {"normalised": []},
        {},
        {"lac": 0.5, "aps": 1.5},  # an APS mass above 1: every class would be in every set
        {"lac": -0.1, "aps": 0.5},
        {"aps": 0.5},  # lac is always stored
        {"lac": 0.5, "aps": 0.5, "label_lac": [0.5]},  # another likelihood's key
        {"lac": 0.5, "aps": float("nan")},
    )
    for bad in bad_values:
        tuning["conformal"]["levels"]["0.9"] = bad
        path = tmp_path / "bad.st"
        save_file(tensors, str(path), metadata={**meta, "tuning": json.dumps(tuning)})
        with pytest.raises(BadInputError, match="tuning.conformal"):
            load_posterior(path, device="cpu")


def _aps_score(probs: list[float], k: int, u: float) -> float:
    """Randomised APS score of class k, by a loop: mass of the classes above p_k, plus u·p_k."""
    return sum(p for p in probs if p > probs[k]) + u * probs[k]


def test_aps_sets_follow_the_stored_threshold(tuned: dict[str, Path], tmp_path: Path) -> None:
    from laplace_cli.posterior.predictive import RowSeeds

    post = tuned["digits_mlp"]
    # The stored APS threshold: brute-force scores of the validation rows with the calibration
    # uniforms (one per row from a generator seeded by the tune seed, 0), brute-force quantile.
    val = _predict(post, "digits_mlp", "val", tmp_path / "val.jsonl")
    y_val = _labels("digits_mlp", "val").tolist()
    u_cal = torch.rand(len(val), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scores = [
        _aps_score(r["probs"], y, float(u)) for r, y, u in zip(val, y_val, u_cal, strict=True)
    ]
    q = _brute_quantile(scores, 0.9)
    from safetensors import safe_open

    with safe_open(str(post), "pt") as f:
        stored = json.loads(f.metadata()["tuning"])["conformal"]
    assert stored["levels"]["0.9"]["aps"] == pytest.approx(q, abs=1e-6)
    assert stored["seed"] == 0
    q = stored["levels"]["0.9"]["aps"]

    args = ("--conformal", "0.9", "--conformal-score", "aps", "--seed", "3")
    test = _predict(post, "digits_mlp", "test", tmp_path / "test.jsonl", *args)
    u_test = RowSeeds(3, 0).uniform(len(test))
    covered = sizes = 0
    for i, (row, y) in enumerate(zip(test, _labels("digits_mlp", "test").tolist(), strict=True)):
        for k, member in enumerate(row["conformal_set"]):
            score = _aps_score(row["probs"], k, float(u_test[i]))
            if abs(score - q) > 1e-9:  # the cumulative sum and the loop may round apart at q
                assert member == int(score <= q), (i, k, score, q)
        covered += row["conformal_set"][y]
        sizes += sum(row["conformal_set"])
    coverage = covered / len(test)
    print(f"digits_mlp predict --conformal 0.9 --conformal-score aps: test coverage "
          f"{coverage:.4f}, mean size {sizes / len(test):.3f}")  # fmt: skip
    assert abs(coverage - 0.9) <= 0.03
    # A row's uniform is seeded by its index: another batch size gives the same sets.
    again = _predict(post, "digits_mlp", "test", tmp_path / "b7.jsonl", *args, "--batch-size", "7")
    assert [r["conformal_set"] for r in again] == [r["conformal_set"] for r in test]


def test_conformal_score_is_checked(tuned: dict[str, Path]) -> None:
    def run(model: str, *extra: str) -> object:
        return _invoke(["predict", "-p", tuned[model], "--data", SAMPLES / model / "data.yaml",
                        "-q", *extra])  # fmt: skip

    res = run("diabetes_mlp", "--conformal", "0.9", "--conformal-score", "aps")
    assert res.exit_code == 2 and "--conformal-score lac" in res.output
    res = run("digits_mlp", "--conformal", "0.9", "--conformal-score", "raps")
    assert res.exit_code == 2 and "--conformal-score lac" in res.output
    res = run("digits_mlp", "--conformal-score", "aps")
    assert res.exit_code == 2 and "--conformal 0.9" in res.output


@pytest.fixture(scope="module")
def multilabel() -> tuple:
    """A 3-label sigmoid model, its full-GGN posterior and val / test splits."""
    from laplace_cli.laplace.approximation import Laplace

    torch.manual_seed(0)
    x = torch.randn(2700, 5)
    y = (torch.rand(2700, 3) < torch.sigmoid(2.0 * x @ torch.randn(5, 3))).float()
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x[:300]), y[:300]).backward()
        opt.step()

    def loader(lo: int, hi: int) -> torch.utils.data.DataLoader:
        data = torch.utils.data.TensorDataset(x[lo:hi], y[lo:hi])
        return torch.utils.data.DataLoader(data, batch_size=64)

    la = Laplace(model, "binary", "all", "full").fit(loader(0, 300))
    return la, loader(300, 600), x[600:], y[600:]


def test_multilabel_sets_follow_per_label_thresholds(multilabel: tuple) -> None:
    from laplace_cli.io.posterior_metadata import _conformal_problems
    from laplace_cli.pipeline.conformal_stage import calibrate_conformal, calibration_for
    from laplace_cli.pipeline.predict_stage import PredictOptions, iter_prediction_rows

    la, val_loader, x_test, y_test = multilabel
    record = calibrate_conformal(la, val_loader, [0.9])
    thresholds = record["levels"]["0.9"]["label_lac"]
    assert _conformal_problems(record, {"likelihood": "binary", "n_outputs": 3}) == []
    assert _conformal_problems(record, {"likelihood": "binary", "n_outputs": 2}) != []
    # Brute force: per label, the quantile of 1 − p_l(y_l) over the validation rows.
    options = PredictOptions()
    val_rows = [
        r
        for chunk in iter_prediction_rows(
            la, [(list(range(300)), val_loader.dataset.tensors[0])], options
        )
        for r in chunk
    ]  # noqa: E501
    y_val = val_loader.dataset.tensors[1]
    for label in range(3):
        scores = [
            1 - (r["probs"][label] if y_val[i, label] == 1 else 1 - r["probs"][label])
            for i, r in enumerate(val_rows)
        ]
        assert thresholds[label] == pytest.approx(_brute_quantile(scores, 0.9), abs=1e-6)
    options.conformal = calibration_for(la, 0.9, options)
    rows = [
        r
        for chunk in iter_prediction_rows(la, [(list(range(len(x_test))), x_test)], options)
        for r in chunk
    ]
    covered = [0, 0, 0]
    for i, row in enumerate(rows):
        for label in range(3):
            p = row["probs"][label]
            assert row["conformal_has_0"][label] == int(p <= thresholds[label])
            assert row["conformal_has_1"][label] == int(1 - p <= thresholds[label])
            value = int(y_test[i, label])
            covered[label] += (row["conformal_has_0"], row["conformal_has_1"])[value][label]
    for label in range(3):
        # 0.9 nominal; the calibration on 300 rows alone moves it by ~±0.02 (one s.d.)
        assert abs(covered[label] / len(rows) - 0.9) <= 0.05
    with pytest.raises(BadInputError, match="--conformal-score lac"):
        calibration_for(la, 0.9, PredictOptions(), "aps")
    from laplace_cli.io.writers import flatten_row

    flat = flatten_row(rows[0], single_output=False)  # CSV: one column per label
    assert [flat[f"conformal_has_1_{k}"] for k in range(3)] == rows[0]["conformal_has_1"]
