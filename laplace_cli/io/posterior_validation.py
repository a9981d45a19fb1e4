"""Posterior layout checks: the tensors a posterior's metadata calls for, checked by name, dtype,
shape and finiteness; `validate_posterior` runs them with the metadata checks.

Split out of `laplace_cli.io.posterior_file`, which re-exports `validate_posterior`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from laplace_cli.core.enums import Structure, Subset
from laplace_cli.core.errors import BadInputError, LaplaceCliError
from laplace_cli.io.posterior_metadata import (
    check_format,
    check_metadata,
    decode_metadata,
    encode_metadata,
    with_defaults,
    with_hint,
)
from laplace_cli.io.safetensors_header import bad_file, join_problems

_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
#: The context inputs of a gp posterior (dict inputs: `gp.context_inputs.<key>`).
GP_INPUTS = "gp.context_inputs"


def _expected_tensors(
    meta: dict[str, Any],
) -> tuple[dict[str, list[tuple[int, ...]]], set[str], list[tuple[str, str]]]:
    """The tensors this metadata calls for.

    P = Σ numel(param_shapes) for every subset (for subnetwork the shapes are the numbers of
    selected entries per tensor, so P is also the length of `subnetwork.indices`).

    Returns:
        Tensor name -> allowed shapes (empty: checked elsewhere); the names that may be
        absent; and pairs of alternatives of which exactly one must be present.
    """
    shapes = [tuple(s) for s in meta["param_shapes"]]
    g = len(shapes)
    p = sum(math.prod(s) for s in shapes)
    expected: dict[str, list[tuple[int, ...]]] = {
        "mean": [(p,)],
        "prior.precision": _unique([(1,), (g,), (p,)]),
        "prior.mean": _unique([(1,), (p,)]),
    }
    optional: set[str] = set()
    if meta["subset"] == Subset.SUBNETWORK:
        expected["subnetwork.indices"] = [(p,)]
    one_of: list[tuple[str, str]] = []
    c = meta["n_outputs"]
    structure = meta["structure"]
    if structure == Structure.DIAG:
        # Per-output curvature (C, P) when regression outputs have their own noise, so that
        # each output's share can be scaled by its own 1/sigma².
        expected["diag.curvature"] = [(p,)]
        expected["diag.curvature_per_output"] = [(c, p)]
        expected["diag.prior_curvature"] = [(p,)]
        optional |= {"diag.curvature", "diag.curvature_per_output", "diag.prior_curvature"}
        one_of.append(("diag.curvature", "diag.curvature_per_output"))
    elif structure == Structure.FULL:
        expected["full.curvature"] = [(p, p)]
        expected["full.curvature_per_output"] = [(c, p, p)]
        expected["full.prior_curvature"] = [(p, p)]
        optional |= {"full.curvature", "full.curvature_per_output", "full.prior_curvature"}
        one_of.append(("full.curvature", "full.curvature_per_output"))
    elif structure == Structure.LOWRANK:
        expected["lowrank.U"] = []  # (P, k): k is free, checked against eigvals below
        expected["lowrank.eigvals"] = []
        expected["lowrank.diag"] = [(p,)]
        optional.add("lowrank.diag")
    elif structure == Structure.KRON:
        for b in meta["blocks"]:
            name, shape = b["name"], tuple(b["shape"])
            if b["kind"] in ("kron", "kron_bias"):
                d_out = shape[0]
                expected[f"kron.{name}.B.eigvals"] = [(d_out,)]
                expected[f"kron.{name}.B.eigvecs"] = [(d_out, d_out)]
            if b["kind"] == "kron":
                d_in = math.prod(shape) // shape[0]  # conv weights: d_in = C_in * kh * kw
                expected[f"kron.{name}.A.eigvals"] = [(d_in,)]
                expected[f"kron.{name}.A.eigvecs"] = [(d_in, d_in)]
            elif b["kind"] == "diag":
                expected[f"kron.{name}.diag"] = [(math.prod(shape),)]
    elif structure == Structure.GP:
        _expected_gp(meta, expected)
    return expected, optional, one_of


def _expected_gp(meta: dict[str, Any], expected: dict[str, list[tuple[int, ...]]]) -> None:
    """Function-space Laplace: the kernel system on M context points and their inputs."""
    g, c = meta["gp"], meta["n_outputs"]
    m = g["n_context"]
    expected["prior.precision"] = [(1,)]  # one scalar δ: the kernel is J Jᵀ / δ
    if g["diagonal_kernel"]:
        expected["gp.K"] = [(c, m, m)]
        expected["gp.S"] = [(m, c)]
    else:
        expected["gp.K"] = [(m * c, m * c)]
        expected["gp.S"] = [(m, c)] if g["output_hessian"] == "diag" else [(m, c, c)]
    expected["gp.mu"] = [(m, c)]
    # The M context inputs (training rows): any shape with M rows, checked in `_check_gp_inputs`.
    for key in g.get("input_keys") or [None]:
        expected[GP_INPUTS if key is None else f"{GP_INPUTS}.{key}"] = []


def _unique(items: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    return list(dict.fromkeys(items))


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_tensors(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    source: object,
    nonfinite: type[LaplaceCliError],
) -> None:
    """Names, dtypes and shapes against the layout; index range; then finiteness."""
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise bad_file(
                source, f"tensors must map names to torch tensors, got {name!r}: {type(t).__name__}"
            )
    expected, optional, one_of = _expected_tensors(meta)

    problems: list[str] = []
    _check_tensor_names(tensors, meta, expected, optional, one_of, problems)
    _check_tensor_layouts(tensors, expected, problems)
    _check_subnetwork_indices(tensors, problems)
    if meta["structure"] == Structure.LOWRANK:
        _check_lowrank_shapes(tensors, problems)
    if meta["structure"] == Structure.GP:
        _check_gp_inputs(tensors, meta["gp"]["n_context"], problems)
    join_problems(source, problems, BadInputError)

    bad = [
        n
        for n, t in tensors.items()
        if t.dtype in _FLOAT_DTYPES and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise nonfinite(
            f"{source}: non-finite values (NaN or Inf) in tensor(s) {', '.join(repr(b) for b in bad)}"
        )


def _check_tensor_names(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    expected: dict[str, list[tuple[int, ...]]],
    optional: set[str],
    one_of: list[tuple[str, str]],
    problems: list[str],
) -> None:
    """Every expected tensor is present (one of each pair of alternatives), none unknown."""
    missing = [n for n in expected if n not in tensors and n not in optional]
    for a, b in one_of:
        if a not in tensors and b not in tensors:
            missing.append(f"{a} (or {b})")
        elif a in tensors and b in tensors:
            problems.append(f"tensors {a!r} and {b!r} are alternatives; store only one")
    if missing:
        problems.append(f"missing tensor(s): {', '.join(missing)}")
    unknown = [n for n in tensors if n not in expected]
    if unknown:
        problems.append(
            f"unknown tensor(s) for structure {meta['structure']} / subset {meta['subset']}: "
            + ", ".join(with_hint(n, expected) for n in unknown)
        )


def _check_tensor_layouts(
    tensors: dict[str, torch.Tensor],
    expected: dict[str, list[tuple[int, ...]]],
    problems: list[str],
) -> None:
    """Each present tensor's dtype and shape are those of the layout."""
    for name, allowed in expected.items():
        t = tensors.get(name)
        if t is None:
            continue
        if name.startswith(GP_INPUTS):
            pass  # inputs may be integer (token ids) as well as floating point
        elif name == "subnetwork.indices":
            if t.dtype != torch.int64:
                problems.append(
                    f"tensor {name!r} must be int64, got {str(t.dtype).removeprefix('torch.')}"
                )
                continue
        elif t.dtype not in _FLOAT_DTYPES:
            problems.append(
                f"tensor {name!r} must be floating point, got {str(t.dtype).removeprefix('torch.')}"
            )
            continue
        got = tuple(t.shape)
        if allowed and got not in allowed:
            want = " or ".join(_fmt_shape(s) for s in allowed)
            problems.append(f"tensor {name!r} has shape {_fmt_shape(got)}, expected {want}")


def _check_subnetwork_indices(tensors: dict[str, torch.Tensor], problems: list[str]) -> None:
    """Subnetwork indices are non-empty, non-negative and strictly increasing."""
    indices = tensors.get("subnetwork.indices")
    if indices is not None and indices.dtype == torch.int64 and indices.dim() == 1:
        # Positions in the model's flattened trainable parameters: the upper bound is the
        # model's parameter count, checked when the model is loaded, not knowable here.
        if indices.numel() == 0:
            problems.append("tensor 'subnetwork.indices' is empty")
        elif int(indices.min()) < 0:
            problems.append(
                f"tensor 'subnetwork.indices' has negative entries (min {int(indices.min())})"
            )
        elif indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
            problems.append(
                "tensor 'subnetwork.indices' must be strictly increasing (sorted, no repeats)"
            )


def _check_lowrank_shapes(tensors: dict[str, torch.Tensor], problems: list[str]) -> None:
    """The low-rank factor U is (P, k) and its eigenvalues (k,)."""
    p = int(tensors["mean"].numel()) if "mean" in tensors else None
    u, ev = tensors.get("lowrank.U"), tensors.get("lowrank.eigvals")
    if u is not None and (u.dim() != 2 or (p is not None and u.shape[0] != p)):
        problems.append(
            f"tensor 'lowrank.U' has shape {_fmt_shape(tuple(u.shape))}, expected (P, k) with P = {p}"
        )
    elif u is not None and ev is not None and tuple(ev.shape) != (u.shape[1],):
        problems.append(
            f"tensor 'lowrank.eigvals' has shape {_fmt_shape(tuple(ev.shape))}, expected ({u.shape[1]},) to match lowrank.U's k"
        )


def _check_gp_inputs(tensors: dict[str, torch.Tensor], m: int, problems: list[str]) -> None:
    """Each context-input tensor has one row per context point."""
    for name, t in tensors.items():
        if name.startswith(GP_INPUTS) and (t.dim() == 0 or t.shape[0] != m):
            problems.append(
                f"tensor {name!r} has shape {_fmt_shape(tuple(t.shape))}, expected {m} rows "
                "(metadata gp.n_context)"
            )


def validate_posterior(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    source: object = "<memory>",
    *,
    nonfinite: type[LaplaceCliError] = BadInputError,
) -> dict[str, Any]:
    """Check a posterior state against the format-version-1 layout.

    The same checks run when reading a file and when the engine builds state in memory: the
    metadata is normalised exactly as a write-then-read would (non-strings through JSON),
    `format`, `format_version`, `library_version` and `created` are filled in unless given, then
    every key and tensor is checked (see docs/posterior-format.md).

    Args:
        tensors: Tensor name -> tensor.
        metadata: Metadata as Python values (strings, numbers, lists, dicts, enum members).
        source: What to name in error messages (a file path, or "<memory>").
        nonfinite: Error class for NaN/Inf tensors or metadata numbers: `BadInputError` for a
            file a user gave us (exit 2), `NumericalError` for state we just computed (exit 3).

    Returns:
        The normalised metadata: JSON keys as Python values, enum keys as enum members.

    Raises:
        BadInputError: Wrong format or version, missing / unknown / malformed keys, missing,
            unknown or misshapen tensors. All problems of one kind are listed together.
        LaplaceCliError: `nonfinite` for NaN/Inf values.
    """
    meta = decode_metadata(encode_metadata(with_defaults(metadata)), source)
    return validate_decoded(tensors, meta, source, nonfinite)


def validate_decoded(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    source: object,
    nonfinite: type[LaplaceCliError],
) -> dict[str, Any]:
    check_format(meta, source)
    meta = check_metadata(meta, source, nonfinite)
    _check_tensors(tensors, meta, source, nonfinite)
    return meta
