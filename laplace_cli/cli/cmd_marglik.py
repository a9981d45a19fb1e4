"""`laplace marglik`: the log marginal likelihood of fitted posteriors, for model selection."""

from __future__ import annotations

from laplace_cli.cli.common import apply_threads, model_override, require_file
from laplace_cli.cli.options import (
    DebugOpt,
    JsonOpt,
    ModelFactoryOpt,
    ModelKwargsOpt,
    ModelOverrideOpt,
    PosteriorsArg,
    QuietOpt,
    ThreadsOpt,
    TrustCheckpointOpt,
)
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "laplace marglik post.st",
    "laplace marglik small.st large.st --json",
]


def marglik(
    posteriors: PosteriorsArg,
    model: ModelOverrideOpt = None,
    model_factory: ModelFactoryOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_checkpoint: TrustCheckpointOpt = False,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print the log marginal likelihood of each posterior (higher is better).

    Computed at the stored prior precision, noise and temperature from the loss at the MAP and
    the curvature; no data is read. Each posterior's model is loaded to check its fingerprint.
    """
    problems = []
    for path in posteriors:  # report every missing file at once
        try:
            require_file(path, "POSTERIORS")
        except BadInputError as exc:
            problems.append(str(exc))
    if problems:
        raise BadInputError("\n".join(problems))
    spec = model_override(model, model_factory, model_kwargs, trust_checkpoint)
    apply_threads(threads)
    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.cli.render import print_marglik
    from laplace_cli.pipeline.model_loading import load_posterior

    entries = []
    for path in posteriors:
        lp = load_posterior(
            path, model_override=spec, trust_checkpoint=trust_checkpoint, device="cpu"
        )
        la = lp.la
        entries.append(
            {
                "posterior": str(path),
                "structure": la.hessian_structure.value,
                "subset": la.subset_of_weights.value,
                "likelihood": la.likelihood.value,
                "n_params": la.n_params,
                "n_data": la.n_data,
                "log_marginal_likelihood": float(la.log_marginal_likelihood()),
                # The method that tuned the prior (None: the prior the fit was given).
                "tuned": (la.tuning or {}).get("method"),
            }
        )
    # An untuned posterior's evidence is taken at the prior it was fitted with, not at its
    # best: ranking it against tuned ones would compare priors, not models. So the tuned and
    # the untuned are ranked apart; "best" is the best tuned one when any is tuned.
    tuned = [e for e in entries if e["tuned"]]
    untuned = [e for e in entries if not e["tuned"]]

    def top(group: list[dict]) -> dict | None:
        return max(group, key=lambda e: e["log_marginal_likelihood"]) if group else None

    best, best_untuned = top(tuned or untuned), top(untuned) if tuned else None
    if json_:
        doc = {"posteriors": entries, "best": best["posterior"]}
        if best_untuned is not None:
            doc["best_untuned"] = best_untuned["posterior"]
        emit_json(doc)
    elif not quiet:
        print_marglik(entries, stderr_console)
        if best_untuned is not None:
            stderr_console.print(
                f"best tuned: {best['posterior']}; best untuned: {best_untuned['posterior']} "
                "(ranked apart: an untuned posterior's evidence is at its fitted prior "
                "precision; tune it to compare)",
                markup=False,
            )
        elif len(entries) > 1:
            stderr_console.print(f"best: {best['posterior']}", markup=False)
