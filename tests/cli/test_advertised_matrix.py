"""Everything `laplace fit --help` offers works end to end, or is refused with exit 2 and a reason.

The matrix: every checkpoint form (`.pt2` torch.export, TorchScript scripted and traced,
safetensors + `--model-factory`, state_dict `.pt` + factory, pickle with `--trust-checkpoint`,
Hugging Face folder) × every `--structure` × every `--subset` × every `--likelihood` that
`fit --help` offers (checked against the help itself, so a new choice gets cells or fails
here), on the tiny models and data of `checkpoint_forms.py`.

* Every cell runs `laplace fit` (in-process, Typer's CliRunner) and checks the posterior file:
  structure, subset, likelihood, outputs and number of parameters.
* One representative per checkpoint form and one per structure × subset (with the likelihoods
  rotated through them) run the whole chain fit → tune → evaluate → predict → inspect →
  marglik and check each command's output: the tuned prior, the evaluation's metrics, one
  prediction per input row, what `inspect --json` reports, a finite log marginal likelihood.
* The combinations that are refused are listed in REFUSED with the reason; they must exit 2
  with the message given there. Every other cell must pass.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from laplace_cli.cli.app import app
from laplace_cli.io.posterior_file import read_posterior
from tests.cli.checkpoint_forms import (
    BINARY,
    BINARY_TEXT,
    CLASSIFICATION,
    HF_FORM,
    MLP_FORMS,
    REGRESSION,
    REGRESSION_2,
    ROWS,
    Likelihood,
    World,
    build_world,
)

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    import peft  # noqa: F401
    import transformers  # noqa: F401

    HAS_HF = True
except ImportError:  # the llm extra is optional; the other forms still run
    HAS_HF = False

STRUCTURES = ("diag", "kron", "full", "lowrank")
SUBSETS = ("all", "last_layer", "subnetwork")
LIKELIHOODS = ("classification", "regression", "binary")
FORMS = (*MLP_FORMS, HF_FORM)
SUBNETWORK_SIZE = 12
SUBNETWORK = ["--subnetwork", f"largest_magnitude:{SUBNETWORK_SIZE}"]
TORCHSCRIPT = ("scripted", "traced")


@dataclass(frozen=True)
class Cell:
    form: str
    structure: str
    subset: str
    lik: Likelihood

    @property
    def id(self) -> str:
        return f"{self.form}-{self.structure}-{self.subset}-{self.lik.id}"


@dataclass(frozen=True)
class Refusal:
    """A refused combination ("*" matches anything): the message it must give, and why."""

    forms: tuple[str, ...] | str
    structure: str
    subset: str
    message: str
    why: str

    def matches(self, cell: Cell) -> bool:
        return (
            (self.forms == "*" or cell.form in self.forms)
            and self.structure in ("*", cell.structure)
            and self.subset in ("*", cell.subset)
        )


REFUSED = [
    Refusal(
        "*",
        "kron",
        "subnetwork",
        "hessian_structure 'kron' is not available with subset 'subnetwork'",
        "a subnetwork is a set of single weights, not whole layers: there are no Kronecker "
        "factors to take",
    ),
    Refusal(
        "*",
        "lowrank",
        "subnetwork",
        "hessian_structure 'lowrank' is not available with subset 'subnetwork'",
        "the subnetwork's few weights take diag or full; a low-rank factor buys nothing",
    ),
    Refusal(
        TORCHSCRIPT,
        "kron",
        "all",
        "--structure diag, full or lowrank",
        "TorchScript modules take no Python forward hooks, and K-FAC over every layer needs "
        "each layer's inputs and output gradients",
    ),
]

# Cells that fail for now, with the reason (strict=False: they turn into passes as the fixes
# land; the xfail is then removed).
KNOWN_FAILING: list[tuple[Callable[[Cell], bool], str]] = []


def refusal(cell: Cell) -> Refusal | None:
    return next((r for r in REFUSED if r.matches(cell)), None)


def known_failure(cell: Cell) -> str | None:
    return next((why for match, why in KNOWN_FAILING if match(cell)), None)


def likelihoods_for(form: str) -> list[Likelihood]:
    if form == HF_FORM:
        return [CLASSIFICATION, REGRESSION, BINARY_TEXT]
    return [CLASSIFICATION, REGRESSION, BINARY]


CELLS = [
    Cell(form, structure, subset, lik)
    for form in FORMS
    for structure in STRUCTURES
    for subset in SUBSETS
    for lik in likelihoods_for(form)
]
# Two outputs in regression: every structure × subset, on one form (the form is orthogonal).
CELLS += [Cell("safetensors", s, sub, REGRESSION_2) for s in STRUCTURES for sub in SUBSETS]

# fit → tune → evaluate → predict → inspect → marglik: one per form, one per structure × subset.
CHAINS = [
    (Cell("export", "kron", "all", CLASSIFICATION), ["--prior-structure", "layerwise"]),
    (Cell("scripted", "diag", "all", REGRESSION), []),
    (Cell("traced", "full", "last_layer", BINARY), ["--method", "gridsearch"]),
    (Cell("safetensors", "lowrank", "last_layer", CLASSIFICATION), []),
    (Cell("state_dict", "full", "all", REGRESSION), ["--prior-structure", "scalar"]),
    (Cell("pickle", "diag", "last_layer", CLASSIFICATION), []),
    (Cell(HF_FORM, "kron", "last_layer", CLASSIFICATION), ["--method", "gridsearch"]),
    (Cell("safetensors", "diag", "all", CLASSIFICATION), ["--prior-structure", "diag"]),
    (Cell("safetensors", "diag", "last_layer", REGRESSION), ["--method", "gridsearch"]),
    (Cell("safetensors", "diag", "subnetwork", BINARY), []),
    (Cell("safetensors", "kron", "all", REGRESSION_2), []),
    (Cell("safetensors", "kron", "last_layer", CLASSIFICATION), []),
    (Cell("safetensors", "full", "all", BINARY), []),
    (Cell("safetensors", "full", "last_layer", REGRESSION_2), ["--method", "gridsearch"]),
    (Cell("safetensors", "full", "subnetwork", CLASSIFICATION), ["--prior-structure", "scalar"]),
    (Cell("safetensors", "lowrank", "all", REGRESSION), []),
    (Cell("export", "lowrank", "last_layer", BINARY), []),
]


def marks(cell: Cell) -> list[Any]:
    out: list[Any] = []
    if cell.form == HF_FORM:
        out.append(pytest.mark.skipif(not HAS_HF, reason="needs transformers and peft"))
    why = known_failure(cell)
    if why:
        out.append(pytest.mark.xfail(strict=False, reason=why))
    return out


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def last_line(result: Any) -> str:
    lines = (result.stderr or result.output).strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("advertised"), with_hf=HAS_HF)


@pytest.fixture(scope="module")
def fitted(world: World) -> Callable[[Cell], tuple[Any, Path]]:
    """Runs `laplace fit` once per cell (memoised: the chains reuse the cells' posteriors)."""
    cache: dict[str, tuple[Any, Path]] = {}

    def get(cell: Cell) -> tuple[Any, Path]:
        if cell.id not in cache:
            ckpt = world.checkpoint(cell.form, cell.lik)
            out = world.root / "posteriors" / f"{cell.id}.st"
            out.parent.mkdir(exist_ok=True)
            args = ["fit", ckpt.path, "--data", world.data_spec(cell.form, cell.lik), "-o", out]
            args += ["--structure", cell.structure, "--subset", cell.subset, "-q", *ckpt.options]
            args += ["--likelihood", cell.lik.name]
            if cell.subset == "subnetwork":
                args += SUBNETWORK
            cache[cell.id] = (invoke(args), out)
        return cache[cell.id]

    return get


def expected_n_params(world: World, cell: Cell) -> int:
    ckpt = world.checkpoint(cell.form, cell.lik)
    return {"all": ckpt.n_params, "last_layer": ckpt.n_last_layer}.get(cell.subset, SUBNETWORK_SIZE)


# --- the axes are what the help offers ---------------------------------------------------------
def _fit_help() -> str:
    result = CliRunner().invoke(app, ["fit", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    return result.stdout


def test_the_matrix_covers_every_choice_fit_help_offers() -> None:
    text = _fit_help()
    offered = dict(re.findall(r"--(structure|subset|likelihood)\s+<([^>]+)>", text))
    # gp (function-space Laplace) has its own matrix: tests/cli/test_gp_structure.py.
    assert offered["structure"].split("|") == [*STRUCTURES, "gp"]
    assert offered["subset"].split("|") == list(SUBSETS)
    assert offered["likelihood"].split("|") == list(LIKELIHOODS)
    assert {c.lik.name for c in CELLS} == set(LIKELIHOODS)
    flat = " ".join(text.split())
    for form_words in (".pt2", "TorchScript", ".safetensors", "state_dict .pt", "pickled"):
        assert form_words in flat, form_words


def test_every_refusal_names_a_cell_and_every_chain_is_a_passing_cell() -> None:
    ids = {c.id for c in CELLS}
    for refused in REFUSED:
        assert any(refused.matches(c) for c in CELLS), refused
    for cell, _ in CHAINS:
        assert cell.id in ids and refusal(cell) is None, cell.id


# --- fit: every cell ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", [pytest.param(c, id=c.id, marks=marks(c)) for c in CELLS])
def test_fit(cell: Cell, world: World, fitted: Callable[[Cell], tuple[Any, Path]]) -> None:
    result, out = fitted(cell)
    refused = refusal(cell)
    if refused is not None:
        assert result.exit_code == 2, f"{cell.id} must be refused ({refused.why}): {result.output}"
        assert refused.message in result.stderr, result.stderr
        assert not out.exists()
        return
    assert result.exit_code == 0, f"{cell.id}: exit {result.exit_code}: {last_line(result)}"
    posterior = read_posterior(out)
    meta = posterior.metadata
    assert (meta["structure"], meta["subset"], meta["likelihood"]) == (
        cell.structure,
        cell.subset,
        cell.lik.name,
    )
    assert meta["n_outputs"] == cell.lik.n_out
    assert meta["n_data"] == ROWS["train"]
    assert posterior.n_params == expected_n_params(world, cell)


# --- the chain: representatives ------------------------------------------------------------------
def _stage(args: list[Any], what: str) -> Any:
    result = invoke(args)
    assert result.exit_code == 0, f"{what}: exit {result.exit_code}: {last_line(result)}"
    return result


@pytest.mark.parametrize(
    "cell,tune_args",
    [pytest.param(c, t, id=c.id, marks=marks(c)) for c, t in CHAINS],
)
def test_fit_tune_evaluate_predict_inspect_marglik(
    cell: Cell,
    tune_args: list[str],
    world: World,
    fitted: Callable[[Cell], tuple[Any, Path]],
) -> None:
    fit, post = fitted(cell)
    assert fit.exit_code == 0, f"fit: exit {fit.exit_code}: {last_line(fit)}"
    data = world.data_spec(cell.form, cell.lik)
    trust = ["--trust-checkpoint"] if cell.form == "pickle" else []
    tuned = post.with_name(f"{cell.id}.tuned.st")

    tune_cmd = ["tune", "-p", post, "-o", tuned, "--json", "-q", *tune_args, *trust]
    if "gridsearch" in tune_args:
        tune_cmd += ["--data", data]
    tune = json.loads(_stage(tune_cmd, "tune").stdout)
    prior = tune["prior_precision"]
    prior = prior if isinstance(prior, list) else [prior]
    assert prior and all(math.isfinite(p) and p > 0 for p in prior), tune
    if cell.lik.name == "regression":
        assert all(math.isfinite(s) and s > 0 for s in tune["sigma_noise"]), tune

    evaluate = _stage(["evaluate", "-p", tuned, "--data", data, "--json", "-q", *trust], "evaluate")
    rows = json.loads(evaluate.stdout)["rows"]
    metrics = {
        "classification": {"acc", "nll", "ece", "brier"},
        "binary": {"nll"},
        "regression": {"rmse", "nll", "crps"},
    }[cell.lik.name]
    for row in ("map", "laplace"):
        assert metrics <= set(rows[row]), (row, rows[row])
        assert all(math.isfinite(rows[row][m]) for m in metrics), rows[row]

    predict = _stage(
        ["predict", "-p", tuned, "--data", data, "--split", "test", "-q", *trust], "predict"
    )
    preds = [json.loads(line) for line in predict.stdout.splitlines()]
    assert len(preds) == ROWS["test"]
    assert [p["id"] for p in preds] == list(range(ROWS["test"]))
    width = "probs" if cell.lik.name != "regression" else "mean"
    # a single output is a number in JSONL, several a list
    sizes = {len(p[width]) if isinstance(p[width], list) else 1 for p in preds}
    assert sizes == {cell.lik.n_out}, preds[0]

    described = json.loads(_stage(["inspect", tuned, "--json"], "inspect").stdout)
    assert described["n_params"] == expected_n_params(world, cell)
    meta = described["metadata"]
    assert (meta["structure"], meta["subset"], meta["likelihood"]) == (
        cell.structure,
        cell.subset,
        cell.lik.name,
    )

    marglik = _stage(["marglik", post, tuned, "--json", "-q", *trust], "marglik")
    values = [p["log_marginal_likelihood"] for p in json.loads(marglik.stdout)["posteriors"]]
    assert len(values) == 2 and all(math.isfinite(v) for v in values), values
