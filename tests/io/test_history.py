"""The run history file: round trip, schema version, append-only, bad files, concurrent writers."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from laplace_cli.core.errors import BadInputError
from laplace_cli.io.history import (
    SCHEMA_VERSION,
    HistoryRecord,
    append_run,
    check_history_file,
    connect,
    read_runs,
)


def _record(i: int, *, failed: bool = False) -> HistoryRecord:
    rows = {"map": {"nll": 0.5 + i, "ece": 0.01 * i}, "laplace": {"nll": 0.4 + i, "acc": None}}
    gates = [{"gate": "ece>0.05", "value": 0.01 * i, "threshold": 0.05, "failed": failed,
              "message": "m"}]  # fmt: skip
    return HistoryRecord(
        created=f"2026-01-{i + 1:02d}T02:00:00Z",
        fingerprint=f"fp{i}",
        data_hash="d0",
        settings_hash="s0",
        split="test",
        n_test=100 + i,
        posterior=f"/p/{i}.st",
        failed=failed,
        report={"rows": rows, "gates": gates, "n": i},
        metrics=rows,
        hyperparameters={"prior_precision": [1.5 * i], "temperature": 1.1},
        timings={"predict_test": 0.25 * i, "bad": math.inf},
        gates=gates,
    )


def test_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    ids = [append_run(db, _record(i, failed=i == 2)) for i in range(3)]
    assert ids == [1, 2, 3]
    runs = read_runs(db, with_report=True)
    assert [r["id"] for r in runs] == ids
    run = runs[2]
    assert run["fingerprint"] == "fp2" and run["n_test"] == 102 and run["failed"] is True
    assert run["metrics"] == {
        "map": {"nll": 2.5, "ece": 0.02},
        "laplace": {"nll": 2.4, "acc": None},
    }
    assert run["hyperparameters"] == {"prior_precision": [3.0], "temperature": 1.1}
    assert run["timings"] == {"predict_test": 0.5, "bad": None}  # non-finite stored as NULL
    assert run["gates"][0]["gate"] == "ece>0.05" and run["gates"][0]["failed"] is True
    assert run["report"]["n"] == 2
    assert [r["id"] for r in read_runs(db, fingerprint="fp1")] == [2]
    assert [r["id"] for r in read_runs(db, since="2026-01-02")] == [2, 3]
    assert [r["id"] for r in read_runs(db, until="2026-01-02")] == [1]


def test_schema_version_wal_and_append_only(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    append_run(db, _record(0))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM runs")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE runs SET failed = 1")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(BadInputError, match="newer than this laplace-cli"):
        read_runs(db)


def test_migration_from_empty_file(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    db.touch()  # an empty file is a new history (version 0 → current)
    connect(db).close()
    assert read_runs(db) == []


def test_not_sqlite_refused(tmp_path: Path) -> None:
    bad = tmp_path / "runs.db"
    bad.write_text("id,created\n1,2026\n")
    with pytest.raises(BadInputError, match="not an SQLite database"):
        check_history_file(bad)
    with pytest.raises(BadInputError, match="not an SQLite database"):
        append_run(bad, _record(0))
    with pytest.raises(BadInputError, match="no such history file"):
        read_runs(tmp_path / "absent.db")


def _write(args: tuple[str, int]) -> int:
    db, i = args
    return append_run(db, _record(i))


def test_concurrent_writers(tmp_path: Path) -> None:
    """8 processes append to one new file at once: 8 runs, distinct ids, no corruption."""
    db = str(tmp_path / "runs.db")
    ctx = multiprocessing.get_context("spawn")  # fresh processes, as 8 CI jobs would be
    with ctx.Pool(8) as pool:
        ids = pool.map(_write, [(db, i) for i in range(8)])
    assert sorted(ids) == list(range(1, 9))
    runs = read_runs(db)
    assert sorted(r["fingerprint"] for r in runs) == [f"fp{i}" for i in range(8)]
    assert all(len(r["metrics"]["map"]) == 2 and len(r["gates"]) == 1 for r in runs)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == 8 * 4
