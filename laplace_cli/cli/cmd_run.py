"""`laplace run RECIPE.yaml`: run the stages a recipe lists, in order, into one output folder."""

from __future__ import annotations

from laplace_cli.cli.common import not_implemented, parse_overrides, require_file
from laplace_cli.cli.options import DebugOpt, JsonOpt, OutputDirOpt, QuietOpt, RecipeArg, SetOpt
from laplace_cli.errors import BadInputError

EXAMPLES = [
    "laplace run recipes/mnist_kron.yaml --output runs/mnist",
    "laplace run recipe.yaml --set fit.structure=diag --set tune.method=gridsearch",
]


def run(
    recipe: RecipeArg,
    output: OutputDirOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the stages RECIPE lists (fit, tune, evaluate, predict), in order, into one folder.

    --set overrides recipe values by dotted key; the recipe file's header says how to run it.
    """
    require_file(recipe, "RECIPE")
    parse_overrides(set_)
    if output is not None and output.exists() and not output.is_dir():
        raise BadInputError(f"{output}: exists and is not a folder (--output)")
    raise not_implemented("run")
