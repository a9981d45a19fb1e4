"""The flag checks of `laplace fit` that apply to one subset or structure only (--rank,
--subnetwork, --last-layer-name; --structure gp's --context-points / --context; dense outputs'
--output-positions / --ignore-index), run before the model loads."""

from __future__ import annotations

from pathlib import Path

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import BadInputError


def check_subset_flags(
    subset: Subset,
    structure: Structure,
    rank: int | None,
    subnetwork: str | None,
    last_layer_name: str | None,
) -> None:
    """Check the flags that apply to one subset or structure only."""
    if rank is not None and structure != Structure.LOWRANK:
        raise BadInputError(
            f"--rank applies to --structure lowrank only, got --structure {structure}"
        )
    if subset == Subset.SUBNETWORK and subnetwork is None:
        from laplace_cli.masks.selectors import selector_choices

        raise BadInputError(
            "--subset subnetwork needs --subnetwork to say which parameters, e.g. "
            f"--subnetwork largest_magnitude:128; {selector_choices()}"
        )
    if subnetwork is not None:
        if subset != Subset.SUBNETWORK:
            raise BadInputError(
                f"--subnetwork applies to --subset subnetwork only, got --subset {subset}"
            )
        from laplace_cli.masks.selectors import parse_subnetwork

        parse_subnetwork(subnetwork)  # syntax and file checks before the model loads
    if last_layer_name is not None and subset != Subset.LAST_LAYER:
        raise BadInputError(
            f"--last-layer-name applies to --subset last_layer only, got --subset {subset}"
        )


def check_dense_flags(
    output_positions: str | None, ignore_index: int | None, structure: Structure
) -> None:
    """--output-positions takes independent or mean; --ignore-index needs it; no gp."""
    if output_positions is not None and output_positions not in ("independent", "mean"):
        raise BadInputError(
            f"--output-positions: expected independent or mean, got {output_positions!r}"
        )
    if ignore_index is not None and output_positions is None:
        raise BadInputError(
            "--ignore-index applies to dense outputs; add --output-positions independent "
            "(or mean), or drop --ignore-index"
        )
    if output_positions is not None and structure == Structure.GP:
        raise BadInputError(
            "--output-positions is not available with --structure gp; use kron, diag, full "
            "or lowrank"
        )


def check_gp_flags(
    structure: Structure,
    subset: Subset,
    context_points: int | None,
    context: str,
    prior: Path | None,
    checkpoint_every: int | None,
    resume: bool,
) -> None:
    """--context-points / --context go with --structure gp, which has no weight-space extras."""
    if structure != Structure.GP:
        if context_points is not None or context != "first":
            raise BadInputError(
                f"--context-points and --context apply to --structure gp, got --structure {structure}"
            )
        return
    if subset not in (Subset.ALL, Subset.LAST_LAYER):
        raise BadInputError(
            f"--structure gp is for --subset all or last_layer, got --subset {subset}"
        )
    if context_points is not None and context_points < 1:
        raise BadInputError(f"--context-points: expected a positive count, got {context_points}")
    if context not in ("first", "random"):
        raise BadInputError(f"--context: expected first or random, got {context!r}")
    for flag, given in (
        ("--prior", prior is not None),
        ("--checkpoint-every", bool(checkpoint_every)),
        ("--resume", resume),
    ):
        if given:
            raise BadInputError(
                f"{flag} is for weight-space structures; --structure gp fits in one pass "
                "(use --structure kron, diag or full)"
            )
