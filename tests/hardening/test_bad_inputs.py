"""Bad inputs through the CLI: each one exits 2 with one line naming the file and the key/row.

The cases and their messages are listed in docs/hardening.md; this file is the proof.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hardening_support import Workspace, case, features, invoke
from typer.testing import CliRunner

# --- files that are missing, folders, unreadable ----------------------------------------------


@case("bad", "missing `--data` file", 2, "nope.yaml: no such file (--data)")
def test_missing_data_file(runner: CliRunner, ws: Workspace) -> None:
    invoke(runner, ws.fit_args(ws / "nope.yaml"), 2, "nope.yaml: no such file (--data)")


@case("bad", "missing model checkpoint", 2, "gone.safetensors: no such file (MODEL)")
def test_missing_model_file(runner: CliRunner, ws: Workspace) -> None:
    args = ws.fit_args(ws / "data.yaml", model="gone.safetensors")
    invoke(runner, args, 2, "gone.safetensors: no such file (MODEL)")


@case("bad", "`--data` is a folder", 2, "ws: is a folder, expected a file (--data)")
def test_data_is_a_folder(runner: CliRunner, ws: Workspace) -> None:
    invoke(runner, ws.fit_args(ws.root), 2, f"{ws.root}: is a folder, expected a file (--data)")


@case("bad", "split file missing", 2, "d.yaml: splits.train.path: file not found: absent.npz")
def test_missing_split_file_names_the_key(runner: CliRunner, ws: Workspace) -> None:
    data = ws.spec("d.yaml", "splits:\n  train: {path: absent.npz, x: x, y: y}\n")
    invoke(runner, ws.fit_args(data), 2, "d.yaml: splits.train.path: file not found", "absent.npz")


@case(
    "bad", "YAML not UTF-8", 2, "bin.yaml: cannot read ('utf-8' codec can't decode byte 0xff ...)"
)
def test_yaml_not_utf8_is_unreadable(runner: CliRunner, ws: Workspace) -> None:
    (ws / "bin.yaml").write_bytes(b"\xff\xfe\x00 splits")
    invoke(runner, ws.fit_args(ws / "bin.yaml"), 2, "bin.yaml: cannot read (", "utf-8")


@case(
    "bad",
    "YAML unreadable (permission)",
    2,
    "data.yaml: cannot read ([Errno 13] Permission denied ...)",
)
def test_yaml_permission_denied(
    runner: CliRunner, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root in CI, where chmod 000 still reads: make the OS refusal explicit.
    real = Path.read_text

    def refuse(self: Path, *args, **kwargs):
        if self.name == "data.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    invoke(runner, ws.fit_args(ws / "data.yaml"), 2, "data.yaml: cannot read (", "Permission")


# --- YAML: syntax, unknown keys, wrong types ----------------------------------------------------


@case(
    "bad",
    "YAML syntax error",
    2,
    "bad.yaml:3:30: invalid YAML: expected ',' or '}', but got ':' (while parsing a flow mapping)",
)
def test_yaml_syntax_error_names_line_and_column(runner: CliRunner, ws: Workspace) -> None:
    data = ws.spec("bad.yaml", "task: classification\nsplits:\n  train: {path: a.npz, x: x y: y\n")
    invoke(runner, ws.fit_args(data), 2, "bad.yaml:3:", "invalid YAML")


@case(
    "bad",
    "duplicate key",
    2,
    "dup.yaml:2:1: invalid YAML: duplicate key 'batch_size' (first on line 1)",
)
def test_yaml_duplicate_key(runner: CliRunner, ws: Workspace) -> None:
    data = ws.spec("dup.yaml", "batch_size: 8\nbatch_size: 9\nsplits: {}\n")
    invoke(runner, ws.fit_args(data), 2, "dup.yaml:2:1", "duplicate key 'batch_size'")


@case(
    "bad",
    "unknown keys (all reported)",
    2,
    "unk.yaml: batchsize: unknown key; did you mean 'batch_size'? / unk.yaml: splits.train.yy: unknown key; did you mean 'y'?",
)
def test_unknown_keys_with_did_you_mean_all_at_once(runner: CliRunner, ws: Workspace) -> None:
    data = ws.spec(
        "unk.yaml",
        "task: classification\nbatchsize: 8\nsplits:\n  train: {path: train.npz, x: x, yy: y}\n",
    )
    result = invoke(
        runner,
        ws.fit_args(data),
        2,
        "unk.yaml: batchsize: unknown key; did you mean 'batch_size'?",
        "unk.yaml: splits.train.yy: unknown key; did you mean 'y'?",
    )
    assert len(result.stderr.splitlines()) == 2  # both problems, one line each


@case(
    "bad",
    "wrong types (all reported)",
    2,
    "typ.yaml: task: expected one of classification, regression, binary, got 7 (int) / typ.yaml: batch_size: expected a positive integer, got 'eight' / typ.yaml: splits.train.path: expected a file path (string), got 3 (int)",
)
def test_wrong_types_name_key_expected_and_got(runner: CliRunner, ws: Workspace) -> None:
    data = ws.spec(
        "typ.yaml", "task: 7\nbatch_size: eight\nsplits:\n  train: {path: 3, x: x, y: y}\n"
    )
    invoke(
        runner,
        ws.fit_args(data),
        2,
        "typ.yaml: task: expected one of classification, regression, binary, got 7 (int)",
        "typ.yaml: batch_size: expected a positive integer, got 'eight'",
        "typ.yaml: splits.train.path: expected a file path (string), got 3 (int)",
    )


@case(
    "bad",
    "YAML that is not a mapping",
    2,
    "list.yaml: expected a mapping with a `splits:` section, got ['a', 'b'] (list)",
)
def test_yaml_that_is_not_a_mapping(runner: CliRunner, ws: Workspace) -> None:
    data = ws.spec("list.yaml", "- a\n- b\n")
    invoke(runner, ws.fit_args(data), 2, "list.yaml: expected a mapping with a `splits:` section")


@case(
    "bad",
    "unknown split",
    2,
    "data.yaml: splits: no split 'tarin'; the spec has train, test; did you mean 'train'?",
)
def test_unknown_split_did_you_mean(runner: CliRunner, ws: Workspace) -> None:
    args = ws.fit_args(ws / "data.yaml", extra=("--split", "tarin"))
    invoke(runner, args, 2, "data.yaml: splits: no split 'tarin'", "did you mean 'train'?")


@case(
    "bad",
    "recipe: unknown key, wrong type (nothing run, no output folder)",
    2,
    "recipe.yaml: fit.prior_precison: unknown key (did you mean 'prior_precision'?) ... / recipe.yaml: fit.temperature: expected a number, got 'hot'",
)
def test_recipe_unknown_key_and_bad_type(runner: CliRunner, ws: Workspace) -> None:
    recipe = ws.spec(
        "recipe.yaml",
        f"""\
        model: {{path: mlp.safetensors, factory: {ws.factories}:mlp}}
        data: data.yaml
        stages: [fit]
        fit: {{subset: all, structure: diag, prior_precison: 2, temperature: hot}}
        """,
    )
    invoke(
        runner,
        ["run", str(recipe), "--output", str(ws / "out")],
        2,
        "recipe.yaml: fit.prior_precison: unknown key (did you mean 'prior_precision'?)",
        "recipe.yaml: fit.temperature: expected a number, got 'hot'",
    )
    assert not (ws / "out").exists()  # refused before any stage ran


@case("bad", "`--model-kwargs` not JSON", 2, "--model-kwargs: not valid JSON (...)")
def test_bad_model_kwargs_json(runner: CliRunner, ws: Workspace) -> None:
    args = ws.fit_args(ws / "data.yaml", extra=("--model-kwargs", "{hidden: 7"))
    invoke(runner, args, 2, "--model-kwargs: not valid JSON")


# --- targets and values -------------------------------------------------------------------------


@case(
    "bad",
    "labels ≥ number of outputs",
    2,
    "lab.yaml: split 'train': batch 0: labels must lie in [0, 3) for a model with 3 outputs, got min 0, max 4",
)
def test_labels_at_or_above_n_outputs(runner: CliRunner, ws: Workspace) -> None:
    data = ws.split_spec("lab", features(), np.arange(20) % 5)
    invoke(
        runner,
        ws.fit_args(data),
        2,
        f"{data}: split 'train': batch 0: labels must lie in [0, 3) for a model with 3 outputs",
        "max 4",
    )


@case("bad", "negative label", 2, "neg.npz: row 6: expected a class label ≥ 0, got -1")
def test_negative_label_names_file_and_row(runner: CliRunner, ws: Workspace) -> None:
    y = np.arange(20) % 3
    y[6] = -1
    data = ws.split_spec("neg", features(), y, task="classification")
    invoke(runner, ws.fit_args(data), 2, "neg.npz: row 6: expected a class label ≥ 0, got -1")


@case("bad", "fractional label", 2, "frac.npz: row 11: expected an integer class label, got 1.5")
def test_fractional_label_names_file_and_row(runner: CliRunner, ws: Workspace) -> None:
    y = (np.arange(20) % 3).astype("float32")
    y[11] = 1.5
    data = ws.split_spec("frac", features(), y, task="classification")
    invoke(runner, ws.fit_args(data), 2, "frac.npz: row 11: expected an integer class label")


@case(
    "bad",
    "label ≥ `n_classes` of the spec (found before the fit, from the split's header and labels)",
    2,
    "nc.yaml: splits.train.y: nc.npz: row 2: class label 2 out of range for 2 classes (expected 0..1)",
)
def test_label_beyond_spec_n_classes(runner: CliRunner, ws: Workspace) -> None:
    ws.npz("nc.npz", x=features(), y=np.arange(20) % 3)
    data = ws.spec("nc.yaml", "task: classification\nn_classes: 2\nsplits: {train: {path: nc.npz}}")
    invoke(runner, ws.fit_args(data), 2, "nc.npz: row 2: class label 2 out of range for 2 classes")


@case(
    "bad",
    "regression targets of the wrong shape",
    2,
    "shape.yaml: split 'train': batch 0: targets of shape (8, 2) do not fit model outputs of shape (8, 1)",
)
def test_regression_targets_of_the_wrong_shape(runner: CliRunner, ws: Workspace) -> None:
    y = np.zeros((20, 2), "float32")
    data = ws.split_spec("shape", features(), y, task="regression")
    args = ws.fit_args(data, model="regressor.safetensors", factory="regressor")
    invoke(
        runner,
        args,
        2,
        f"{data}: split 'train': batch 0: targets of shape (8, 2) do not fit model outputs "
        "of shape (8, 1)",
    )


@case(
    "bad",
    "one-hot targets for classification",
    2,
    "onehot.npz: targets: expected one integer class label per row, got shape (20, 3) (one-hot or multi-label targets need task: binary; per-position label maps of a model with dense outputs need fit --output-positions independent)",
)
def test_classification_targets_one_hot(runner: CliRunner, ws: Workspace) -> None:
    y = np.eye(3)[np.arange(20) % 3]
    data = ws.split_spec("onehot", features(), y, task="classification")
    invoke(
        runner,
        ws.fit_args(data),
        2,
        "onehot.npz: targets: expected one integer class label per row, got shape (20, 3)",
        "task: binary",
    )


@case(
    "bad",
    "feature / target row counts differ (found before the fit, from the .npy headers)",
    2,
    "rows.yaml: splits.train: rows.npz: 20 feature rows but 19 targets",
)
def test_feature_and_target_row_counts_differ(runner: CliRunner, ws: Workspace) -> None:
    data = ws.split_spec("rows", features(), np.arange(19) % 3, task="classification")
    invoke(runner, ws.fit_args(data), 2, "rows.npz: 20 feature rows but 19 targets")


@case("bad", "NaN / Inf / −Inf in features", 2, "nanx.npz: row 7: non-finite value ... in features")
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_features_name_the_row(runner: CliRunner, ws: Workspace, value: float) -> None:
    x = features()
    x[7, 2] = value
    data = ws.split_spec("nanx", x, np.arange(20) % 3)
    invoke(runner, ws.fit_args(data), 2, "nanx.npz: row 7: non-finite value", "in features")


@case("bad", "Inf in regression targets", 2, "nany.npz: row 4: non-finite value inf in targets")
def test_non_finite_regression_target_names_the_row(runner: CliRunner, ws: Workspace) -> None:
    y = np.zeros((20, 1), "float32")
    y[4] = np.inf
    data = ws.split_spec("nany", features(), y, task="regression")
    args = ws.fit_args(data, model="regressor.safetensors", factory="regressor")
    invoke(runner, args, 2, "nany.npz: row 4: non-finite value inf in targets")


@case("bad", "NaN in `predict --input`", 2, "in.npz: row 6: non-finite value nan in features")
def test_non_finite_prediction_input_names_the_row(
    runner: CliRunner, fitted: Workspace, tmp_path: Path
) -> None:
    x = features(10)
    x[6, 0] = np.nan
    np.savez(tmp_path / "in.npz", x=x)
    args = ["predict", "-p", str(fitted / "post_full.st"), "--input", str(tmp_path / "in.npz")]
    invoke(runner, args, 2, "in.npz: row 6: non-finite value nan in features")


@case("bad", "empty split", 2, "empty.yaml: splits.train: empty.npz: empty split (no rows)")
def test_empty_split(runner: CliRunner, ws: Workspace) -> None:
    data = ws.split_spec("empty", np.zeros((0, 4), "float32"), np.zeros(0, "int64"))
    invoke(runner, ws.fit_args(data), 2, "empty.yaml: splits.train: ", "empty split (no rows)")


# --- models that do not fit the likelihood / the checkpoint -------------------------------------


@case(
    "bad",
    "1-output regression model, `--likelihood classification`, labels 0..9",
    2,
    "ten.yaml: split 'train': batch 0: labels must lie in [0, 1) for a model with 1 outputs, got min 0, max 7",
)
def test_regression_model_used_for_ten_classes(runner: CliRunner, ws: Workspace) -> None:
    data = ws.split_spec("ten", features(), np.arange(20) % 10)
    args = ws.fit_args(
        data,
        model="regressor.safetensors",
        factory="regressor",
        extra=("--likelihood", "classification"),
    )
    invoke(
        runner,
        args,
        2,
        f"{data}: split 'train': batch 0: labels must lie in [0, 1) for a model with 1 outputs",
        "got min 0, max 7",  # the first batch of 8 rows
    )


@case(
    "bad",
    "model with (B, T, C) outputs",
    2,
    "data.yaml: split 'train': model output has shape (8, 2, 3); expected (batch, outputs). For sequence outputs use the last-layer subset with a feature_reduction",
)
@pytest.mark.parametrize("structure", ["kron", "diag"])
def test_model_with_sequence_outputs(runner: CliRunner, ws: Workspace, structure: str) -> None:
    args = ws.fit_args(
        ws / "data.yaml", model="sequence.safetensors", factory="sequence", structure=structure
    )
    invoke(runner, args, 2, "data.yaml: split 'train': model output has shape (8, 2, 3)")


@case(
    "bad",
    "checkpoint of another architecture",
    2,
    "mlp_hidden7.safetensors: checkpoint of another architecture than ... builds: shape mismatches: 0.bias: checkpoint (7,) vs model (6,), 0.weight: checkpoint (7, 4) vs model (6, 4)",
)
def test_checkpoint_of_another_architecture(runner: CliRunner, ws: Workspace) -> None:
    args = ws.fit_args(ws / "data.yaml", model="mlp_hidden7.safetensors")
    invoke(
        runner,
        args,
        2,
        "mlp_hidden7.safetensors: checkpoint of another architecture than",
        "0.weight: checkpoint (7, 4) vs model (6, 4)",
    )


@case(
    "bad",
    "posterior for another model (fingerprint)",
    2,
    "post_full.st was fitted on a model with fingerprint ... (mlp.safetensors), but "
    "mlp_hidden7.safetensors has ...; the model given with --model is not the one it was "
    "fitted on; pass that checkpoint, ...",
)
def test_posterior_for_another_model(runner: CliRunner, fitted: Workspace) -> None:
    args = [
        "predict",
        "-p",
        str(fitted / "post_full.st"),
        "--data",
        str(fitted / "data.yaml"),
        "--model",
        str(fitted / "mlp_hidden7.safetensors"),
        "--model-factory",
        fitted.factory("mlp"),
        "--model-kwargs",
        '{"hidden": 7}',
    ]
    invoke(
        runner,
        args,
        2,
        "post_full.st was fitted on a model with fingerprint",
        "mlp_hidden7.safetensors has",
        "the model given with --model is not the one it was fitted on",
    )


# --- posterior files ---------------------------------------------------------------------------


def _header(data: bytes) -> tuple[int, dict]:
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n])


def _with_header(data: bytes, header: dict) -> bytes:
    n, _ = _header(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def _posterior_variant(src: Path, dst: Path, kind: str) -> None:
    data = src.read_bytes()
    n, header = _header(data)
    if kind == "truncated":
        dst.write_bytes(data[: len(data) - 100])
    elif kind == "header-garbage":
        dst.write_bytes(data[:20] + b"\xff" * 10 + data[30:])
    elif kind == "nan-in-data":
        info = header["mean"]
        begin = 8 + n + info["data_offsets"][0]
        nan = struct.pack("<f" if info["dtype"] == "F32" else "<d", float("nan"))
        dst.write_bytes(data[:begin] + nan + data[begin + len(nan) :])
    elif kind == "future-version":
        header["__metadata__"]["format_version"] = "9"
        dst.write_bytes(_with_header(data, header))
    elif kind == "not-a-posterior":
        header["__metadata__"]["format"] = "someone-else/weights"
        dst.write_bytes(_with_header(data, header))
    elif kind == "empty":
        dst.write_bytes(b"")
    else:  # pragma: no cover
        raise AssertionError(kind)


@case(
    "bad",
    "truncated posterior (predict, evaluate, inspect, marglik)",
    2,
    "truncated.st: tensor ... lie outside the ... data section; the file is truncated or corrupt",
)
@case("bad", "corrupted header bytes", 2, "header-garbage.st: header is not valid UTF-8 JSON")
@case(
    "bad",
    "NaN written into a tensor",
    2,
    "nan-in-data.st: non-finite values (NaN or Inf) in tensor(s) 'mean'",
)
@case(
    "bad",
    "future format version",
    2,
    "future-version.st: format_version '9' is not supported; laplace-cli ... reads version 1 (a newer laplace-cli may read it)",
)
@case(
    "bad",
    "not a laplace-cli posterior",
    2,
    "not-a-posterior.st: not a laplace-cli posterior: metadata format is 'someone-else/weights', expected 'laplace-cli/posterior'",
)
@case(
    "bad",
    "empty posterior file",
    2,
    "empty.st: not a safetensors file: 0 bytes, shorter than the 8-byte header length",
)
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "the file is truncated or corrupt"),
        ("header-garbage", "header is not valid UTF-8 JSON"),
        ("nan-in-data", "non-finite values (NaN or Inf) in tensor(s) 'mean'"),
        ("future-version", "format_version '9' is not supported"),
        ("not-a-posterior", "not a laplace-cli posterior: metadata format is"),
        ("empty", "not a safetensors file: 0 bytes"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate", "inspect", "marglik"])
def test_broken_posterior_file(
    runner: CliRunner, fitted: Workspace, tmp_path: Path, kind: str, message: str, command: str
) -> None:
    post = tmp_path / f"{kind}.st"
    _posterior_variant(fitted / "post_full.st", post, kind)
    data = str(fitted / "data.yaml")
    args = {
        "predict": ["predict", "-p", str(post), "--data", data],
        "evaluate": ["evaluate", "-p", str(post), "--data", data],
        "inspect": ["inspect", str(post)],
        "marglik": ["marglik", str(post)],
    }[command]
    invoke(runner, args, 2, f"{post}: ", message)


# --- gates -------------------------------------------------------------------------------------


@case(
    "bad",
    "gate that does not parse (`--fail-if`; checked before the evaluation: no report written)",
    2,
    "gate 'ece >> 0.1': expected a number or a metric after '>', got '>' at position 5; expected [row.]metric OP ...",
)
@case(
    "bad",
    "gate with no comparison",
    2,
    "gate 'ece': expected a comparison after 'ece', got the end; ...",
)
@case(
    "bad",
    "gate with an unknown metric",
    2,
    "gate 'bogus<1': unknown metric 'bogus' in row 'laplace'; available: acc, nll, ece, ...",
)
@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ("ece >> 0.1", "expected a number or a metric after '>'"),
        ("ece", "expected a comparison after 'ece', got the end"),
        ("bogus<1", "unknown metric 'bogus'"),
    ],
)
def test_gate_that_does_not_parse(
    runner: CliRunner, fitted: Workspace, gate: str, message: str
) -> None:
    report = fitted.root / f"report-{abs(hash(gate))}.json"
    args = [
        "evaluate",
        "-p",
        str(fitted / "post_full.st"),
        "--data",
        str(fitted / "data.yaml"),
        "--split",
        "test",
        "--fail-if",
        gate,
        "--report",
        str(report),
    ]
    invoke(runner, args, 2, f"gate {gate!r}", message)
    assert not report.exists()  # the gate is checked before the evaluation, not after it


@case(
    "bad",
    "gate in a recipe (before the fit stage runs)",
    2,
    "gate.yaml: evaluate.fail_if: gate 'ece >> 1': ...",
)
def test_gate_in_a_recipe_names_file_and_key(runner: CliRunner, ws: Workspace) -> None:
    recipe = ws.spec(
        "gate.yaml",
        f"""\
        model: {{path: mlp.safetensors, factory: {ws.factories}:mlp}}
        data: data.yaml
        stages: [fit, evaluate]
        fit: {{subset: all, structure: diag}}
        evaluate: {{split: test, fail_if: ['ece >> 1']}}
        """,
    )
    invoke(
        runner,
        ["run", str(recipe), "--output", str(ws / "out")],
        2,
        "gate.yaml: evaluate.fail_if: gate 'ece >> 1'",
    )
    assert not (ws / "out").exists()  # refused before the fit stage ran


def test_nothing_is_written_on_bad_input(runner: CliRunner, ws: Workspace) -> None:
    data = ws.split_spec("lab", features(), np.arange(20) % 5)
    invoke(runner, ws.fit_args(data, ws / "never.st"), 2)
    assert not (ws / "never.st").exists()
    assert [p for p in os.listdir(ws.root) if p.endswith(".tmp")] == []
