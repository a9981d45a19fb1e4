"""`laplace evaluate` as one library call: load a posterior file, score it, publish the outputs.

The CLI checks its flags first (bad input exits 2 before any work), then hands everything to
:func:`evaluate_posterior_file` and prints what comes back. Under torchrun every rank predicts
its shard of the splits; rank 0 gathers the outputs, computes the metrics of the whole split and
alone writes (the other ranks get None).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.metrics.bootstrap import BootstrapSettings
from laplace_cli.pipeline import distributed
from laplace_cli.pipeline.evaluation import EvaluationResult, evaluate
from laplace_cli.pipeline.model_loading import LoadedPosterior, ModelSpec, load_posterior
from laplace_cli.pipeline.predict_stage import PredictOptions
from laplace_cli.pipeline.publish import PublishOptions, publish_evaluation
from laplace_cli.pipeline.stage_support import Progress, no_progress

__all__ = ["EvaluateRequest", "evaluate_posterior_file", "posterior_identity"]


@dataclass
class EvaluateRequest:
    """What `laplace evaluate` was asked for, its flags already checked."""

    posterior: Path
    data: Path
    split: str = "test"
    ood_data: Path | Mapping[str, Path] | None = None
    conformal_level: float = 0.9
    per_label_temperature: bool = False
    options: PredictOptions = field(default_factory=PredictOptions)
    gates: list[str] | None = None
    batch_size: int | None = None
    n_bins: int = 15
    binning: str = "equal-width"
    bootstrap: BootstrapSettings | None = None
    model_override: ModelSpec | None = None
    trust_checkpoint: bool = False
    device: str = "auto"
    dtype: str | None = None
    #: Where the evaluation goes; its `baseline` also gives the gates their `baseline.*` rows.
    outputs: PublishOptions = field(default_factory=PublishOptions)


def posterior_identity(posterior: Path, lp: LoadedPosterior) -> dict[str, Any]:
    """What the report says of the posterior evaluated: its file, fingerprint and model."""
    return {
        "posterior": str(posterior),
        "fingerprint": lp.metadata.get("fingerprint"),
        "model": lp.loaded.ref.to_dict(),
    }


def evaluate_posterior_file(
    request: EvaluateRequest, progress: Progress = no_progress
) -> tuple[EvaluationResult, dict[str, Any]] | None:
    """Load the posterior, score MAP / temperature / Laplace, write every output asked for.

    Returns the evaluation and the posterior's identity (for printing), or None on the ranks
    other than 0 under torchrun. Gate failures are recorded in the result, not raised.
    """
    distributed.context(request.device)
    lp = load_posterior(
        request.posterior,
        model_override=request.model_override,
        trust_checkpoint=request.trust_checkpoint,
        device=request.device,
        dtype=request.dtype,
    )
    base = request.outputs.baseline
    result = evaluate(
        lp.la,
        request.data,
        split=request.split,
        ood_data=request.ood_data,
        conformal_level=request.conformal_level,
        per_label_temperature=request.per_label_temperature,
        options=request.options,
        gates=request.gates,
        batch_size=request.batch_size,
        progress=progress,
        gate_rows=base.gate_rows() if base is not None else None,
        n_bins=request.n_bins,
        binning=request.binning,
        bootstrap_settings=request.bootstrap,
    )
    if result is None:
        return None  # not rank 0
    extra = posterior_identity(request.posterior, lp)
    publish_evaluation(result, lp.la.likelihood, request.data, request.outputs, extra=extra)
    return result, extra
