"""`laplace marglik`: the log marginal likelihood of fitted posteriors, for model selection."""

from __future__ import annotations

from laplace_cli.cli.common import require_file
from laplace_cli.cli.options import DebugOpt, JsonOpt, PosteriorsArg, QuietOpt
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "laplace marglik post.st",
    "laplace marglik small.st large.st --json",
]


def marglik(
    posteriors: PosteriorsArg,
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
    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.cli.render import print_marglik
    from laplace_cli.pipeline.stages import load_posterior

    entries = []
    for path in posteriors:
        lp = load_posterior(path, device="cpu")
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
            }
        )
    best = max(entries, key=lambda e: e["log_marginal_likelihood"])
    if json_:
        emit_json({"posteriors": entries, "best": best["posterior"]})
    elif not quiet:
        print_marglik(entries, stderr_console)
        if len(entries) > 1:
            stderr_console.print(f"best: {best['posterior']}")
