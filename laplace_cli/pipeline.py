"""The stages users run — fit, tune, evaluate, predict — as library functions.

The CLI commands and `laplace run` call these, so a recipe and the equivalent commands agree by
construction. Nothing here prints or knows about the terminal: long loops take an optional
`progress(iterable, total, description)` wrapper that the CLI fills with a progress bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from laplace_cli.batches import split_batch
from laplace_cli.enums import Likelihood, LinkApprox, PredType
from laplace_cli.errors import BadInputError
from laplace_cli.io.checkpoints import (
    ModelRef,
    load_model,
    model_fingerprint,
    resolve_device,
    resolve_dtype,
)
from laplace_cli.io.datasets import DatasetSpec, load_dataset_spec, make_loader
from laplace_cli.io.posterior_file import check_fingerprint, read_posterior, write_posterior
from laplace_cli.laplace import Laplace
from laplace_cli.predictive import (
    check_pred_options,
    glm_link,
    mutual_information,
    sample_gaussian_outputs,
)
from laplace_cli.serialization import laplace_from_state, laplace_state

Progress = Callable[[Iterable[Any], int | None, str], Iterable[Any]]


def no_progress(
    it: Iterable[Any], total: int | None = None, description: str = ""
) -> Iterable[Any]:
    return it


def _len_or_none(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


# --- models -------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """Where a model comes from: a checkpoint, optionally with a factory and its kwargs."""

    path: str
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False


@dataclass
class LoadedModel:
    model: nn.Module
    ref: ModelRef
    fingerprint: str


def load_model_spec(spec: ModelSpec, device: str = "auto", dtype: str | None = None) -> LoadedModel:
    """Load a checkpoint on the chosen device and dtype, and fingerprint its parameters."""
    model, ref = load_model(
        str(Path(spec.path).expanduser().resolve()),
        factory=_absolute_factory(spec.factory),
        factory_kwargs=spec.kwargs or None,
        trust_checkpoint=spec.trust_checkpoint,
        device=resolve_device(device),
        dtype=resolve_dtype(dtype),
    )
    # The fingerprint is taken before any --dtype/--device conversion, so a posterior fitted in
    # float64 still matches the same checkpoint loaded in float32.
    return LoadedModel(model, ref, ref.fingerprint or model_fingerprint(model))


def _absolute_factory(factory: str | None) -> str | None:
    """A file-style factory (`path/to/file.py:fn`) with an absolute path, so the posterior's
    model reference still works from another working directory."""
    if factory and ".py:" in factory:
        file, _, fn = factory.rpartition(":")
        if Path(file).exists():
            return f"{Path(file).resolve()}:{fn}"
    return factory


def model_spec_from_ref(ref: Mapping[str, Any], trust_checkpoint: bool = False) -> ModelSpec:
    """The model a posterior names (its recorded path, factory and kwargs)."""
    if not ref or not ref.get("path"):
        raise BadInputError("the posterior names no model; pass --model (and --model-factory)")
    return ModelSpec(
        path=str(ref["path"]),
        factory=ref.get("factory"),
        kwargs=dict(ref.get("kwargs") or {}),
        trust_checkpoint=trust_checkpoint,
    )


# --- data ---------------------------------------------------------------------------------------
def resolve_likelihood(flag: str | None, spec: DatasetSpec | None) -> Likelihood:
    """CLI flag over the spec's `task`, classification by default."""
    if flag:
        return Likelihood.parse(flag, "--likelihood")
    if spec is not None and spec.task is not None:
        return Likelihood.parse(spec.task, "task")
    return Likelihood.CLASSIFICATION


def split_loader(
    spec: DatasetSpec, split: str, likelihood: Likelihood, batch_size: int | None = None
) -> Any:
    return make_loader(spec, split, batch_size=batch_size, task=likelihood)


# --- fit ----------------------------------------------------------------------------------------
@dataclass
class FitOptions:
    likelihood: str | None = None
    subset: str = "all"
    structure: str = "kron"
    curvature: str = "ggn"
    backend: str = "auto"
    prior_precision: float = 1.0
    temperature: float = 1.0
    sigma_noise: float | None = None
    prior: str | None = None
    last_layer_name: str | None = None
    kron_approx: str = "expand"
    rank: int | None = None
    split: str = "train"
    batch_size: int | None = None
    seed: int = 0
    max_memory: int | None = None


@dataclass
class FitResult:
    la: Laplace
    loaded: LoadedModel
    data_path: str
    seconds: float


def fit(
    model_spec: ModelSpec,
    data_path: str | Path,
    options: FitOptions,
    *,
    device: str = "auto",
    dtype: str | None = None,
    progress: Progress = no_progress,
) -> FitResult:
    """Load the model and the train split, fit the curvature, return the fitted Laplace."""
    spec = load_dataset_spec(data_path)
    likelihood = resolve_likelihood(options.likelihood, spec)
    loaded = load_model_spec(model_spec, device, dtype)
    torch.manual_seed(options.seed)
    sigma = options.sigma_noise if options.sigma_noise is not None else 1.0
    la = Laplace(
        loaded.model,
        likelihood,
        options.subset,
        options.structure,
        curvature=options.curvature,
        backend=options.backend,
        prior_precision=options.prior_precision,
        temperature=options.temperature,
        sigma_noise=sigma if likelihood == Likelihood.REGRESSION else 1.0,
        last_layer_name=options.last_layer_name,
        kron_approx=options.kron_approx,
        rank=options.rank,
        max_memory=options.max_memory,
        seed=options.seed,
    )
    if options.prior:
        prior_la = load_posterior(
            options.prior, model_override=model_spec, device=device, dtype=dtype
        ).la
        set_prior = getattr(la, "set_prior_from", None)
        if set_prior is None:
            raise BadInputError("--prior (a posterior as prior) is not implemented yet")
        set_prior(prior_la)
    loader = split_loader(spec, options.split, likelihood, options.batch_size)
    start = time.perf_counter()
    la.fit(progress(loader, _len_or_none(loader), f"fit {options.structure}"))
    return FitResult(la, loaded, str(data_path), time.perf_counter() - start)


def save_posterior(
    la: Laplace, path: str | Path, loaded: LoadedModel, extra: dict[str, Any] | None = None
) -> None:
    """Write the posterior file atomically, with the model reference and fingerprint."""
    tensors, metadata = laplace_state(
        la, model_ref=loaded.ref.to_dict(), fingerprint=loaded.fingerprint, extra=extra
    )
    write_posterior(path, tensors, metadata)


# --- load ---------------------------------------------------------------------------------------
@dataclass
class LoadedPosterior:
    la: Laplace
    metadata: dict[str, Any]
    loaded: LoadedModel
    path: str


def load_posterior(
    path: str | Path,
    *,
    model_override: ModelSpec | None = None,
    trust_checkpoint: bool = False,
    device: str = "auto",
    dtype: str | None = None,
) -> LoadedPosterior:
    """Read a posterior file, load the model it names (or `model_override`), check the fingerprint."""
    pf = read_posterior(path)
    meta = pf.metadata
    spec = model_override or model_spec_from_ref(meta.get("model") or {}, trust_checkpoint)
    if dtype is None:
        dtype = {torch.float64: "float64", torch.float32: "float32"}.get(pf.tensors["mean"].dtype)
    loaded = load_model_spec(spec, device, dtype)
    check_fingerprint(meta, loaded.fingerprint, str(path), model=spec.path)
    la = laplace_from_state(loaded.model, pf.tensors, meta)
    return LoadedPosterior(la, meta, loaded, str(path))


def resave(
    lp: LoadedPosterior, path: str | Path | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Write a (re-tuned) posterior back, in place by default, keeping its extra metadata."""
    keep = {
        k: lp.metadata[k]
        for k in ("data", "fit_seconds", "world_size", "shard_sizes")
        if k in lp.metadata
    }
    keep.update(extra or {})
    save_posterior(lp.la, path or lp.path, lp.loaded, keep)


# --- tune ---------------------------------------------------------------------------------------
def tune(
    lp: LoadedPosterior,
    *,
    method: str = "marglik",
    data_path: str | None = None,
    split: str = "val",
    batch_size: int | None = None,
    progress: Progress = no_progress,
    **kwargs: Any,
) -> dict[str, Any]:
    """Optimise the prior precision (and σ for regression) and record the result on `lp.la`."""
    la = lp.la
    if method == "gridsearch":
        data_path = data_path or lp.metadata.get("data")
        if not data_path:
            raise BadInputError("grid search needs validation data: pass --data")
        spec = load_dataset_spec(data_path)
        loader = split_loader(spec, split, la.likelihood, batch_size)
        kwargs["val_loader"] = progress(loader, _len_or_none(loader), "validation pass")
    return la.optimize_prior_precision(method=method, **kwargs)


# --- predictions --------------------------------------------------------------------------------
@dataclass
class PredictOptions:
    pred_type: str | None = None
    link_approx: str | None = None
    n_samples: int = 100
    interval: float = 0.95
    seed: int = 0


def default_pred_options(la: Laplace, options: PredictOptions) -> tuple[PredType, LinkApprox]:
    """Explicit options, else what the posterior was tuned for, else glm / probit (nn: mc)."""
    tuned = la.tuning or {}
    pred_type = options.pred_type or tuned.get("pred_type") or "glm"
    link_approx = options.link_approx or tuned.get("link_approx")
    if not link_approx:
        link_approx = "mc" if pred_type == "nn" else "probit"
    return check_pred_options(pred_type, link_approx)


def normal_quantile(level: float) -> float:
    """z with P(|N(0,1)| ≤ z) = level."""
    if not 0 < level < 1:
        raise BadInputError(f"--interval must lie strictly between 0 and 1, got {level}")
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(level, dtype=torch.float64)))


@dataclass
class BatchPrediction:
    """Per-batch predictive quantities (tensors with the batch on the first axis)."""

    f_mu: Tensor
    f_var: Tensor  # (B, C) marginal functional variances
    probs: Tensor | None = None
    mutual_info: Tensor | None = None
    var_total: Tensor | None = None


def predict_batch(
    la: Laplace,
    x: Any,
    pred_type: PredType,
    link_approx: LinkApprox,
    n_samples: int,
    generator: torch.Generator | None,
) -> BatchPrediction:
    """Everything a prediction row needs for one batch, computing the GLM covariance once."""
    if pred_type == PredType.GLM:
        f_mu, f_var = la.functional_variance(x)
        f_var_diag = torch.diagonal(f_var, dim1=-2, dim2=-1)
        if la.likelihood == Likelihood.REGRESSION:
            return BatchPrediction(
                f_mu, f_var_diag, var_total=f_var_diag + la.sigma_noise.reshape(-1) ** 2
            )
        probs = glm_link(la.likelihood, link_approx, f_mu, f_var, n_samples, generator)
        mi = None
        if n_samples > 0 and la.likelihood == Likelihood.CLASSIFICATION:
            samples = torch.softmax(sample_gaussian_outputs(f_mu, f_var, n_samples, generator), -1)
            mi = mutual_information(samples)
        return BatchPrediction(f_mu, f_var_diag, probs=probs, mutual_info=mi)
    f_samples = la.functional_samples(
        x, pred_type="nn", n_samples=max(n_samples, 2), generator=generator
    )
    f_mu = f_samples.mean(0)
    f_var_diag = f_samples.var(0)
    if la.likelihood == Likelihood.REGRESSION:
        return BatchPrediction(
            f_mu, f_var_diag, var_total=f_var_diag + la.sigma_noise.reshape(-1) ** 2
        )
    from laplace_cli.predictive import link

    prob_samples = link(la.likelihood, f_samples)
    mi = mutual_information(prob_samples) if la.likelihood == Likelihood.CLASSIFICATION else None
    return BatchPrediction(f_mu, f_var_diag, probs=prob_samples.mean(0), mutual_info=mi)


def prediction_rows(
    la: Laplace, ids: list[Any], pred: BatchPrediction, interval: float
) -> list[dict[str, Any]]:
    """Rows with the normative field names (JSONL form: per-class values as lists)."""
    rows: list[dict[str, Any]] = []
    if la.likelihood == Likelihood.REGRESSION:
        z = normal_quantile(interval)
        sd = pred.var_total.clamp_min(0).sqrt()
        lower, upper = pred.f_mu - z * sd, pred.f_mu + z * sd
        for i, rid in enumerate(ids):
            rows.append(
                {
                    "id": rid,
                    "mean": pred.f_mu[i].tolist(),
                    "var": pred.f_var[i].tolist(),
                    "var_total": pred.var_total[i].tolist(),
                    "lower": lower[i].tolist(),
                    "upper": upper[i].tolist(),
                }
            )
        return rows
    probs = pred.probs
    ent = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    if la.likelihood == Likelihood.BINARY:
        ent = -(
            probs * torch.log(probs.clamp_min(1e-30))
            + (1 - probs) * torch.log((1 - probs).clamp_min(1e-30))
        ).sum(-1)
        preds = (probs > 0.5).long()
        max_prob = torch.maximum(probs, 1 - probs).min(-1).values
    else:
        preds = probs.argmax(-1)
        max_prob = probs.max(-1).values
    for i, rid in enumerate(ids):
        row: dict[str, Any] = {
            "id": rid,
            "pred": preds[i].tolist(),
            "probs": probs[i].tolist(),
            "var": pred.f_var[i].tolist(),
            "entropy": float(ent[i]),
            "max_prob": float(max_prob[i]),
        }
        if pred.mutual_info is not None:
            row["mutual_info"] = float(pred.mutual_info[i])
        rows.append(row)
    return rows


def iter_prediction_rows(
    la: Laplace,
    chunks: Iterable[tuple[list[Any], Tensor]],
    options: PredictOptions,
) -> Iterator[list[dict[str, Any]]]:
    """Stream rows chunk by chunk: memory is bounded by one chunk, whatever the input length."""
    pred_type, link_approx = default_pred_options(la, options)
    generator = torch.Generator(device=la._device).manual_seed(options.seed)
    for ids, x in chunks:
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero()[0, 0])
            raise BadInputError(f"input row {ids[bad]}: features contain NaN or Inf")
        pred = predict_batch(la, x, pred_type, link_approx, options.n_samples, generator)
        yield prediction_rows(la, list(ids), pred, options.interval)


def loader_chunks(loader: Iterable[Any]) -> Iterator[tuple[list[int], Tensor]]:
    """(ids, x) chunks from a split's DataLoader; ids are global row numbers."""
    start = 0
    for batch in loader:
        x, _ = split_batch(batch)
        n = x.shape[0]
        yield list(range(start, start + n)), x
        start += n
