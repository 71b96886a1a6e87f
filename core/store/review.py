"""Review store (in core.store, not core/review.py: the layer contract lets the dashboard reach core.store only): clinical QA decisions per (run, model, patient), append-only, in SQLite next to the results DB.

The results DuckDB allows one writer and a running batch holds its write lock, so reviews live in a separate
file, ``reviews.sqlite`` in the same folder as ``results.duckdb`` (:func:`review_path`), opened in WAL mode with a
busy timeout, one new connection per operation (safe from any thread or process), parameterised SQL only.

Schema (one table, never updated or deleted: every save is a new row; the current status is the latest row)::

    reviews(
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- save order
        run_id      TEXT NOT NULL,
        model       TEXT NOT NULL,
        patient_id  TEXT NOT NULL,
        status      TEXT NOT NULL,   -- one of STATUSES
        note        TEXT NOT NULL,   -- free text, at most MAX_NOTE characters ('' when none)
        reviewer    TEXT NOT NULL,   -- at most MAX_REVIEWER characters, not empty
        saved_at    TEXT NOT NULL    -- UTC, ISO 8601 with microseconds, e.g. 2026-12-07T04:50:00.123456+00:00
    )
"""
from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

STATUSES = ("to review", "accepted", "needs correction", "corrected", "excluded")
MAX_NOTE = 2000
MAX_REVIEWER = 100
BUSY_TIMEOUT_MS = 10_000
COLUMNS = ["id", "run_id", "model", "patient_id", "status", "note", "reviewer", "saved_at"]

_SCHEMA = """CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, model TEXT NOT NULL, patient_id TEXT NOT NULL,
    status TEXT NOT NULL, note TEXT NOT NULL, reviewer TEXT NOT NULL, saved_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reviews_key ON reviews (run_id, model, patient_id, id);"""


def review_path(results_db: str | Path) -> Path:
    """The review store beside a results database: ``<folder of results_db>/reviews.sqlite``."""
    return Path(results_db).resolve().parent / "reviews.sqlite"


def _connect(path: str | Path) -> sqlite3.Connection:
    """A connection in WAL mode with the schema. Switching a new file to WAL and creating its table while another
    connection does the same can fail at once with "database is locked" (SQLite does not call the busy handler
    for the journal-mode change), so those two steps are retried for up to the busy timeout."""
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.executescript(_SCHEMA)
            return con
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                con.close()
                raise
            time.sleep(0.01)


def validate(status: str, note: str, reviewer: str) -> tuple[str, str, str]:
    """Check one decision; returns (status, note, reviewer stripped).

    Raises:
        ValueError: status not in :data:`STATUSES`, note longer than :data:`MAX_NOTE`, reviewer empty or longer
            than :data:`MAX_REVIEWER`.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    note = "" if note is None else str(note)
    if len(note) > MAX_NOTE:
        raise ValueError(f"note is {len(note)} characters; at most {MAX_NOTE}")
    reviewer = str(reviewer or "").strip()
    if not reviewer or len(reviewer) > MAX_REVIEWER:
        raise ValueError(f"reviewer name must have 1 to {MAX_REVIEWER} characters")
    return status, note, reviewer


def save_review(path: str | Path, run_id: str, model: str, patient_id: str, status: str, note: str,
                reviewer: str) -> dict:
    """Append one decision (never overwrites); returns the saved row as a dict of :data:`COLUMNS`."""
    status, note, reviewer = validate(status, note, reviewer)
    saved_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    row = (str(run_id), str(model), str(patient_id), status, note, reviewer, saved_at)
    con = _connect(path)
    try:
        cur = con.execute("INSERT INTO reviews (run_id, model, patient_id, status, note, reviewer, saved_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        return dict(zip(COLUMNS, (cur.lastrowid,) + row))
    finally:
        con.close()


def _frame(path, sql: str, params: tuple) -> pd.DataFrame:
    if not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    con = _connect(path)
    try:
        return pd.read_sql_query(sql, con, params=params)
    finally:
        con.close()


def current_status(path: str | Path, run_id: str, model: str | None = None) -> pd.DataFrame:
    """The latest decision per (model, patient) of a run (one model, or every model when None).

    Returns:
        :data:`COLUMNS`, one row per reviewed (model, patient); patients never reviewed are absent
        (their status is 'to review').
    """
    where, params = "run_id = ?", (str(run_id),)
    if model is not None:
        where, params = where + " AND model = ?", params + (str(model),)
    sql = (f"SELECT * FROM reviews WHERE id IN (SELECT MAX(id) FROM reviews WHERE {where} "
           "GROUP BY model, patient_id) ORDER BY model, patient_id")
    return _frame(path, sql, params)


def history(path: str | Path, run_id: str, model: str, patient_id: str) -> pd.DataFrame:
    """Every decision saved for one (run, model, patient), oldest first (:data:`COLUMNS`)."""
    return _frame(path, "SELECT * FROM reviews WHERE run_id = ? AND model = ? AND patient_id = ? ORDER BY id",
                  (str(run_id), str(model), str(patient_id)))


def all_rows(path: str | Path) -> pd.DataFrame:
    """The whole audit trail, in save order (for export)."""
    return _frame(path, "SELECT * FROM reviews ORDER BY id", ())


def with_status(patients: pd.DataFrame, current: pd.DataFrame, model_col: str | None = None) -> pd.DataFrame:
    """``patients`` (a patient_id column, and ``model`` when model_col given) with status, note, reviewer,
    saved_at of their latest decision; 'to review' where none."""
    keys = ["patient_id"] + ([model_col] if model_col else [])
    cur = current[keys + ["status", "note", "reviewer", "saved_at"]] if len(current) else \
        pd.DataFrame(columns=keys + ["status", "note", "reviewer", "saved_at"])
    out = patients.merge(cur.astype({k: str for k in keys}), on=keys, how="left")
    out["status"] = out.status.fillna("to review")
    for c in ("note", "reviewer", "saved_at"):
        out[c] = out[c].fillna("")
    return out


def progress(path: str | Path, run_id: str, totals: dict[str, int]) -> pd.DataFrame:
    """Review progress per model: model, reviewed (latest status other than 'to review'), total (``totals``),
    accepted_share (accepted / reviewed; NaN when none reviewed)."""
    cur = current_status(path, run_id)
    out = []
    for model, total in totals.items():
        c = cur[(cur.model == model) & (cur.status != "to review")] if len(cur) else cur
        n = len(c)
        out.append({"model": model, "reviewed": n, "total": int(total),
                    "accepted_share": (float((c.status == "accepted").sum()) / n) if n else float("nan")})
    return pd.DataFrame(out, columns=["model", "reviewed", "total", "accepted_share"])
