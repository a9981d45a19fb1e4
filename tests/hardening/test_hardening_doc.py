"""docs/hardening.md's case tables are generated from the tests' `@case` marks: never stale."""

from __future__ import annotations

import re

import hardening_doc


def test_the_hardening_doc_is_current() -> None:
    doc = hardening_doc.DOC.read_text()
    assert hardening_doc.updated(doc, hardening_doc.collect()) == doc, (
        "docs/hardening.md is stale: run python tests/hardening/hardening_doc.py --write"
    )


def test_every_table_has_cases_and_a_stale_row_is_noticed() -> None:
    tables = hardening_doc.collect()
    every = {"bad", "preflight", "memory", "numerical", "hostile", "faults", "kill"}
    assert every <= set(tables)
    assert all(rows for rows in tables.values())
    doc = hardening_doc.DOC.read_text()
    # Every table of the doc between markers comes from the tests (none is left by hand).
    assert set(re.findall(r"<!-- cases: (\w+) ", doc)) == set(tables)
    first = tables["bad"][0]
    changed = {**tables, "bad": [(first[0], 3, *first[2:]), *tables["bad"][1:]]}
    assert hardening_doc.updated(doc, changed) != doc  # an exit code changed in a test shows
    command, event, _, test = tables["kill"][0]
    changed = {**tables, "kill": [(command, event, "torn", test), *tables["kill"][1:]]}
    assert hardening_doc.updated(doc, changed) != doc  # so does a kill point's outcome


def test_the_kill_table_is_the_kill_test_s_list() -> None:
    import test_kill_points

    rows = hardening_doc.collect()["kill"]
    assert [row[:3] for row in rows] == test_kill_points.KILL_POINTS
