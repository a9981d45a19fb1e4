"""The `predict` stage of a recipe (`pipeline.recipes`): a split's predictions streamed to
`predictions.<format>`, the ranks of a distributed run sharing the chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laplace_cli.pipeline.recipe_validation import Recipe

__all__ = ["predict_recipe_split"]


def predict_recipe_split(recipe: Recipe, out: Path, la: Any, ctx: Any, progress: Any) -> str | None:
    """Predict a split (the ranks share the chunks); rank 0 writes `predictions.<format>` (or the
    dense `.npz`) and gets its path, the other ranks None."""
    from laplace_cli.core.enums import Likelihood
    from laplace_cli.io.datasets import load_dataset_spec
    from laplace_cli.io.writers import RowWriter
    from laplace_cli.pipeline.predict_stage import PredictOptions, loader_chunks, number_chunks
    from laplace_cli.pipeline.prediction_stream import predicted_batches
    from laplace_cli.pipeline.stage_support import split_loader

    cfg = recipe.section("predict")
    if getattr(la, "output_positions", None) is not None:
        from laplace_cli.pipeline.dense_predictions import predict_split_npz

        return predict_split_npz(recipe, cfg, out, la, ctx, progress)
    fmt = cfg.get("format", "csv")
    if fmt == "npz":
        from laplace_cli.core.errors import BadInputError

        raise BadInputError(
            f"{recipe.source}: predict.format: npz is for dense outputs (output_positions); "
            "use csv or jsonl"
        )
    path = out / cfg.get("output", f"predictions.{fmt}")
    opts = PredictOptions(
        pred_type=cfg.get("pred_type"),
        link_approx=cfg.get("link_approx"),
        n_samples=int(cfg.get("samples", 100)),
        interval=float(cfg.get("interval", 0.95)),
        seed=recipe.seed,
    )
    loader = split_loader(
        load_dataset_spec(recipe.data),
        cfg.get("split", "test"),
        la.likelihood,
        recipe.batch_size,
        require_labels=False,  # predictions need inputs only
    )
    single = la.likelihood == Likelihood.REGRESSION and (la.n_outputs or 1) == 1
    source = f"{recipe.data}: split {cfg.get('split', 'test')!r}"
    # Chunk i on rank i mod W; rank 0 gathers them round by round (input order), as
    # `laplace predict` does. Numbered first: each row keeps its index, which seeds its Monte
    # Carlo draws.
    numbered = number_chunks(loader_chunks(loader))
    rows = predicted_batches(la, numbered, opts, source, ctx)
    if rows is None:  # a rank other than 0: it took part in the gathering to the end
        return None
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = RowWriter(stream, fmt, cfg.get("columns"), single_output=single)
        for batch in progress(rows, len(loader), "predict"):
            writer.write_batch(batch)
    return str(path)
