"""Split conformal calibration stored in the posterior file (`laplace tune --conformal 0.9`) and
its use by `laplace predict --conformal 0.9`.

`tune` runs the posterior's predictive (the tuned prior, the predictive options the posterior
records) over the calibration split and stores, per level, the threshold of
`metrics.conformal.conformal_quantile` in ``tuning["conformal"]`` of the posterior's metadata
(docs/posterior-format.md):

* classification: LAC on the Laplace probabilities; the set of a row is the classes with
  1 − p_k ≤ q̂ (`conformal_set`, 0/1 per class);
* regression: the residual normalised by the predictive standard deviation, one q̂ per output;
  the interval is mean ∓ q̂·√var_total (`conformal_lower`, `conformal_upper`).

Binary / multi-label posteriors are refused: their sets would be over label vectors.
"""

from __future__ import annotations

import math
from typing import Any

from laplace_cli.core.enums import Likelihood
from laplace_cli.core.errors import BadInputError
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.metrics import conformal
from laplace_cli.pipeline.predict_stage import PredictOptions, default_pred_options
from laplace_cli.pipeline.stage_support import Progress, no_progress

#: The key of `Laplace.tuning` (the posterior's `tuning` metadata) holding the calibration.
KEY = "conformal"


def level_key(level: float) -> str:
    """How a level is written as a key of `levels` ("0.9")."""
    return f"{float(level):g}"


def check_supported(la: Laplace, flag: str) -> None:
    """Conformal sets are built for classification and regression only."""
    if la.likelihood == Likelihood.BINARY:
        raise BadInputError(
            f"{flag}: conformal sets are built for classification and regression posteriors, "
            "not binary / multi-label; use the per-label probabilities instead"
        )


def calibrate_conformal(
    la: Laplace,
    loader: Any,
    levels: list[float],
    options: PredictOptions | None = None,
    *,
    split: str = "val",
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Thresholds at each level from the predictive over `loader`; also set in `la.tuning`."""
    from laplace_cli.pipeline.evaluation import collect_outputs

    check_supported(la, "--conformal")
    options = options or PredictOptions()
    pred_type, link_approx = default_pred_options(la, options)
    out = collect_outputs(la, loader, options, progress, f"conformal calibration on {split!r}")
    thresholds: dict[str, Any] = {}
    for level in levels:
        if la.likelihood == Likelihood.CLASSIFICATION:
            scores = conformal.lac_scores(out.probs.double(), out.targets.reshape(-1).long())
            thresholds[level_key(level)] = {"lac": conformal.conformal_quantile(scores, level)}
        else:
            y = out.targets.reshape(out.f_mu.shape)
            scores = conformal.interval_scores(out.f_mu, out.var_total.double().sqrt(), y)
            thresholds[level_key(level)] = {
                "normalised": conformal.interval_thresholds(scores, level)
            }
    n = int(out.targets.shape[0])
    for key, values in thresholds.items():
        if any(math.isinf(q) for v in values.values() for q in (v if isinstance(v, list) else [v])):
            raise BadInputError(
                f"--conformal {key}: {n} calibration rows on {split!r} are too few for that "
                f"level (⌈(n + 1)·level⌉ > n); use a lower level or a larger split"
            )
    record = {
        "split": split,
        "n": n,
        "pred_type": pred_type.value,
        "link_approx": None if la.likelihood == Likelihood.REGRESSION else link_approx.value,
        "levels": thresholds,
    }
    # In place: `tune`'s result is the same dict as `la.tuning`, and both are written.
    la.tuning[KEY] = record
    return record


def calibration_for(la: Laplace, level: float, options: PredictOptions) -> dict[str, Any]:
    """The stored thresholds at `level`, refused (exit 2) when absent or made for another
    predictive than the one `options` asks for."""
    check_supported(la, "--conformal")
    record = (la.tuning or {}).get(KEY)
    key = level_key(level)
    if not record or key not in record.get("levels", {}):
        have = ", ".join(sorted((record or {}).get("levels", {}))) or "none"
        raise BadInputError(
            f"--conformal {key}: the posterior has no conformal calibration at that level "
            f"(calibrated: {have}); run 'laplace tune -p POSTERIOR --data SPEC --conformal {key}'"
        )
    pred_type, link_approx = default_pred_options(la, options)
    made = (record.get("pred_type"), record.get("link_approx"))
    wanted = (
        pred_type.value,
        None if la.likelihood == Likelihood.REGRESSION else link_approx.value,
    )
    if made != wanted:
        raise BadInputError(
            f"--conformal {key}: calibrated for pred_type {made[0]} / link_approx {made[1]}, "
            f"asked for {wanted[0]} / {wanted[1]}: drop --pred-type / --link-approx, or "
            "calibrate again with 'laplace tune --conformal' and those options"
        )
    return record["levels"][key]
