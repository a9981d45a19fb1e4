"""`laplace fit`'s one library call: the posterior of `options.structure`, fitted and written.

Structure "gp" is function-space Laplace on `options.context_points` context rows chosen by
`options.context` (`pipeline.gp_stage`); every other structure is the weight-space fit
(`pipeline.fit_stage`). Both write the posterior to `output` and remove the fit's checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from laplace_cli.core.enums import Structure
from laplace_cli.pipeline.fit_stage import FitOptions, FitResult, fit_and_save
from laplace_cli.pipeline.gp_stage import fit_gp_and_save
from laplace_cli.pipeline.model_loading import ModelSpec
from laplace_cli.pipeline.stage_support import Progress, no_progress

__all__ = ["fit_posterior"]


def fit_posterior(
    model_spec: ModelSpec,
    data_path: Path,
    options: FitOptions,
    output: str | Path,
    *,
    device: str = "auto",
    dtype: str | None = None,
    progress: Progress = no_progress,
) -> FitResult:
    """Fit the posterior `options` describe and write it to `output`; every rank returns its
    `FitResult` under torchrun (rank 0 writes)."""
    if options.structure == Structure.GP.value:
        return fit_gp_and_save(
            model_spec,
            data_path,
            options,
            output,
            options.context_points,
            options.context,
            device=device,
            dtype=dtype,
            progress=progress,
        )
    return fit_and_save(
        model_spec, data_path, options, output, device=device, dtype=dtype, progress=progress
    )
