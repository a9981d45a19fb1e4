"""`laplace doctor`: cheap diagnostics of a fitted (and tuned) posterior on its data.

Each check measures one thing (`metrics.diagnostics`), compares it with a threshold of
`THRESHOLDS` (their reasons: docs/doctor.md) and returns a `Finding`: severity "ok" when nothing
is wrong, "warning" when something is, "skipped" when the check does not apply (with why).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from laplace_cli.core.batches import split_batch, to_device
from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.io.datasets import load_dataset_spec
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.metrics import diagnostics
from laplace_cli.pipeline.evaluation import SplitOutputs, collect_outputs
from laplace_cli.pipeline.predict_stage import PredictOptions
from laplace_cli.pipeline.stage_support import Progress, no_progress, split_loader

#: Least to most severe. A skipped check ranks below an ok one: a run whose checks are all ok or
#: skipped is "ok" (worst is "skipped" only when nothing could be checked).
SEVERITIES = ("skipped", "ok", "info", "warning", "error")

#: Thresholds of the checks; docs/doctor.md says why each has its value.
THRESHOLDS: dict[str, float] = {
    "variance_cv_min": 0.05,  # coefficient of variation of the GLM variance across inputs
    "under_share_min": 0.5,  # share of Laplace's ECE from under-confident bins
    "tv_max": 0.1,  # mean total-variation distance GLM vs NN (MC) predictive
    "prior_decades_max": 3.0,  # |log10(marglik prior / grid prior)|
    "grad_ratio_max": 0.05,  # ‖∇ mean training loss‖ / ‖θ‖
    "layer_share_max": 0.9,  # share of the curvature's trace held by one layer
}
#: Prior precisions the marglik / grid comparison scores (log10), as `laplace tune`'s default
#: grid widened by two decades each side so that an edge optimum there is still seen.
_LOG_PRIORS = torch.linspace(-6.0, 6.0, 49, dtype=torch.float64)


@dataclass
class Finding:
    check: str
    severity: str
    measured: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    action: str = ""


def fails(worst_severity: str, fail_on: str | None) -> bool:
    """Whether `--fail-on` / the recipe's `doctor.fail_on` (`warning`, `error`; `never` or
    None: no) makes a run with this worst severity fail (exit 1)."""
    if fail_on in (None, "never"):
        return False
    if fail_on not in SEVERITIES:
        raise BadInputError(f"fail_on: expected never, warning or error, got {fail_on!r}")
    return SEVERITIES.index(worst_severity) >= SEVERITIES.index(fail_on)


def worst(findings: list[Finding]) -> str:
    """The most severe severity among the findings ("ok" when there are none)."""
    return max((f.severity for f in findings), key=SEVERITIES.index, default="ok")


# --- checks on the tuning record ---------------------------------------------------------------
def check_grid_edge(tuning: dict[str, Any] | None) -> Finding:
    """The grid-searched prior precision is the smallest or largest point of its grid."""
    tuning = tuning or {}
    curve = tuning.get("curve") or []
    prior = tuning.get("prior_precision")
    if tuning.get("method") != "gridsearch" or not curve or not prior:
        return Finding("prior_grid_edge", "skipped", message="not tuned by grid search")
    chosen = float(prior[0] if isinstance(prior, list) else prior)
    grid = sorted({float(p[0]) for p in curve})
    edge = diagnostics.grid_edge_position(grid, chosen)
    measured = {"prior_precision": chosen, "grid_min": grid[0], "grid_max": grid[-1]}
    if edge is None:
        return Finding("prior_grid_edge", "ok", measured, "the grid's optimum is inside it")
    wider = "--grid-min" if edge == "low" else "--grid-max"
    return Finding(
        "prior_grid_edge",
        "warning",
        measured,
        f"the grid search picked the {edge} edge of its grid ({chosen:.3g}): the best prior "
        "precision may lie outside it",
        f"tune again with a wider grid ({wider}, log10 of the prior precision)",
    )


# --- checks on the predictive -----------------------------------------------------------------
def check_variance(out: SplitOutputs) -> Finding:
    """The GLM (epistemic) predictive variance hardly changes from one input to the next."""
    var = out.var if out.var is not None else out.var_total
    if var is None or var.shape[0] < 2:
        return Finding("constant_variance", "skipped", message="no per-input variance")
    cv = diagnostics.coefficient_of_variation(var)
    measured = {"cv": cv, "threshold": THRESHOLDS["variance_cv_min"]}
    if cv >= THRESHOLDS["variance_cv_min"]:
        return Finding("constant_variance", "ok", measured, "the variance changes across inputs")
    return Finding(
        "constant_variance",
        "warning",
        measured,
        f"the predictive variance is nearly the same for every input (coefficient of variation "
        f"{cv:.3g}): it is set by the prior, not by the data",
        "tune the prior precision (laplace tune --method gridsearch), or fit more weights "
        "(--subset all) or a richer structure (kron / full)",
    )


def check_under_confidence(out: SplitOutputs) -> Finding:
    """Laplace's NLL is worse than the MAP's, and its miscalibration is under-confidence."""
    if out.probs is None or out.targets.dim() != 1 or out.probs.dim() != 2:
        return Finding("under_confidence", "skipped", message="classification only")
    probs_map = torch.softmax(out.f_map.double(), dim=-1)
    m = diagnostics.under_confidence(out.probs.double(), probs_map, out.targets.long())
    m["threshold_under_share"] = THRESHOLDS["under_share_min"]
    if m["nll_laplace"] <= m["nll_map"] or m["under_share"] < THRESHOLDS["under_share_min"]:
        return Finding("under_confidence", "ok", m, "not under-confident")
    return Finding(
        "under_confidence",
        "warning",
        m,
        f"Laplace's NLL ({m['nll_laplace']:.4g}) is worse than the MAP's ({m['nll_map']:.4g}) "
        f"and {m['under_share']:.0%} of its ECE is under-confidence: the posterior is too wide",
        "raise the prior precision (laplace tune --method gridsearch on validation data)",
    )


def check_glm_vs_nn(
    glm: SplitOutputs, nn: SplitOutputs | None, likelihood: Likelihood = Likelihood.CLASSIFICATION
) -> Finding:
    """The GLM and the sampled-network (NN, Monte Carlo) predictives disagree."""
    if nn is None or glm.probs is None or nn.probs is None:
        return Finding("glm_nn_disagreement", "skipped", message="classification only")
    p, q = glm.probs, nn.probs
    if likelihood == Likelihood.BINARY:
        # binary / multi-label: each label is a Bernoulli vector (p, 1 − p)
        p = torch.stack([p, 1 - p], dim=-1)
        q = torch.stack([q, 1 - q], dim=-1)
    tv = diagnostics.mean_total_variation(p, q)
    measured = {"mean_tv": tv, "threshold": THRESHOLDS["tv_max"]}
    if tv <= THRESHOLDS["tv_max"]:
        return Finding("glm_nn_disagreement", "ok", measured, "GLM and NN predictives agree")
    return Finding(
        "glm_nn_disagreement",
        "warning",
        measured,
        f"the GLM and sampled-network predictives differ by a mean total variation of {tv:.3g}: "
        "sampled networks leave the region where the linearisation holds",
        "predict with the GLM predictive (--pred-type glm), which Laplace's tuning assumes, "
        "or raise the prior precision",
    )


# --- marglik vs grid search -------------------------------------------------------------------
def marglik_argmax(la: Laplace, log_priors: Tensor = _LOG_PRIORS) -> float:
    """The scalar prior precision of largest log marginal likelihood on a log-spaced grid."""
    values = []
    with torch.no_grad():
        for lp in log_priors:
            v = float(la.log_marginal_likelihood(prior_precision=10.0 ** float(lp)))
            values.append(v if math.isfinite(v) else -math.inf)
    return float(10.0 ** float(log_priors[max(range(len(values)), key=values.__getitem__)]))


def grid_argmin(la: Laplace, val_loader: Any) -> float:
    """The prior precision laplace tune's grid search would pick on `val_loader`; `la`'s prior,
    σ, temperature and tuning record are put back afterwards."""
    saved = (la.prior_precision.clone(), la.sigma_noise.clone(), la.temperature)
    tuning = copy.deepcopy(la.tuning)
    try:
        with warnings.catch_warnings():
            # An optimum on this wide grid's edge is the check's answer, not a tuning warning.
            warnings.simplefilter("ignore")
            result = la.optimize_prior_precision(
                method="gridsearch",
                val_loader=val_loader,
                log_prior_prec_min=float(_LOG_PRIORS[0]),
                log_prior_prec_max=float(_LOG_PRIORS[-1]),
                grid_size=len(_LOG_PRIORS),
            )
    finally:
        la.prior_precision, la.sigma_noise, la.temperature = saved
        la.tuning = tuning
    prior = result["prior_precision"]
    return float(prior[0] if isinstance(prior, list) else prior)


def check_marglik_vs_grid(la: Laplace, val_loader: Any | None) -> Finding:
    """marglik and grid search pick prior precisions orders of magnitude apart."""
    tuning = la.tuning or {}
    method = tuning.get("method")
    prior = la.prior_precision
    if prior.numel() != 1:
        return Finding("marglik_vs_grid", "skipped", message="a scalar prior precision only")
    if method == "gridsearch":
        grid, marglik = float(prior), marglik_argmax(la)
    elif val_loader is not None:
        marglik = float(prior) if method == "marglik" else marglik_argmax(la)
        grid = grid_argmin(la, val_loader)
    else:
        return Finding("marglik_vs_grid", "skipped", message="no validation data for a grid")
    if diagnostics.grid_edge_position(10.0**_LOG_PRIORS, grid) is not None and method != (
        "gridsearch"
    ):
        # The validation loss keeps falling to the edge of 12 decades: it has no optimum to
        # compare with (e.g. regression with a tuned σ, where the epistemic part hardly counts).
        return Finding(
            "marglik_vs_grid",
            "skipped",
            {"marglik_prior": marglik, "grid_prior": grid},
            f"the validation loss has no optimum inside 1e{_LOG_PRIORS[0]:g}..1e{_LOG_PRIORS[-1]:g}",
        )
    decades = diagnostics.log10_ratio(marglik, grid)
    measured = {
        "marglik_prior": marglik,
        "grid_prior": grid,
        "decades": decades,
        "threshold": THRESHOLDS["prior_decades_max"],
    }
    if decades <= THRESHOLDS["prior_decades_max"]:
        return Finding("marglik_vs_grid", "ok", measured, "marglik and grid search roughly agree")
    return Finding(
        "marglik_vs_grid",
        "warning",
        measured,
        f"marglik picks a prior precision of {marglik:.3g} and grid search {grid:.3g} "
        f"({decades:.1f} orders of magnitude apart): the evidence and the validation loss "
        "disagree, often a sign of a poor MAP or a misspecified likelihood",
        "trust the grid search for predictions; check the MAP (training) and --likelihood",
    )


# --- MAP check --------------------------------------------------------------------------------
def mean_loss_gradient(
    la: Laplace, loader: Any, progress: Progress = no_progress
) -> tuple[list[Tensor], list[Tensor]]:
    """∇θ of the mean per-row training loss (the likelihood's negative log-likelihood up to
    constants) over `loader`, and θ, for the model's trainable parameters."""
    params = [p for p in la.model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    n = 0
    for batch in progress(loader, None, "gradient of the training loss"):
        x, y = split_batch(batch)
        x = to_device(x, la.device, getattr(la, "model_dtype", la.dtype))
        y = y.to(la.device)
        f = la.model(**x) if isinstance(x, dict) else la.model(x)
        f = f.logits if hasattr(f, "logits") else f
        if la.likelihood == Likelihood.CLASSIFICATION:
            loss = F.cross_entropy(f, y.long().reshape(-1), reduction="sum")
        elif la.likelihood == Likelihood.BINARY:
            loss = F.binary_cross_entropy_with_logits(
                f, y.to(f.dtype).reshape(f.shape), reduction="sum"
            )
        else:
            loss = 0.5 * (f - y.to(f.dtype).reshape(f.shape)).pow(2).sum()
        for g, gi in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if gi is not None:
                g += gi
        n += int(y.shape[0])
    if n == 0:
        raise BadInputError("the training split is empty")
    return [g / n for g in grads], [p.detach() for p in params]


def check_map(la: Laplace, train_loader: Any | None, progress: Progress = no_progress) -> Finding:
    """The MAP is not a minimum of the training loss (large relative gradient norm)."""
    if train_loader is None:
        return Finding("map_not_minimum", "skipped", message="the data spec has no train split")
    grads, params = mean_loss_gradient(la, train_loader, progress)
    ratio = diagnostics.relative_gradient_norm(grads, params)
    measured = {"grad_to_param_norm": ratio, "threshold": THRESHOLDS["grad_ratio_max"]}
    if ratio <= THRESHOLDS["grad_ratio_max"]:
        return Finding("map_not_minimum", "ok", measured, "the MAP is (close to) a minimum")
    return Finding(
        "map_not_minimum",
        "warning",
        measured,
        f"the gradient of the mean training loss is {ratio:.3g} of the parameters' norm: the "
        "weights are not at a minimum, so the Laplace approximation is centred in the wrong place",
        "train the model to convergence (or check that the checkpoint is the trained one)",
    )


# --- curvature by layer -----------------------------------------------------------------------
def layer_trace_shares(la: Laplace) -> dict[str, float]:
    """Each layer's share of the trace of the (likelihood-scaled) curvature."""
    zero = torch.zeros(1, dtype=la.dtype, device=la.device)
    diag = la.posterior.diag_precision(zero, la.curvature_scale()).detach().cpu()
    groups = la.posterior.groups
    shares = diagnostics.trace_shares(diag, [g.numel for g in groups])
    by_layer: dict[str, float] = {}
    for g, s in zip(groups, shares):
        name = g.module_name or g.name
        by_layer[name] = by_layer.get(name, 0.0) + s
    return by_layer


def check_layers(la: Laplace) -> Finding:
    """The curvature's trace is held by one layer (the others get only the prior)."""
    try:
        shares = layer_trace_shares(la)
    except (NotImplementedError, RuntimeError) as exc:
        return Finding("curvature_one_layer", "skipped", message=f"no curvature diagonal: {exc}")
    if len(shares) < 2:
        return Finding("curvature_one_layer", "skipped", message="the posterior has one layer")
    top = max(shares, key=shares.__getitem__)
    measured = {
        "shares": shares,
        "top_layer": top,
        "top_share": shares[top],
        "threshold": THRESHOLDS["layer_share_max"],
    }
    if shares[top] <= THRESHOLDS["layer_share_max"]:
        return Finding("curvature_one_layer", "ok", measured, "the curvature is spread over layers")
    return Finding(
        "curvature_one_layer",
        "warning",
        measured,
        f"layer {top!r} holds {shares[top]:.0%} of the curvature's trace: with one scalar prior "
        "the other layers' uncertainty is set by the prior alone",
        "tune a per-layer prior (laplace tune --prior-structure layerwise) or fit only "
        f"that layer (--subset last_layer when {top!r} is the last one)",
    )


# --- all of it --------------------------------------------------------------------------------
def diagnose(
    la: Laplace,
    data_path: str,
    *,
    split: str = "val",
    batch_size: int | None = None,
    n_samples: int = 30,
    seed: int = 0,
    progress: Progress = no_progress,
) -> list[Finding]:
    """Every check of the module on `la` and `split` (and the train split) of `data_path`."""
    if getattr(la, "output_positions", None) is not None:
        raise BadInputError(
            "doctor's checks are per input and do not take dense outputs (output_positions) "
            "yet; use 'laplace evaluate' (per-position metrics) and 'laplace marglik'"
        )
    spec = load_dataset_spec(data_path)
    if split not in spec.splits:
        raise BadInputError(
            f"--split {split!r}: the data spec has splits {', '.join(sorted(spec.splits))}"
        )
    loader = split_loader(spec, split, la.likelihood, batch_size, any_order=True)
    glm = collect_outputs(
        la,
        loader,
        PredictOptions(pred_type="glm", n_samples=0, seed=seed),
        progress,
        f"GLM predictive on {split!r}",
    )
    nn = None
    if la.likelihood != Likelihood.REGRESSION:
        nn = collect_outputs(
            la,
            loader,
            PredictOptions(pred_type="nn", link_approx="mc", n_samples=n_samples, seed=seed),
            progress,
            f"sampled networks on {split!r}",
        )
    train = (
        split_loader(spec, "train", la.likelihood, batch_size, any_order=True)
        if "train" in spec.splits
        else None
    )
    return [
        check_grid_edge(la.tuning),
        check_variance(glm),
        check_under_confidence(glm),
        check_glm_vs_nn(glm, nn, la.likelihood),
        check_marglik_vs_grid(la, loader),
        check_map(la, train, progress),
        check_layers(la),
    ]


def report(findings: list[Finding], **context: Any) -> dict[str, Any]:
    """The JSON document of `laplace doctor --json`."""
    return {
        **context,
        "worst": worst(findings),
        "thresholds": dict(THRESHOLDS),
        "findings": [asdict(f) for f in findings],
    }
