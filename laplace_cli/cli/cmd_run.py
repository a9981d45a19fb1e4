"""`laplace run RECIPE.yaml`: run the stages a recipe lists, in order, into one output folder."""

from __future__ import annotations

from pathlib import Path

from laplace_cli.cli.common import apply_threads, parse_overrides, progress_for, require_file
from laplace_cli.cli.options import (
    DebugOpt,
    JsonOpt,
    OutputDirOpt,
    QuietOpt,
    RecipeArg,
    SetOpt,
    ThreadsOpt,
)
from laplace_cli.core.errors import BadInputError

EXAMPLES = [
    "laplace run recipes/digits_mlp_kron.yaml --output runs/digits_mlp_kron",
    "laplace run recipe.yaml --set fit.structure=diag --set tune.method=gridsearch",
]


def run(
    recipe: RecipeArg,
    output: OutputDirOpt = None,
    set_: SetOpt = None,
    threads: ThreadsOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the stages RECIPE lists (fit, tune, evaluate, predict, doctor), in order, into one folder.

    --set overrides recipe values by dotted key; the recipe file's header says how to run it.
    """
    require_file(recipe, "RECIPE")
    overrides = parse_overrides(set_)
    if output is not None and output.exists() and not output.is_dir():
        raise BadInputError(f"{output}: exists and is not a folder (--output)")
    apply_threads(threads)

    from laplace_cli.cli.cmd_evaluate import raise_for_gates
    from laplace_cli.cli.console import emit_json, stderr_console
    from laplace_cli.cli.render import print_evaluation
    from laplace_cli.pipeline.recipes import load_recipe, run_recipe

    parsed = load_recipe(recipe, overrides)
    out_dir = output if output is not None else Path("runs") / recipe.stem
    result = run_recipe(parsed, out_dir, progress=progress_for(quiet))
    from laplace_cli.pipeline import distributed

    ctx = distributed.context()
    if ctx is not None and not ctx.is_main:
        return  # under torchrun, rank 0 reports (and checks the gates)
    summary = {
        "recipe": str(recipe),
        "output": str(out_dir),
        "stages": parsed.stages,
        "files": result.files,
        "fit_seconds": result.fit_seconds,
        "log_marginal_likelihood": result.log_marginal_likelihood,
        "tuning": result.tuning,
        "evaluation": result.evaluation.to_dict() if result.evaluation is not None else None,
        "doctor": result.doctor,
    }
    if result.notes:
        summary["notes"] = result.notes
    if not quiet:
        for note in result.notes:
            stderr_console.print(f"note: {note}", markup=False, highlight=False)
    if json_:
        emit_json(summary)
    elif not quiet:
        stderr_console.print(
            f"ran {', '.join(parsed.stages)} in {out_dir} "
            f"(fit {result.fit_seconds:.2f} s, log marginal likelihood {result.log_marginal_likelihood:.6g})"
        )
        if result.evaluation is not None:
            print_evaluation(result.evaluation, stderr_console)
        if result.doctor is not None:
            from types import SimpleNamespace

            from laplace_cli.cli.cmd_doctor import render_findings

            found = [SimpleNamespace(**f) for f in result.doctor["findings"]]
            render_findings(found, stderr_console)
        for kind, path in result.files.items():
            stderr_console.print(f"  {kind}: {path}")
    if result.evaluation is not None:
        raise_for_gates(result.evaluation)
    if result.doctor is not None and result.doctor["failed"]:
        from laplace_cli.core.errors import GateFailed

        raise GateFailed(
            f"doctor: a finding of severity {result.doctor['worst']} "
            f"(doctor.fail_on: {result.doctor['fail_on']})"
        )
