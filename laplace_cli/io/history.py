"""The run history: an append-only SQLite file of evaluations (``evaluate --history runs.db``).

One row of ``runs`` per evaluation, keyed by checkpoint fingerprint, data hash, settings hash
and time, with the whole report as JSON; its metrics, tuned hyperparameters, timings and gate
results are also stored one value per row (tables ``metrics``, ``hyperparameters``,
``timings``, ``gates``) so that they can be filtered and plotted without parsing JSON.

Why SQLite with these settings:

- WAL journal: readers never block the writer and a crash mid-write leaves the file whole.
- One ``BEGIN IMMEDIATE`` transaction per run: the run and all its values appear together or
  not at all; concurrent CI jobs queue on the write lock (busy timeout) instead of failing.
- ``PRAGMA user_version`` holds the schema version; :func:`migrate` brings an older file up to
  date inside a write transaction (so two processes never migrate at once) and refuses a file
  written by a newer laplace-cli.
- Triggers refuse ``UPDATE`` and ``DELETE`` on ``runs``: the history is append-only.

This module only stores and reads; what a run record holds is decided in
:mod:`laplace_cli.pipeline.run_history`.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laplace_cli.core.errors import BadInputError

__all__ = [
    "SCHEMA_VERSION",
    "HistoryRecord",
    "append_run",
    "check_history_file",
    "connect",
    "migrate",
    "read_runs",
]

SCHEMA_VERSION = 1

#: Seconds a writer waits for another process's write lock before giving up.
BUSY_TIMEOUT_S = 60.0

_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class HistoryRecord:
    """One evaluation as stored: identity keys, values by kind and the whole report."""

    created: str
    fingerprint: str | None
    data_hash: str | None
    settings_hash: str | None
    split: str | None
    n_test: int | None
    posterior: str | None
    failed: bool
    report: Mapping[str, Any]
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, Any] = field(default_factory=dict)
    gates: Sequence[Mapping[str, Any]] = field(default_factory=list)


def _create_v1(conn: sqlite3.Connection) -> None:
    # One execute per statement: executescript would COMMIT the migration's transaction.
    for statement in _V1_STATEMENTS:
        conn.execute(statement)


_V1_STATEMENTS = [
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,
        fingerprint TEXT,
        data_hash TEXT,
        settings_hash TEXT,
        split TEXT,
        n_test INTEGER,
        posterior TEXT,
        failed INTEGER NOT NULL,
        report TEXT NOT NULL
    )""",
    "CREATE INDEX runs_created ON runs (created)",
    "CREATE INDEX runs_fingerprint ON runs (fingerprint)",
    """CREATE TABLE metrics (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        row TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL,
        PRIMARY KEY (run_id, row, metric)
    )""",
    """CREATE TABLE hyperparameters (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, name)
    )""",
    """CREATE TABLE timings (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        seconds REAL,
        PRIMARY KEY (run_id, name)
    )""",
    """CREATE TABLE gates (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        position INTEGER NOT NULL,
        gate TEXT NOT NULL,
        value REAL,
        threshold REAL,
        failed INTEGER NOT NULL,
        message TEXT,
        PRIMARY KEY (run_id, position)
    )""",
    """CREATE TRIGGER runs_append_only_update BEFORE UPDATE ON runs
        BEGIN SELECT RAISE(ABORT, 'the run history is append-only'); END""",
    """CREATE TRIGGER runs_append_only_delete BEFORE DELETE ON runs
        BEGIN SELECT RAISE(ABORT, 'the run history is append-only'); END""",
]


#: ``MIGRATIONS[v]`` brings a file from schema version ``v`` to ``v + 1`` (0: a new file).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _create_v1}


def check_history_file(path: str | os.PathLike[str], *, must_exist: bool = False) -> Path:
    """Refuse a path that is not an SQLite file (an empty or absent file is a new history).

    Raises:
        BadInputError: a folder, a file of another kind, or (``must_exist``) no file.
    """
    p = Path(path)
    if p.is_dir():
        raise BadInputError(f"--history {p}: is a folder; expected an SQLite file such as runs.db")
    if not p.exists():
        if must_exist:
            raise BadInputError(f"{p}: no such history file; write one with evaluate --history {p}")
        if not p.parent.is_dir():
            raise BadInputError(f"--history {p}: folder {p.parent} does not exist")
        return p
    with open(p, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise BadInputError(
            f"--history {p}: not an SQLite database; give a new file name or a history "
            "written by evaluate --history"
        )
    return p


def connect(path: str | os.PathLike[str], *, create: bool = True) -> sqlite3.Connection:
    """Open (and create or migrate) a history file; autocommit mode, transactions explicit.

    Raises:
        BadInputError: not an SQLite file, or written by a newer laplace-cli.
    """
    p = check_history_file(path, must_exist=not create)
    try:
        conn = sqlite3.connect(p, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, source=str(p))
    except sqlite3.DatabaseError as exc:
        raise BadInputError(f"--history {p}: not a usable SQLite database ({exc})") from exc
    return conn


def migrate(conn: sqlite3.Connection, *, source: str = "history") -> int:
    """Bring the file to :data:`SCHEMA_VERSION` (one write transaction); return the old version.

    Raises:
        BadInputError: the file's schema is newer than this laplace-cli reads.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read again under the write lock: another process may have migrated meanwhile.
        version = old = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise BadInputError(
                f"{source}: history schema version {version} is newer than this laplace-cli "
                f"reads ({SCHEMA_VERSION}); upgrade laplace-cli"
            )
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old


def _real(value: Any) -> float | None:
    """A float for SQLite, None for missing / non-finite / non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def append_run(path: str | os.PathLike[str], record: HistoryRecord) -> int:
    """Append one run and its values in one transaction; return its id."""
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT INTO runs (created, fingerprint, data_hash, settings_hash, split, n_test,"
                " posterior, failed, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.created,
                    record.fingerprint,
                    record.data_hash,
                    record.settings_hash,
                    record.split,
                    record.n_test,
                    record.posterior,
                    int(record.failed),
                    json.dumps(record.report, allow_nan=False, default=str),
                ),
            )
            run_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?)",
                [
                    (run_id, row, metric, _real(value))
                    for row, values in record.metrics.items()
                    for metric, value in values.items()
                    if isinstance(value, (int, float)) or value is None
                ],
            )
            conn.executemany(
                "INSERT INTO hyperparameters VALUES (?, ?, ?)",
                [
                    (run_id, k, json.dumps(v, default=str))
                    for k, v in record.hyperparameters.items()
                ],
            )
            conn.executemany(
                "INSERT INTO timings VALUES (?, ?, ?)",
                [(run_id, k, _real(v)) for k, v in record.timings.items()],
            )
            conn.executemany(
                "INSERT INTO gates VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        i,
                        str(g.get("gate")),
                        _real(g.get("value")),
                        _real(g.get("threshold")),
                        int(bool(g.get("failed"))),
                        g.get("message"),
                    )
                    for i, g in enumerate(record.gates)
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return run_id


def read_runs(
    path: str | os.PathLike[str],
    *,
    fingerprint: str | None = None,
    since: str | None = None,
    until: str | None = None,
    with_report: bool = False,
) -> list[dict[str, Any]]:
    """The runs, oldest first, optionally filtered.

    Args:
        fingerprint: keep runs whose checkpoint fingerprint starts with this.
        since, until: keep runs created at or after ``since`` / before ``until`` (ISO 8601
            UTC strings compare in time order).
        with_report: also parse and return each run's whole report (key ``report``).

    Each run: ``id, created, fingerprint, data_hash, settings_hash, split, n_test, posterior,
    failed, metrics {row: {metric: value}}, hyperparameters, timings, gates``.
    """
    conn = connect(path, create=False)
    try:
        where, args = [], []
        if fingerprint:
            where.append("fingerprint LIKE ? || '%'")
            args.append(fingerprint)
        if since:
            where.append("created >= ?")
            args.append(since)
        if until:
            where.append("created < ?")
            args.append(until)
        sql = (
            "SELECT id, created, fingerprint, data_hash, settings_hash, split, n_test, posterior,"
            " failed, report FROM runs"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY created, id"
        )
        conn.execute("BEGIN")  # one snapshot for all the tables
        runs = []
        for row in conn.execute(sql, args).fetchall():
            keys = ("id", "created", "fingerprint", "data_hash", "settings_hash", "split")
            run: dict[str, Any] = dict(zip(keys, row[:6]))
            run["n_test"], run["posterior"], run["failed"] = row[6], row[7], bool(row[8])
            run["metrics"] = {}
            for r, m, v in conn.execute(
                "SELECT row, metric, value FROM metrics WHERE run_id = ? ORDER BY rowid", (row[0],)
            ):
                run["metrics"].setdefault(r, {})[m] = v
            run["hyperparameters"] = {
                k: json.loads(v)
                for k, v in conn.execute(
                    "SELECT name, value FROM hyperparameters WHERE run_id = ? ORDER BY rowid",
                    (row[0],),
                )
            }
            run["timings"] = dict(
                conn.execute(
                    "SELECT name, seconds FROM timings WHERE run_id = ? ORDER BY rowid", (row[0],)
                ).fetchall()
            )
            run["gates"] = [
                {"gate": g, "value": v, "threshold": t, "failed": bool(f), "message": msg}
                for g, v, t, f, msg in conn.execute(
                    "SELECT gate, value, threshold, failed, message FROM gates WHERE run_id = ?"
                    " ORDER BY position",
                    (row[0],),
                )
            ]
            if with_report:
                run["report"] = json.loads(row[9])
            runs.append(run)
        conn.execute("COMMIT")
        return runs
    except sqlite3.DatabaseError as exc:
        raise BadInputError(f"{path}: cannot read the run history ({exc})") from exc
    finally:
        conn.close()
