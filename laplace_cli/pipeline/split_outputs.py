"""One split's outputs: the MAP outputs, the Laplace predictive and the targets of every row.

Under torchrun each rank runs the model and the predictive over its contiguous shard of the
split (`distributed.shard_loader`); rank 0 gathers the per-row outputs in row order. Monte Carlo
predictives (`link_approx: mc`, `pred_type: nn`) draw from one stream per rank seeded alike, so
their estimates differ from one process's by Monte Carlo noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from laplace_cli.core.batches import split_batch, to_device
from laplace_cli.laplace.approximation import Laplace
from laplace_cli.pipeline import distributed
from laplace_cli.pipeline.predict_stage import PredictOptions, default_pred_options, predict_batch
from laplace_cli.pipeline.stage_support import (
    Progress,
    check_model_accepts,
    len_or_none,
    no_progress,
)
from laplace_cli.posterior.predictive import RowSeeds

__all__ = ["SplitOutputs", "collect_outputs"]


@dataclass
class SplitOutputs:
    """MAP outputs, Laplace predictive quantities and targets of a whole split, concatenated."""

    f_map: Tensor
    targets: Tensor
    probs: Tensor | None = None
    var_total: Tensor | None = None
    f_mu: Tensor | None = None
    #: The Laplace uncertainty scores of `Laplace.uncertainty`: `var` (logit / epistemic
    #: variance) and `mutual_info` (BALD, when samples were drawn); for `uncertainty_tables`.
    var: Tensor | None = None
    mutual_info: Tensor | None = None

    @classmethod
    def concat(cls, parts: list[SplitOutputs | None]) -> SplitOutputs:
        """The parts' rows one after the other (None: a part without rows, e.g. an empty shard)."""
        kept = [p for p in parts if p is not None]
        if not kept:
            raise ValueError("empty split")
        if len(kept) == 1:
            return kept[0]

        def cat(name: str) -> Tensor | None:
            xs = [getattr(p, name) for p in kept]
            return torch.cat(xs) if xs[0] is not None else None

        names = ("f_map", "targets", "probs", "var_total", "f_mu", "var", "mutual_info")
        return cls(*(cat(n) for n in names))


def collect_outputs(
    la: Laplace,
    loader: Any,
    options: PredictOptions,
    progress: Progress = no_progress,
    what: str = "",
    source: str = "",
    ctx: distributed.DistContext | None = None,
) -> SplitOutputs | None:
    """Run the MAP model and the Laplace predictive over a loader.

    `source` names the data in errors (default: `what`); the first batch is checked against
    the model (`pipeline.check_model_accepts`). With `ctx` (a distributed run) each rank runs
    its contiguous shard of the loader and rank 0 gets the whole split's outputs in row order;
    the other ranks get None."""
    # Monte Carlo draws are seeded per row (`RowSeeds`) from the row's index in the split, so
    # a row's scores do not depend on the batch size or on the number of processes.
    whole = getattr(loader, "dataset", None)
    loader = distributed.shard_loader(loader, ctx)  # refuses an iterable dataset under ctx
    row = distributed.shard_range(len(whole), ctx.rank, ctx.world_size)[0] if ctx else 0
    pred_type, link_approx = default_pred_options(la, options)
    f_map, ys, probs, var_total, f_mu, var, mi = [], [], [], [], [], [], []
    # One forward pass per batch where the subset can share it (last layer: the MAP outputs,
    # the model check and the predictive all read the same features).
    with la.subset.reuse_forward():
        for i, batch in enumerate(progress(loader, len_or_none(loader), what)):
            x, y = split_batch(batch)
            # dict (text) batches too; a bfloat16 / float16 model takes its own dtype
            x = to_device(x, la.device, getattr(la, "model_dtype", la.dtype))
            if i == 0:
                check_model_accepts(la, x, source or what)
            f_map.append(la.subset.output(x).to(la.dtype).cpu())
            generator = RowSeeds(options.seed, row)
            row += len(y)
            pred = predict_batch(la, x, pred_type, link_approx, options.n_samples, generator)
            ys.append(y.cpu())
            if "probs" in pred:
                probs.append(pred["probs"].cpu())
            if "var_total" in pred:
                var_total.append(pred["var_total"].cpu())
                f_mu.append(pred["mean"].cpu())
            if "var" in pred:
                var.append(pred["var"].cpu())
            if "mutual_info" in pred:
                mi.append(pred["mutual_info"].cpu())
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    mine = (
        SplitOutputs(cat(f_map), cat(ys), cat(probs), cat(var_total), cat(f_mu), cat(var), cat(mi))
        if ys
        else None
    )
    parts = distributed.gather_to_main(mine, ctx)
    return None if parts is None else SplitOutputs.concat(parts)
