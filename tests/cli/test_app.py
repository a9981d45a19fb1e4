"""The `laplace` CLI: help, argument checks, exit codes, stdout/stderr separation, `inspect`."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from laplace_cli.cli import console as console_mod
from laplace_cli.cli.app import app, main
from laplace_cli.cli.console import emit_json, progress
from laplace_cli.cli.errors import (
    EXIT_INTERNAL,
    LaplaceGroup,
    exit_code_for,
    report_error,
    wants_debug,
)
from laplace_cli.cli.options import DebugOpt
from laplace_cli.core.errors import (
    BadInputError,
    FingerprintMismatchError,
    GateFailed,
    MemoryBudgetError,
    NotImplementedYetError,
    NumericalError,
)
from laplace_cli.io.posterior_file import describe, read_posterior, write_posterior

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["fit", "tune", "evaluate", "predict", "run", "inspect", "marglik"]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("LAPLACE_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    return CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Existing but empty inputs: enough for the argument checks, refused once read."""
    out = {}
    for name in ("model.pt", "data.yaml", "post.st", "recipe.yaml", "x.npz"):
        out[name] = tmp_path / name
        out[name].write_bytes(b"")
    return out


@pytest.fixture
def posterior(tmp_path: Path) -> Path:
    p = 9
    tensors = {
        "mean": torch.linspace(-1, 1, p, dtype=torch.float64),
        "prior.precision": torch.ones(1, dtype=torch.float64),
        "prior.mean": torch.zeros(1, dtype=torch.float64),
        "diag.curvature": torch.arange(1, p + 1, dtype=torch.float64),
    }
    metadata = {
        "likelihood": "classification",
        "subset": "last_layer",
        "structure": "diag",
        "curvature": "ggn",
        "n_data": 100,
        "n_outputs": 3,
        "loss": 12.5,
        "temperature": 1.0,
        "sigma_noise": [1.0],
        "param_names": ["fc.weight", "fc.bias"],
        "param_shapes": [[3, 2], [3]],
        "model": {"path": "model.pt", "form": "state_dict", "factory": "m:f", "kwargs": {}},
        "fingerprint": "ab12" * 16,
        "last_layer_name": "fc",
    }
    path = tmp_path / "fitted.st"
    write_posterior(path, tensors, metadata)
    return path


# --- help ------------------------------------------------------------------------------------
def test_root_help_lists_the_seven_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f" {command} " in result.stdout
    assert "Exit codes" in result.stdout


def test_no_arguments_shows_help_and_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert "fit" in result.stdout and "error" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_an_example(runner: CliRunner, command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.stderr
    assert "Examples" in result.stdout
    assert f"$ laplace {command} " in result.stdout
    assert result.stderr == ""


def test_help_lists_enum_choices(runner: CliRunner) -> None:
    result = runner.invoke(app, ["fit", "--help"])
    assert "diag|kron|full|lowrank" in result.stdout
    assert "classification|regression|binary" in result.stdout


def test_version(runner: CliRunner) -> None:
    from laplace_cli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"laplace-cli {__version__}"


# --- arguments checked first, then the (empty) input files refused ------------------------------
def _valid_args(command: str, f: dict[str, Path]) -> list[str]:
    return {
        "fit": [
            "fit",
            str(f["model.pt"]),
            "--data",
            str(f["data.yaml"]),
            "-o",
            str(f["model.pt"].parent / "out.st"),
        ],
        "tune": ["tune", "--posterior", str(f["post.st"])],
        "evaluate": [
            "evaluate",
            "-p",
            str(f["post.st"]),
            "--data",
            str(f["data.yaml"]),
            "--fail-if",
            "ece>0.05",
        ],
        "predict": ["predict", "-p", str(f["post.st"]), "--input", str(f["x.npz"])],
        "run": ["run", str(f["recipe.yaml"]), "--set", "fit.structure=diag"],
        "marglik": ["marglik", str(f["post.st"])],
    }[command]


# The first file each command reads, and what it says about an empty one.
EMPTY_FILE_ERRORS = {
    "fit": ("data.yaml", "expected a mapping with a `splits:` section, got an empty file"),
    "tune": ("post.st", "not a safetensors file: 0 bytes, shorter than the 8-byte header length"),
    "evaluate": ("post.st", "not a safetensors file: 0 bytes"),
    "predict": ("post.st", "not a safetensors file: 0 bytes"),
    "run": ("recipe.yaml", "expected a mapping at the top level, got NoneType"),
    "marglik": ("post.st", "not a safetensors file: 0 bytes"),
}


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "inspect"])
def test_empty_input_files_exit_2_naming_the_file(
    runner: CliRunner, files: dict[str, Path], command: str
) -> None:
    """Every command runs now: valid arguments get as far as reading the files, and an empty
    file is bad input (exit 2) named in one line, with no output on stdout."""
    result = runner.invoke(app, _valid_args(command, files))
    name, message = EMPTY_FILE_ERRORS[command]
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {files[name]}: {message}")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""  # no partial output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--structure", "bogus"], "Invalid value for '--structure'"),
        (["--subset", "everything"], "Invalid value for '--subset'"),
        (["--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["--bogus"], "No such option: --bogus"),
    ],
    ids=["structure", "subset", "batch-size", "unknown-option"],
)
def test_bad_option_value_exits_2(
    runner: CliRunner, files: dict[str, Path], args: list[str], message: str
) -> None:
    result = runner.invoke(app, _valid_args("fit", files) + args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "(see 'laplace fit --help')" in result.stderr
    assert result.stdout == ""


def test_enum_choice_is_case_insensitive(runner: CliRunner, files: dict[str, Path]) -> None:
    result = runner.invoke(app, _valid_args("fit", files) + ["--structure", "DIAG"])
    # The choice is accepted: the command gets past parsing to the (empty) data spec.
    assert "Invalid value" not in result.stderr
    assert result.stderr.startswith(f"error: {files['data.yaml']}: ")


def test_missing_required_option_exits_2(runner: CliRunner, files: dict[str, Path]) -> None:
    result = runner.invoke(app, ["fit", str(files["model.pt"]), "--data", str(files["data.yaml"])])
    assert result.exit_code == 2
    assert "Missing option '--output'" in result.stderr


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("fit", ["--model-kwargs", "{bad"], "--model-kwargs: not valid JSON"),
        ("fit", ["--model-kwargs", "[1]"], "--model-kwargs: expected a JSON object"),
        ("fit", ["--model-factory", "no_colon"], "--model-factory: expected pkg.module:function"),
        (
            "fit",
            ["--prior-precision", "-1"],
            "--prior-precision: expected a finite number > 0, got -1.0",
        ),
        ("fit", ["--rank", "5"], "--rank applies to --structure lowrank only"),
        ("tune", ["--method", "gridsearch"], "--method gridsearch needs --data"),
        ("evaluate", ["--fail-if", "ece=0.1"], "gate 'ece=0.1'"),
        ("predict", ["--interval", "1.5"], "--interval: expected a level in (0, 1)"),
        ("predict", ["-o", "rows.txt"], "rows.txt: cannot tell the format"),
        ("run", ["--set", "novalue"], "--set 'novalue': expected key=value"),
    ],
)
def test_argument_checks_exit_2(
    runner: CliRunner, files: dict[str, Path], command: str, extra: list[str], message: str
) -> None:
    result = runner.invoke(app, _valid_args(command, files) + extra)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_missing_file_is_named(runner: CliRunner, tmp_path: Path, files: dict[str, Path]) -> None:
    missing = tmp_path / "nope.pt"
    result = runner.invoke(
        app, ["fit", str(missing), "--data", str(files["data.yaml"]), "-o", str(tmp_path / "o.st")]
    )
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing}: no such file (MODEL)\n"


def test_output_folder_must_exist(
    runner: CliRunner, tmp_path: Path, files: dict[str, Path]
) -> None:
    out = tmp_path / "no" / "o.st"
    result = runner.invoke(
        app, ["fit", str(files["model.pt"]), "--data", str(files["data.yaml"]), "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "does not exist (--output)" in result.stderr


def test_marglik_reports_every_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["marglik", str(tmp_path / "a.st"), str(tmp_path / "b.st")])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: ") and "a.st: no such file" in lines[0]
    assert lines[1].startswith("  ") and "b.st: no such file" in lines[1]


# --- inspect ---------------------------------------------------------------------------------
def test_inspect_prints_shapes_on_stderr(runner: CliRunner, posterior: Path) -> None:
    result = runner.invoke(app, ["inspect", str(posterior)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # people's output goes to stderr
    err = result.stderr
    for text in (
        "diag.curvature",
        "(9,)",
        "float64",
        "structure",
        "last_layer",
        "fc.weight",
        "9 parameters",
    ):
        assert text in err, text


def test_inspect_json_is_only_json_on_stdout(runner: CliRunner, posterior: Path) -> None:
    result = runner.invoke(app, ["inspect", str(posterior), "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(describe(read_posterior(posterior))))
    assert data["tensors"]["diag.curvature"]["shape"] == [9]
    assert data["metadata"]["param_shapes"] == [[3, 2], [3]]


def test_inspect_corrupt_file_exits_2_with_one_line(runner: CliRunner, posterior: Path) -> None:
    posterior.write_bytes(posterior.read_bytes()[:-3])
    result = runner.invoke(app, ["inspect", str(posterior), "--json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {posterior}: ") and result.stderr.count("\n") == 1


def test_debug_shows_traceback(runner: CliRunner, posterior: Path) -> None:
    posterior.write_bytes(b"junk")
    plain = runner.invoke(app, ["inspect", str(posterior)])
    assert "Traceback" not in plain.stderr
    debug = runner.invoke(app, ["inspect", str(posterior), "--debug"])
    assert debug.exit_code == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: ")


# --- the exit-code table -----------------------------------------------------------------------
CASES = [
    (
        GateFailed("gate 'ece>0.05' failed: laplace.ece = 0.07 > 0.05"),
        1,
        "error: gate 'ece>0.05' failed",
    ),
    (
        BadInputError("data.yaml: splits.train.y: expected integer labels"),
        2,
        "error: data.yaml: splits",
    ),
    (
        NotImplementedYetError("laplace x: not implemented yet"),
        2,
        "error: laplace x: not implemented yet",
    ),
    (FingerprintMismatchError("post.st was fitted on ..."), 2, "error: post.st was fitted on"),
    (MemoryBudgetError("needs 80 GiB; use --structure kron"), 2, "error: needs 80 GiB"),
    (NumericalError("non-finite curvature in fc.weight"), 3, "error: non-finite curvature"),
    (typer.BadParameter("nope"), 2, "error: Invalid value: nope"),
    (
        FileNotFoundError(2, "No such file or directory", "train.csv"),
        2,
        "error: train.csv: No such file or directory",
    ),
    (KeyboardInterrupt(), 130, "error: interrupted"),
    (BrokenPipeError(32, "Broken pipe"), 0, ""),
    (
        RuntimeError("boom"),
        70,
        "internal error: RuntimeError: boom, rerun with --debug for the traceback",
    ),
    # Out of memory is exit 3 with advice, not an internal error (docs/hardening.md).
    (MemoryError(), 3, "error: out of memory (MemoryError); lower --batch-size"),
]
IDS = [type(e).__name__ for e, _, _ in CASES]


@pytest.mark.parametrize(("exc", "code", "stderr"), CASES, ids=IDS)
def test_exit_code_for(exc: BaseException, code: int, stderr: str) -> None:
    assert exit_code_for(exc) == code


def _app_raising(exc: BaseException) -> typer.Typer:
    """A throwaway app on the real group class, with a command that raises `exc`."""
    test_app = typer.Typer(cls=LaplaceGroup, add_completion=False)

    @test_app.command()
    def boom(debug: DebugOpt = False) -> None:
        raise exc

    @test_app.command()
    def other() -> None:  # a second command keeps it a group
        pass

    return test_app


@pytest.mark.parametrize(("exc", "code", "stderr"), CASES, ids=IDS)
def test_exit_code_table_end_to_end(
    runner: CliRunner, exc: BaseException, code: int, stderr: str
) -> None:
    result = runner.invoke(_app_raising(exc), ["boom"], prog_name="laplace")
    assert result.exit_code == code
    assert result.stdout == ""
    if stderr:
        assert result.stderr.startswith(stderr)
        assert result.stderr.count("\n") == 1  # one line, no traceback
        assert "Traceback" not in result.stderr
    else:
        assert result.stderr == ""


@pytest.mark.parametrize(
    ("exc", "code"),
    [(BadInputError("x"), 2), (RuntimeError("boom"), 70)],
    ids=["bad-input", "internal"],
)
def test_debug_traceback_for_every_error(runner: CliRunner, exc: BaseException, code: int) -> None:
    result = runner.invoke(_app_raising(exc), ["boom", "--debug"])
    assert result.exit_code == code
    assert "Traceback (most recent call last)" in result.stderr
    assert "rerun with --debug" not in result.stderr


def test_debug_from_environment(runner: CliRunner) -> None:
    result = runner.invoke(_app_raising(RuntimeError("boom")), ["boom"], env={"LAPLACE_DEBUG": "1"})
    assert result.exit_code == EXIT_INTERNAL and "Traceback" in result.stderr


def test_wants_debug_ignores_arguments_after_double_dash() -> None:
    assert wants_debug(["fit", "--debug"])
    assert not wants_debug(["run", "--", "--debug"])


def test_report_error_prints_one_line() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=40)
    code = report_error(
        BadInputError("a/very/long/path/" * 10 + "f.csv: row 3: bad"), console=console
    )
    assert code == 2
    assert buf.getvalue().count("\n") == 1  # soft wrap: a long message is not broken up


def test_main_exits_with_table_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["laplace", "fit", "--structure", "bogus"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    monkeypatch.setattr(sys, "argv", ["laplace", "inspect", "--help"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    assert "Examples" in capsys.readouterr().out


# --- console: stdout is data, stderr is people ---------------------------------------------------
def test_progress_does_not_capture_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bar_output = io.StringIO()
    terminal = Console(file=bar_output, force_terminal=True, width=80)
    monkeypatch.setattr(console_mod, "stderr_console", terminal)
    seen = []
    for i in progress(range(3), description="rows"):
        print(f"row {i}")  # as `laplace predict` writes rows while the bar runs
        seen.append(i)
    assert seen == [0, 1, 2]
    assert capsys.readouterr().out == "row 0\nrow 1\nrow 2\n"
    assert "rows" in bar_output.getvalue() and "row 0" not in bar_output.getvalue()


def test_progress_is_silent_when_quiet_or_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(console_mod, "stderr_console", Console(file=out, force_terminal=True))
    assert list(progress([1, 2], quiet=True)) == [1, 2]
    monkeypatch.setattr(console_mod, "stderr_console", Console(file=out, force_terminal=False))
    assert list(progress(iter([1, 2]), total=2)) == [1, 2]
    assert out.getvalue() == ""


def test_emit_json_is_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    emit_json({"nll": math.nan, "acc": 0.5, "path": Path("a/b"), "t": torch.tensor([1.0, 2.0])})
    out = capsys.readouterr().out
    assert json.loads(out) == {"nll": None, "acc": 0.5, "path": "a/b", "t": [1.0, 2.0]}
    assert "NaN" not in out


# --- the real process: console script and closed pipes ------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LAPLACE_DEBUG", None)
    return env


def test_closed_stdout_exits_0_quietly(posterior: Path) -> None:
    """`laplace inspect --json post.st | head -c 0`: the reader is gone before we write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "laplace_cli", "inspect", str(posterior), "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=_env(),
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0
    assert proc.stderr == b""  # neither our message nor the interpreter's "Exception ignored"
