"""Posterior file metadata, per-key checks of the optional structures: K-FAC `blocks`, the
dense-output keys, the function-space `gp` object and `tuning.conformal`'s thresholds; each
returns its problems as one-line messages.

Split out of `laplace_cli.io.posterior_metadata`, whose `check_metadata` calls them. The layout is
specified in `docs/posterior-format.md`.
"""

from __future__ import annotations

import math
from typing import Any

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.io.posterior_schema import BLOCK_KINDS
from laplace_cli.io.safetensors_header import clip, is_int


def dense_problems(meta: dict[str, Any]) -> list[str]:
    """`output_positions`, `ignore_index` and `output_shape` of a dense-output posterior
    (docs/dense-outputs.md): all three together, the shape (C, *S) matching `n_outputs`."""
    dense_keys = [k for k in ("output_positions", "ignore_index", "output_shape") if k in meta]
    if not dense_keys:
        return []
    if "output_positions" not in meta:
        return [f"metadata {', '.join(map(repr, dense_keys))} need(s) 'output_positions'"]
    problems = []
    mode = meta["output_positions"]
    if mode not in ("independent", "mean"):
        problems.append(
            f"metadata 'output_positions' must be one of independent|mean, got {clip(mode)}"
        )
    if meta.get("structure") == Structure.GP.value:
        problems.append("metadata 'output_positions' cannot be combined with structure 'gp'")
    ignore = meta.get("ignore_index", -100)
    if not is_int(ignore):
        problems.append(f"metadata 'ignore_index' must be an integer, got {clip(ignore)}")
    shape = meta.get("output_shape")
    if not (
        isinstance(shape, list) and len(shape) >= 2 and all(is_int(v) and v >= 1 for v in shape)
    ):
        problems.append(
            "metadata 'output_shape' must be a list (C, *positions) of at least two positive "
            f"integers, got {clip(shape)}"
        )
    elif is_int(meta.get("n_outputs")) and math.prod(shape) != meta["n_outputs"]:
        problems.append(
            f"metadata 'output_shape' {shape} has {math.prod(shape)} outputs but n_outputs is "
            f"{meta['n_outputs']}"
        )
    return problems


def gp_problems(meta: dict[str, Any]) -> list[str]:
    """The `gp` object of a function-space posterior (docs/posterior-format.md)."""
    if meta.get("subset") not in (Subset.ALL.value, Subset.LAST_LAYER.value):
        return [f"structure 'gp' is for subsets all and last_layer, got {clip(meta.get('subset'))}"]
    g = meta["gp"]
    if not isinstance(g, dict):
        return [f"metadata 'gp' must be a JSON object, got {clip(g)}"]
    problems = []
    m = g.get("n_context")
    if not (is_int(m) and m >= 1) or (is_int(meta.get("n_data")) and m > meta["n_data"]):
        problems.append(f"metadata 'gp.n_context' must be an integer in 1..n_data, got {clip(m)}")
    if g.get("context") not in ("first", "random"):
        problems.append(
            f"metadata 'gp.context' must be 'first' or 'random', got {clip(g.get('context'))}"
        )
    if not is_int(g.get("seed")):
        problems.append(f"metadata 'gp.seed' must be an integer, got {clip(g.get('seed'))}")
    if g.get("output_hessian") not in ("diag", "full"):
        problems.append(
            f"metadata 'gp.output_hessian' must be 'diag' or 'full', got {clip(g.get('output_hessian'))}"
        )
    if not isinstance(g.get("diagonal_kernel"), bool):
        problems.append(
            f"metadata 'gp.diagonal_kernel' must be true or false, got {clip(g.get('diagonal_kernel'))}"
        )
    keys = g.get("input_keys")
    if keys is not None and not (
        isinstance(keys, list) and keys and all(isinstance(k, str) and k for k in keys)
    ):
        problems.append(
            f"metadata 'gp.input_keys' must be null or a list of names, got {clip(keys)}"
        )
    unknown = set(g) - {
        "n_context",
        "context",
        "seed",
        "n_subset",
        "output_hessian",
        "diagonal_kernel",
        "input_keys",
    }
    if unknown:
        problems.append(f"unknown key(s) in metadata 'gp': {', '.join(sorted(unknown))}")
    return problems


#: The thresholds a `tuning.conformal` level holds per likelihood: (required, optional) keys.
#: Scores are probabilities' complements or APS masses (in [0, 1]) or normalised residuals (≥ 0).
_CONFORMAL_KEYS = {
    "classification": ({"lac"}, {"aps"}),  # posteriors tuned before APS was stored have no aps
    "binary": ({"label_lac"}, set()),
    "regression": ({"normalised"}, set()),
}
_CONFORMAL_LISTS = {"label_lac", "normalised"}  # one threshold per label / output


def conformal_problems(record: Any, meta: dict[str, Any] | None = None) -> list[str]:
    """`tuning.conformal` (`laplace tune --conformal`): levels in (0, 1) mapping to the
    thresholds of the posterior's likelihood (classification: `lac` and `aps` in [0, 1];
    binary: `label_lac`, one in [0, 1] per output; regression: `normalised`, one ≥ 0 per
    output), each finite (docs/posterior-format.md). A tampered value would silently change
    every set `predict --conformal` emits, so anything else is refused."""
    levels = record.get("levels") if isinstance(record, dict) else None
    if not isinstance(levels, dict) or not levels:
        return [
            f"metadata 'tuning.conformal' must hold a non-empty 'levels' object, got {clip(record)}"
        ]
    meta = meta or {}
    kind = meta.get("likelihood")
    required, optional = _CONFORMAL_KEYS.get(kind, (set(), {"lac", "aps", *_CONFORMAL_LISTS}))
    n_out = meta.get("n_outputs") if is_int(meta.get("n_outputs")) else None
    expected = (
        f"{' and '.join(sorted(required))}{' (and aps)' if optional and required else ''}"
        if required
        else "lac, aps, label_lac or normalised"
    )
    problems = []
    for key, value in levels.items():
        try:
            ok_level = 0.0 < float(key) < 1.0
        except ValueError:
            ok_level = False
        ok_value = (
            isinstance(value, dict)
            and required <= set(value)
            and set(value) <= required | optional
            and bool(value)
            and all(_conformal_value_ok(k, v, n_out) for k, v in value.items())
        )
        if not (ok_level and ok_value):
            problems.append(
                f"metadata 'tuning.conformal.levels' entry {key!r} must be a level in (0, 1) with "
                f"finite {expected} threshold(s) for a {kind or 'posterior'} posterior "
                f"(probabilities' scores in [0, 1], one per output for lists), got {clip(value)}"
            )
    return problems


def _conformal_value_ok(key: str, value: Any, n_out: int | None) -> bool:
    """One stored threshold (or list of them) is a finite number in its score's range."""
    if key in _CONFORMAL_LISTS:
        if not (isinstance(value, list) and value) or (n_out is not None and len(value) != n_out):
            return False
        values = value
    else:
        values = [value]
    upper = math.inf if key == "normalised" else 1.0 + 1e-9  # float rounding of 1 − p, masses
    return all(is_number(q) and finite(q) and 0.0 <= q <= upper for q in values)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def finite(x: int | float) -> bool:
    # math.isfinite overflows on huge ints (JSON allows them); an int is always finite.
    return isinstance(x, int) or math.isfinite(x)


def is_shape(s: Any) -> bool:
    return isinstance(s, list) and all(is_int(d) and d >= 0 for d in s)


def check_blocks(blocks: Any, names: Any, shapes: Any) -> list[str]:
    """K-FAC blocks: one per parameter tensor, in order, with a kind that fits its shape."""
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and isinstance(b.get("name"), str) and is_shape(b.get("shape"))
        for b in blocks
    ):
        return [
            f"metadata 'blocks' must be a list of {{name, kind, shape}} objects, got {clip(blocks)}"
        ]
    problems: list[str] = []
    block_names = [b["name"] for b in blocks]
    if isinstance(names, list) and block_names != names:
        problems.append(
            f"metadata 'blocks' names {block_names} do not match param_names {names} (one block per parameter tensor, same order)"
        )
    for i, b in enumerate(blocks):
        kind, shape = b.get("kind"), b["shape"]
        if kind not in BLOCK_KINDS:
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): kind must be one of {'|'.join(BLOCK_KINDS)}, got {clip(kind)}"
            )
        elif kind == "kron" and (len(shape) < 2 or shape[0] == 0):
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): kind 'kron' needs a weight of shape [d_out, d_in, ...], got {shape}"
            )
        elif kind == "kron_bias" and len(shape) != 1:
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): kind 'kron_bias' needs a bias of shape [d_out], got {shape}"
            )
        if isinstance(shapes, list) and i < len(shapes) and shapes[i] != shape:
            problems.append(
                f"metadata 'blocks'[{i}] ({b['name']}): shape {shape} differs from param_shapes[{i}] = {shapes[i]}"
            )
    return problems
