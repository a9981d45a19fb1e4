"""What each row, metric, setting and identity field of an evaluation report means.

The HTML report (:mod:`laplace_cli.pipeline.report_html`) ends with the entries of the terms it
shows; a test checks every term shown has one. Re-exported by :mod:`laplace_cli.pipeline.report`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["GLOSSARY", "glossary_entry", "glossary_html"]


GLOSSARY: dict[str, str] = {
    # Rows of the metrics table.
    "map": "Row: the trained network as it is (MAP weights): softmax / sigmoid of its outputs; "
    "for regression its outputs with the observation noise σ² as the variance.",
    "temperature": "Row: the temperature-scaling baseline, fitted on the validation split "
    "(classification: MAP logits divided by one temperature T chosen by NLL; regression: the MAP "
    "noise variance σ² multiplied by `variance_scale`). Absent without a validation split. As a "
    "setting: that baseline's fitted T.",
    "laplace": "Row: the Laplace posterior's predictive (see pred_type and link_approx).",
    # Metrics.
    "acc": "Accuracy: fraction of rows whose most probable class is the label (binary: outputs "
    "with p > 0.5 that match the target). Higher is better.",
    "nll": "Negative log-likelihood of the targets, mean per example (regression: Gaussian with "
    "the row's variance). Lower is better.",
    "ece": "Expected calibration error: over n_bins bins of top-label confidence (binning: "
    "equal-width by default), the |accuracy − confidence| gap weighted by the bin's share of "
    "rows. Lower is better.",
    "mce": "Maximum calibration error: the largest |accuracy − confidence| gap of a non-empty "
    "bin (of the bins used by ece).",
    "aece": "Adaptive ECE: ece with n_bins equal-count bins instead of equal-width ones.",
    "brier": "Brier score: squared distance between the predicted probabilities and the one-hot "
    "label, summed over classes, mean per example (binary: mean over outputs). Lower is better.",
    "rmse": "Root mean squared error of the predictive mean, in target units.",
    "mae": "Mean absolute error of the predictive mean, in target units.",
    "crps": "Continuous ranked probability score of the Gaussian predictive, mean per example, in "
    "target units. Lower is better.",
    "coverage_": "coverage_P: fraction of targets inside the central P % interval of the Gaussian "
    "predictive; P % is calibrated, less is over-confident, more under-confident.",
    "auroc": "Area under the ROC curve telling the --ood-data rows from the scored split by an "
    "uncertainty score (classification: 1 − max probability; regression: predictive variance, "
    "which the MAP row lacks, so 0.5 there). 0.5 is chance, 1 perfect.",
    "fpr95": "Fraction of in-distribution rows flagged as out-of-distribution at the threshold "
    "that flags 95 % of the --ood-data rows. Lower is better.",
    "aurc": "Area under the risk–coverage curve: rows kept from the most confident down "
    "(classification: by max probability, risk = error rate; regression: by predictive "
    "variance, risk = squared error), the mean risk over all coverages. Lower is better; the "
    "selective table has it for every score.",
    "auroc_": "auroc_NAME / fpr95_NAME: auroc / fpr95 against the OOD set NAME (--ood-data "
    "NAME=SPEC); the OOD table has AUPR-in / AUPR-out and every score.",
    "fpr95_": "fpr95_NAME: fpr95 against the OOD set NAME (--ood-data NAME=SPEC).",
    "conformal_level": "The coverage the split conformal sets / intervals were calibrated for "
    "on the validation split (--conformal-level).",
    # Settings.
    "split": "The dataset-spec split scored (the rows of the metrics table).",
    "val_split": "The split the temperature-scaling baseline was fitted on (none: no baseline).",
    "ood_split": "The split of the --ood-data spec used for auroc / fpr95.",
    "pred_type": "Laplace predictive: glm (the network linearised around the MAP weights, a "
    "Gaussian over the outputs) or nn (Monte Carlo over sampled weights).",
    "link_approx": "How the glm predictive's Gaussian over logits becomes probabilities (probit, "
    "bridge, bridge_norm, or mc sampling). Classification and binary only: regression has no "
    "link function, so none is used (n/a).",
    "n_samples": "Monte Carlo samples drawn per row (link_approx mc or pred_type nn; unused "
    "otherwise).",
    "likelihood": "classification (softmax), regression (Gaussian noise) or binary (independent "
    "sigmoids).",
    "structure": "Structure of the posterior covariance: diag, kron (K-FAC), full or lowrank.",
    "subset": "The weights with a posterior: all, last_layer or subnetwork (the others stay at "
    "their MAP values).",
    "prior_precision": "δ, the precision of the Gaussian prior on the weights (one value, or one "
    "per layer / parameter), as fitted or tuned. Larger δ: narrower posterior.",
    "sigma_noise": "σ, the observation-noise standard deviation of the regression likelihood, in "
    "target units (1 and unused for classification and binary).",
    "temperature_la": "The posterior's temperature T set at fit (--temperature): the curvature "
    "is scaled by 1/T, so T < 1 narrows and T > 1 widens the Laplace posterior. 1 is the "
    "plain Bayesian posterior. Not the baseline's temperature.",
    "variance_scale": "Regression baseline: the factor s on the MAP noise variance σ² fitted on "
    "the validation split (the temperature row uses variance s·σ²; s > 1: the MAP noise was too "
    "small).",
    "n_test": "Rows in the scored split.",
    "n_bins": "Number of calibration bins of ece, mce and aece (--bins).",
    "binning": "Bins of ece and mce: equal-width (k/B, (k+1)/B] or equal-mass (equal counts).",
    "bootstrap": "Bootstrap intervals (--bootstrap B): resamples, confidence level, seed, "
    "interval method (percentile, basic, prediction) and the stratification (by label for "
    "classification); the intervals are in the JSON report's intervals section.",
    # Identity.
    "posterior": "The posterior file evaluated.",
    "model": "The model checkpoint the posterior names (form, path, factory).",
    "fingerprint": "SHA-256 over the model's parameters; the posterior is refused for a model "
    "with another fingerprint.",
    "data": "The dataset spec the splits come from.",
    "ood_data": "The dataset spec of the out-of-distribution inputs (for auroc / fpr95).",
    "recipe": "The recipe that ran this evaluation.",
    "created": "When this report was written (UTC).",
    "data_hash": "SHA-256 (16 hex digits) of the evaluated split's data files: two runs with "
    "the same hash scored the same rows (compared with --baseline).",
    "laplace_cli": "The laplace-cli version that wrote this report.",
    "torch": "The PyTorch version used.",
}
"""What each row, metric, setting and identity field of an evaluation report means; the HTML
page shows the entries of the terms it contains. A key ending in ``_`` covers a family
(``coverage_`` for ``coverage_50``, ``coverage_95``, ...)."""


def glossary_entry(term: str) -> str | None:
    """The glossary text of a row, metric, setting or identity field, or None if it has none."""
    if term in GLOSSARY:
        return GLOSSARY[term]
    for key, text in GLOSSARY.items():
        if key.endswith("_") and term.startswith(key):
            return text
    return None


def glossary_html(terms: Sequence[str]) -> str:
    seen: dict[str, str] = {}
    for term in terms:
        text = glossary_entry(term)
        if text is not None and text not in seen.values():
            label = "coverage_P" if term.startswith("coverage_") else term
            seen[label] = text
    if not seen:
        return ""
    items = "".join(
        f"<dt><code>{html.escape(t)}</code></dt><dd>{html.escape(d)}</dd>" for t, d in seen.items()
    )
    return f"<h2>Glossary</h2><dl>{items}</dl>"
