"""Split conformal calibration stored in the posterior file (`laplace tune --conformal 0.9`) and
its use by `laplace predict --conformal 0.9 [--conformal-score lac|aps]`.

`tune` runs the posterior's predictive (the tuned prior, the predictive options the posterior
records) over the calibration split and stores, per level, the thresholds of
`metrics.conformal.conformal_quantile` in ``tuning["conformal"]`` of the posterior's metadata
(docs/posterior-format.md):

* classification: LAC and APS on the Laplace probabilities. LAC: the set of a row is the
  classes with 1 − p_k ≤ q̂. APS is the randomised score of `metrics.conformal` (the one of the
  evaluate table): calibration draws one uniform per row from a generator seeded by the tune
  seed; `predict` draws one per row from `RowSeeds(seed, row index).uniform`, so a row's set
  does not depend on its batch. Either way `conformal_set`, 0/1 per class;
* binary / multi-label: per-label LAC, one q̂ per label; per label, `conformal_has_0` /
  `conformal_has_1` say whether value 0 / 1 is in its set;
* regression: the residual normalised by the predictive standard deviation, one q̂ per output;
  the interval is mean ∓ q̂·√var_total (`conformal_lower`, `conformal_upper`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

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


#: `predict --conformal-score` choices per likelihood → the key of the stored threshold (the
#: first choice is the default).
SCORES = {
    Likelihood.CLASSIFICATION: {"lac": "lac", "aps": "aps"},
    Likelihood.BINARY: {"lac": "label_lac"},
    Likelihood.REGRESSION: {"lac": "normalised"},  # one score: the normalised residual
}


def _level_thresholds(la: Laplace, out: Any, level: float, seed: int) -> dict[str, Any]:
    """The stored thresholds of one level (see the module doc)."""
    if la.likelihood == Likelihood.CLASSIFICATION:
        p, y = out.probs.double(), out.targets.reshape(-1).long()
        g = torch.Generator().manual_seed(seed)
        return {
            "lac": conformal.conformal_quantile(conformal.lac_scores(p, y), level),
            "aps": conformal.conformal_quantile(conformal.aps_scores(p, y, g), level),
        }
    if la.likelihood == Likelihood.BINARY:
        scores = conformal.label_lac_scores(out.probs.double(), out.targets)
        return {"label_lac": conformal.interval_thresholds(scores, level)}
    y = out.targets.reshape(out.f_mu.shape)
    scores = conformal.interval_scores(out.f_mu, out.var_total.double().sqrt(), y)
    return {"normalised": conformal.interval_thresholds(scores, level)}


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

    options = options or PredictOptions()
    pred_type, link_approx = default_pred_options(la, options)
    out = collect_outputs(la, loader, options, progress, f"conformal calibration on {split!r}")
    thresholds = {
        level_key(level): _level_thresholds(la, out, level, options.seed) for level in levels
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
        # The seed of the APS calibration draws (classification), for the record.
        **({"seed": options.seed} if la.likelihood == Likelihood.CLASSIFICATION else {}),
    }
    # In place: `tune`'s result is the same dict as `la.tuning`, and both are written.
    la.tuning[KEY] = record
    return record


def check_score(la: Laplace, score: str | None) -> str:
    """The stored key of `--conformal-score` (None: the likelihood's default), or exit 2."""
    choices = SCORES[la.likelihood]
    if score is None:
        return next(iter(choices.values()))
    if score in choices:
        return choices[score]
    raise BadInputError(
        f"--conformal-score {score}: a {la.likelihood.value} posterior has "
        f"{' or '.join(choices)} sets; use --conformal-score lac "
        "(APS is for multi-class classification)"
    )


def calibration_for(
    la: Laplace, level: float, options: PredictOptions, score: str | None = None
) -> dict[str, Any]:
    """The stored threshold(s) at `level` for `score` (`lac` or `aps`; None: `lac`) as
    ``{key: value}``, refused (exit 2) when absent or made for another predictive than the
    one `options` asks for."""
    stored = check_score(la, score)
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
    entry = record["levels"][key]
    if stored not in entry:
        raise BadInputError(
            f"--conformal {key}: the posterior has no {score or 'lac'} threshold at that level "
            f"(stored: {', '.join(sorted(entry))}; a posterior tuned by an older version has "
            f"no aps); calibrate again with 'laplace tune -p POSTERIOR --data SPEC "
            f"--conformal {key}', or use --conformal-score lac"
        )
    return {stored: entry[stored]}
