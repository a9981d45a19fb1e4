"""Render ``docs/data-spec.md`` and ``docs/recipes.md`` from the schema the validators read.

    python -m laplace_cli.io.schema_docs --write    # rewrite the two files
    python -m laplace_cli.io.schema_docs --check    # exit 1 when they differ from the schema

``tests/io/test_schema_docs.py`` runs the check, so a key added to
:mod:`laplace_cli.io.spec_schema` without regenerating the docs fails the tests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from laplace_cli.io.spec_schema import (
    DATA_SPEC_SECTIONS,
    KINDS,
    RECIPE_SECTIONS,
    REQUIRED,
    UNSET,
    Key,
    Section,
)

__all__ = ["DOCS", "check_docs", "render_data_spec", "render_recipes", "write_docs"]

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"

_GENERATED = (
    "<!-- Generated from laplace_cli/io/spec_schema.py by "
    "`python -m laplace_cli.io.schema_docs --write`: edit the schema, not this file. -->"
)

DATA_SPEC_EXAMPLE = """\
task: classification          # or regression, binary
batch_size: 256
n_classes: 10
splits:
  train:  {path: train.npz, x: x, y: y}            # .npz .npy .pt .safetensors
  val:    {path: val.csv, target: label}           # CSV / TSV: other numeric columns are features
  test:   {path: test.jsonl, x: features, y: label}
  ood:    {path: ood.csv}                          # no targets: for --ood-data and predict
  texts:  {path: reviews.jsonl, text: text, y: label, tokenizer: ./tok, max_length: 128}
  custom: {callable: mypkg.data:make_split, kwargs: {n: 1000}}   # returns a torch Dataset
"""

RECIPE_EXAMPLE = """\
# Digits MLP, K-FAC over all weights.
# Run:      laplace run recipes/digits_mlp_kron.yaml --output runs/digits_mlp
# Override: --set fit.structure=diag --set tune.method=gridsearch
model: {path: ../sample_models/digits_mlp/model.pt2}
data: ../sample_models/digits_mlp/data.yaml
stages: [fit, tune, evaluate, predict]
fit: {subset: all, structure: kron}
tune: {method: marglik}
evaluate: {split: test, fail_if: ["ece>0.05"], plot: reliability.png, html: report.html}
predict: {split: test, format: csv}
"""


def _inline(value: Any) -> str:
    """A value as one line of YAML (flow style), in backticks."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    text = text.strip()
    if text.endswith("\n...") or text.endswith("..."):
        text = text[: -len("...")].strip()
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(key: Key) -> str:
    if key.default_text is not None:
        return key.default_text
    if key.default is REQUIRED:
        return "**required**"
    if key.default is UNSET:
        return "—"
    return _inline(key.default)


def _table(section: Section) -> str:
    lines = [
        "| key | type | default | description | example |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in section.keys:
        description = key.description
        if key.choices:
            each = "Each one of " if key.kind == "list" else "One of "
            description += " " + each + ", ".join(f"`{c}`" for c in key.choices) + "."
        lines.append(
            "| "
            + " | ".join(
                _cell(part)
                for part in (
                    f"`{key.name}`",
                    KINDS[key.kind],
                    _default(key),
                    description,
                    _inline(key.example),
                )
            )
            + " |"
        )
    return "\n".join(lines)


def _sections(sections: Sequence[Section], heading: str) -> list[str]:
    out: list[str] = []
    for section in sections:
        where = f" (`{section.path}:`)" if section.path else ""
        out += [f"{heading} {section.title}{where}", ""]
        if section.intro:
            out += [section.intro, ""]
        out += [_table(section), ""]
    return out


def render_data_spec() -> str:
    """The Markdown of ``docs/data-spec.md``."""
    parts = [
        "# Dataset spec",
        "",
        _GENERATED,
        "",
        "A dataset spec is a YAML file naming each split's data: `laplace fit / tune / evaluate "
        "/ predict --data data.yaml`, and a recipe's `data:`. Relative paths resolve against the "
        "YAML file's folder. Every mistake is reported at once, one line each, naming the file "
        "and the key (`data.yaml: splits.train.y: expected a key or column name (string), got "
        "3 (int)`); unknown keys are refused with the closest known one.",
        "",
        "```yaml",
        DATA_SPEC_EXAMPLE.rstrip("\n"),
        "```",
        "",
        *_sections(DATA_SPEC_SECTIONS, "##"),
        "## Loaded values",
        "",
        "* Features become float32 (the model's dtype is applied later); NaN / Inf are refused "
        "with the file and row.",
        "* Classification labels: whole numbers ≥ 0 (`2.0` as CSV gives is fine), int64 of "
        "shape (N,). Regression and binary targets: float32, (N,) taken as (N, 1); binary "
        "targets must lie in [0, 1].",
        "* CSV / TSV files have a header row unless `header:` says otherwise (or the first "
        "line is all numbers); JSONL has one JSON object (or array) per line.",
        "* Command-line flags win over the spec: `--likelihood` over `task:`, `--batch-size` "
        "over `batch_size:`.",
        "",
    ]
    return "\n".join(parts)


def render_recipes() -> str:
    """The Markdown of ``docs/recipes.md``."""
    parts = [
        "# Recipes",
        "",
        _GENERATED,
        "",
        "A recipe is one YAML file naming the model, the data and the stages to run: `laplace "
        "run RECIPE.yaml --output DIR`. Relative paths resolve against the recipe's folder, "
        "output file names against the output folder. `--set key=value` overrides any key "
        "(`--set fit.structure=diag`), checked like the file. Every mistake is reported at "
        "once (`recipe.yaml: fit.structure: expected one of diag, kron, full, lowrank, got "
        "'kronn' (did you mean 'kron'?)`). The data is a dataset spec: see "
        "[data-spec.md](data-spec.md). The folder `recipes/` has one recipe per sample model.",
        "",
        "```yaml",
        RECIPE_EXAMPLE.rstrip("\n"),
        "```",
        "",
        "The run writes `posterior.safetensors` (after fit, rewritten after tune), "
        "`report.json` (evaluate, plus the plot and HTML page asked for), "
        "`predictions.<format>` (predict) and `doctor.json` (doctor, "
        "[doctor.md](doctor.md)) into the output folder.",
        "",
        *_sections(RECIPE_SECTIONS, "##"),
    ]
    return "\n".join(parts)


DOCS = {"data-spec.md": render_data_spec, "recipes.md": render_recipes}
"""Generated file name to its renderer."""


def _rendered() -> dict[str, str]:
    return {name: render() for name, render in DOCS.items()}


def write_docs(docs_dir: str | Path = DOCS_DIR) -> list[Path]:
    """Write the generated docs into ``docs_dir``; returns the files written."""
    out = []
    for name, text in _rendered().items():
        path = Path(docs_dir) / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def check_docs(docs_dir: str | Path = DOCS_DIR) -> list[str]:
    """Names of the generated docs in ``docs_dir`` that are missing or differ from the schema."""
    stale = []
    for name, text in _rendered().items():
        path = Path(docs_dir) / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m laplace_cli.io.schema_docs")
    parser.add_argument("--docs", default=str(DOCS_DIR), help="docs folder (default: the repo's)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated docs")
    mode.add_argument("--check", action="store_true", help="exit 1 when they are stale")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_docs(args.docs):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    stale = check_docs(args.docs)
    for name in stale:
        print(
            f"{Path(args.docs) / name}: out of date with laplace_cli/io/spec_schema.py; "
            "run: python -m laplace_cli.io.schema_docs --write",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
