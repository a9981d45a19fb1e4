"""Recipe validation: read a recipe, apply ``--set`` overrides, check every key at once.

The keys come from :mod:`laplace_cli.io.spec_schema` (which renders ``docs/recipes.md``);
running a validated :class:`Recipe` is :mod:`laplace_cli.pipeline.recipes`, which re-exports
these names.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.core.errors import BadInputError
from laplace_cli.core.paths import user_path
from laplace_cli.io.spec_schema import RECIPE_SECTIONS, RECIPE_STAGES

__all__ = [
    "SCHEMA",
    "STAGES",
    "Recipe",
    "apply_overrides",
    "did_you_mean",
    "load_recipe",
    "validate_recipe",
]

STAGES = RECIPE_STAGES

# key -> (kind, choices), per section ("" is the top level): derived from the declarative
# schema (laplace_cli.io.spec_schema), which also renders docs/recipes.md. Add keys there.
SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    section.path: {key.name: (key.kind, key.choices) for key in section.keys}
    for section in RECIPE_SECTIONS
}


@dataclass
class Recipe:
    """A validated recipe: plain dicts per section, paths resolved."""

    source: str
    base_dir: Path
    model: dict[str, Any]
    data: Path
    stages: list[str]
    device: str = "auto"
    dtype: str | None = None
    seed: int = 0
    batch_size: int | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.sections.get(name) or {})


def did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`fit.structure`) in a copy of the raw recipe."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _check_value(kind: str, choices: Any, value: Any, where: str, errors: list[str]) -> None:
    ok = {
        "str": isinstance(value, str),
        "path": isinstance(value, str),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
        "str|list": isinstance(value, (str, list)),
        "path|dict": isinstance(value, str)
        or (
            isinstance(value, dict)
            and bool(value)
            and all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items())
        ),
    }[kind]
    if value is None:
        return
    if not ok:
        expected = {
            "str": "a string",
            "path": "a path",
            "float": "a number",
            "int": "an integer",
            "bool": "true or false",
            "list": "a list",
            "dict": "a mapping",
            "str|list": "a string or a list",
            "path|dict": "a path or a mapping of name to path (e.g. {rot: rot.yaml})",
        }[kind]
        errors.append(f"{where}: expected {expected}, got {value!r}")
        return
    if choices is not None:
        values = value if kind == "list" else [value]
        for v in values:
            if v not in choices:
                errors.append(
                    f"{where}: expected one of {', '.join(choices)}, got {v!r}{did_you_mean(v, choices)}"
                )


def validate_recipe(raw: Any, source: str, base_dir: Path, *, check_files: bool = False) -> Recipe:
    """Check every key and value; raise one BadInputError listing all problems.

    `check_files` (`load_recipe`, `laplace run`) also checks the model file and the data specs
    with every split's files, keys and columns, in the same message."""
    if not isinstance(raw, dict):
        raise BadInputError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    errors = _schema_errors(raw, source)
    model = raw.get("model")
    if not isinstance(model, dict) or not model.get("path"):
        errors.append(f"{source}: model.path: required (the checkpoint to calibrate)")
    if not raw.get("data"):
        errors.append(f"{source}: data: required (a dataset spec YAML)")
    stages = raw.get("stages") or [s for s in STAGES if s in raw] or ["fit"]
    if isinstance(stages, list) and stages and stages[0] != "fit":
        errors.append(f"{source}: stages: must start with fit, got {stages}")
    # (non-string items, e.g. `tun:` read as a mapping, are reported by the schema check)
    names = [s for s in stages if isinstance(s, str)] if isinstance(stages, list) else []
    if len(set(names)) != len(names):
        errors.append(f"{source}: stages: each stage once, got {stages}")
    errors += _gate_errors(raw, source) + _grid_errors(raw, source) + _level_errors(raw, source)
    try:
        if check_files:
            errors += _file_errors(raw, source, base_dir)
            if isinstance(stages, list) and "doctor" in stages:
                errors += _doctor_errors(raw, source, base_dir)
        if errors:
            raise BadInputError("\n".join(errors))
        return _resolved(raw, source, base_dir, dict(model), list(stages))
    except BadInputError as exc:
        if str(exc).startswith(source):
            raise
        # A path the helpers could not take (e.g. `~user` of no user): name the recipe too.
        raise BadInputError(f"{source}: {exc}") from None


def _schema_errors(raw: dict[str, Any], source: str) -> list[str]:
    """Unknown keys, and values of the wrong type or outside their choices, section by section."""
    errors: list[str] = []
    for section, schema in SCHEMA.items():
        node = raw if section == "" else raw.get(section)
        if node is None:
            continue
        if not isinstance(node, dict):
            continue  # reported as a type error of the parent
        for key, value in node.items():
            where = f"{source}: {section + '.' if section else ''}{key}"
            if key not in schema:
                errors.append(
                    f"{where}: unknown key{did_you_mean(key, schema)}; allowed: {', '.join(schema)}"
                )
                continue
            kind, choices = schema[key]
            _check_value(kind, choices, value, where, errors)
    return errors


def _gate_errors(raw: dict[str, Any], source: str) -> list[str]:
    """The `evaluate.fail_if` gates that do not parse."""
    errors: list[str] = []
    evaluate = raw.get("evaluate") if isinstance(raw.get("evaluate"), dict) else {}
    gates = evaluate.get("fail_if") if isinstance(evaluate.get("fail_if"), list) else []
    from laplace_cli.pipeline.gates import check_intervals_available, parse_gate

    parsed = []
    for gate in gates:
        try:
            parsed.append(parse_gate(str(gate)))
        except BadInputError as exc:
            errors.append(f"{source}: evaluate.fail_if: {exc}")
    bootstrap = evaluate.get("bootstrap", 0)
    try:
        check_intervals_available(parsed, isinstance(bootstrap, int) and bootstrap > 0)
    except BadInputError as exc:
        errors.append(
            f"{source}: evaluate.fail_if: {str(exc).replace('--bootstrap', 'bootstrap:')}"
        )
    return errors


def _file_errors(raw: dict[str, Any], source: str, base_dir: Path) -> list[str]:
    """The model file, and the data specs (`data`, `evaluate.ood_data`) with every split's
    files, keys and columns: each mistake in the same message as the recipe's own, before
    any model is loaded."""
    from laplace_cli.io.datasets import load_dataset_spec

    errors: list[str] = []

    def resolve(p: str) -> Path:
        path = user_path(p)
        return path if path.is_absolute() else base_dir / path

    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and model["path"]:
        if not resolve(model["path"]).exists():
            errors.append(f"{source}: model.path: file not found: {resolve(model['path'])}")
    evaluate = raw.get("evaluate") if isinstance(raw.get("evaluate"), dict) else {}
    ood = evaluate.get("ood_data")
    named = ood.items() if isinstance(ood, dict) else [("", ood)]
    specs = [("data", raw.get("data"))]
    specs += [(f"evaluate.ood_data{'.' + n if n else ''}", v) for n, v in named]
    for key, value in specs:
        if not isinstance(value, str) or not value:
            continue
        path = resolve(value)
        if not path.is_file():
            errors.append(f"{source}: {key}: file not found: {path}")
            continue
        try:
            load_dataset_spec(path, check_files=True)
        except BadInputError as exc:
            errors += str(exc).splitlines()
    return errors


def _doctor_errors(raw: dict[str, Any], source: str, base_dir: Path) -> list[str]:
    """The doctor stage's split must be in the data spec (checked before the fit)."""
    from laplace_cli.io.datasets import load_dataset_spec

    cfg = raw.get("doctor") if isinstance(raw.get("doctor"), dict) else {}
    split = cfg.get("split", "val")
    data = raw.get("data")
    path = base_dir / user_path(data) if isinstance(data, str) and data else None
    if path is None or not path.is_file() or not isinstance(split, str):
        return []  # reported by the other checks
    try:
        splits = load_dataset_spec(path).splits
    except BadInputError:
        return []  # reported by _file_errors
    if split in splits:
        return []
    return [
        f"{source}: doctor.split: {split!r} is not a split of {path} "
        f"(it has {', '.join(sorted(splits))}); set doctor.split to val or test"
    ]


def _level_errors(raw: dict[str, Any], source: str) -> list[str]:
    """`evaluate.conformal_level` and `tune.conformal` levels outside (0, 1) (types: above)."""
    errors: list[str] = []
    for section, key in (("evaluate", "conformal_level"), ("tune", "conformal")):
        node = raw.get(section) if isinstance(raw.get(section), dict) else {}
        value = node.get(key)
        values = value if isinstance(value, list) else [] if value is None else [value]
        for v in values:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not number or not 0.0 < v < 1.0:
                errors.append(
                    f"{source}: {section}.{key}: expected levels strictly between 0 and 1 "
                    f"(e.g. 0.9), got {v!r}"
                )
    return errors


def _grid_errors(raw: dict[str, Any], source: str) -> list[str]:
    """A `tune.grid_*` range that is empty or out of bounds, checked before any work."""
    tune = raw.get("tune") if isinstance(raw.get("tune"), dict) else {}
    grid = [tune.get(k) for k in ("grid_min", "grid_max", "grid_size")]
    if any(v is not None for v in grid) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in grid
    ):  # wrong types are reported above; check the range before any work
        from laplace_cli.tuning.grid import check_grid

        try:
            check_grid(*grid, names=("tune.grid_min", "tune.grid_max", "tune.grid_size"))
        except BadInputError as exc:
            return [f"{source}: {line}" for line in str(exc).splitlines()]
    return []


def _resolved(
    raw: dict[str, Any], source: str, base_dir: Path, model: dict[str, Any], stages: list[str]
) -> Recipe:
    """The checked recipe, its paths made absolute relative to the recipe's folder."""

    def resolve(p: str) -> Path:
        path = user_path(p)
        return path if path.is_absolute() else (base_dir / path)

    model["path"] = str(resolve(model["path"]))
    if model.get("factory") and ".py:" in model["factory"]:
        file, _, fn = model["factory"].rpartition(":")
        model["factory"] = f"{resolve(file)}:{fn}"
    sections = {s: dict(raw.get(s) or {}) for s in STAGES}
    subnet = sections["fit"].get("subnetwork")
    if subnet is not None:
        from laplace_cli.masks.selectors import parse_subnetwork

        # An index file is named relative to the recipe, like every other path in it.
        selector = parse_subnetwork(subnet, base_dir, where=f"{source}: fit.subnetwork")
        if selector.path is not None:
            sections["fit"]["subnetwork"] = str(selector.path)
    ev = sections["evaluate"]
    if isinstance(ev.get("ood_data"), dict):  # several sets by name
        ev["ood_data"] = {name: str(resolve(p)) for name, p in ev["ood_data"].items()}
    elif ev.get("ood_data"):
        ev["ood_data"] = str(resolve(ev["ood_data"]))
    if ev.get("history"):
        ev["history"] = str(resolve(ev["history"]))
    baseline = ev.get("baseline")
    if isinstance(baseline, str) and baseline.endswith(".json"):
        ev["baseline"] = str(resolve(baseline))  # a file; `last`, `best`, dates stay as they are
    return Recipe(
        source=source,
        base_dir=base_dir,
        model=model,
        data=resolve(raw["data"]),
        stages=stages,
        device=raw.get("device") or "auto",
        dtype=raw.get("dtype"),
        seed=int(raw.get("seed") or 0),
        batch_size=raw.get("batch_size"),
        sections=sections,
    )


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, override (`--set`) and validate a recipe file."""
    from laplace_cli.io.datasets import load_yaml

    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise BadInputError(
            f"{path}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    raw = apply_overrides(raw, overrides or {})
    return validate_recipe(raw, str(path), path.resolve().parent, check_files=True)
