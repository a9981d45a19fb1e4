"""The keys of the dataset spec and of recipes, declared once: the validators and the docs read them.

Each YAML section is a tuple of :class:`Key` entries (name, kind, default, description, example,
allowed values). :mod:`laplace_cli.io.dataset_specs` and :mod:`laplace_cli.pipeline.recipes` take their
allowed keys (and, for recipes, the type and choice checks) from here, and
:mod:`laplace_cli.io.schema_docs` renders ``docs/data-spec.md`` and ``docs/recipes.md`` from
the same entries, so the documentation cannot drift from what the validator accepts (a test
regenerates the files and compares).

The entries live in one module per spec kind, this module re-exports them all:
:mod:`laplace_cli.io.schema_keys` (:class:`Key`, :class:`Section`),
:mod:`laplace_cli.io.data_spec_schema` (the dataset spec), :mod:`laplace_cli.io.recipe_schema`
(recipe top level, model, fit, tune) and :mod:`laplace_cli.io.recipe_scoring_schema` (evaluate,
predict, doctor).

Adding a key is one entry in its spec kind's module (plus the code that uses its value); the
validators then accept it and the docs list it after
``python -m laplace_cli.io.schema_docs --write``.
"""

from __future__ import annotations

from laplace_cli.io.data_spec_schema import (
    DATA_FORMATS,
    DATA_SPEC_SECTIONS,
    DATA_SPEC_SPLIT,
    DATA_SPEC_TOP,
)
from laplace_cli.io.recipe_schema import (
    RECIPE_FIT,
    RECIPE_MODEL,
    RECIPE_SECTIONS,
    RECIPE_STAGES,
    RECIPE_TOP,
    RECIPE_TUNE,
)
from laplace_cli.io.recipe_scoring_schema import RECIPE_DOCTOR, RECIPE_EVALUATE, RECIPE_PREDICT
from laplace_cli.io.schema_keys import KINDS, REQUIRED, UNSET, Key, Section, keys_of

__all__ = [
    "DATA_FORMATS",
    "DATA_SPEC_SECTIONS",
    "DATA_SPEC_SPLIT",
    "DATA_SPEC_TOP",
    "KINDS",
    "RECIPE_DOCTOR",
    "RECIPE_EVALUATE",
    "RECIPE_FIT",
    "RECIPE_MODEL",
    "RECIPE_PREDICT",
    "RECIPE_SECTIONS",
    "RECIPE_STAGES",
    "RECIPE_TOP",
    "RECIPE_TUNE",
    "REQUIRED",
    "UNSET",
    "Key",
    "Section",
    "keys_of",
]
