"""`laplace marglik`: the log marginal likelihood of fitted posteriors, for model selection."""

from __future__ import annotations

from laplace_cli.cli.common import not_implemented, require_file
from laplace_cli.cli.options import DebugOpt, JsonOpt, PosteriorsArg, QuietOpt
from laplace_cli.errors import BadInputError

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

    Computed from the file alone (loss at the MAP, curvature, prior), at the stored prior
    precision, noise and temperature; no model or data is loaded.
    """
    problems = []
    for path in posteriors:  # report every missing file at once
        try:
            require_file(path, "POSTERIORS")
        except BadInputError as exc:
            problems.append(str(exc))
    if problems:
        raise BadInputError("\n".join(problems))
    raise not_implemented("marglik")
