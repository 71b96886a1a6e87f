"""Row-for-row comparison of two results databases: are they the same numbers?

Used to check that a change of the code changed no stored number (``python -m core compare OLD NEW``: the demo
database before and after), that the shards of a run merge into what one process writes, and that a killed
and resumed batch ends where an uninterrupted one does.

What is compared: every row of every table both hold, in a canonical order, except the columns that record
*when* or *how long* (timestamps, seconds, the chunk trial's timings) or *where* (absolute paths are made
relative to each database's folder). Run ids are hashes of the run's configuration, which holds the cohort's
absolute path, so with ``map_runs`` the runs are matched by their order of creation instead. Floats are equal
within ``rel_tol`` (default 1e-12) or both NaN / NULL.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from core.store.freshness import table_names
from core.store.schema import VIEWS

# columns that record time, duration or the host, never results (left out of the comparison)
VOLATILE = {"created_at", "finished_at", "seconds", "built_at", "code_version", "chunk_trial", "last_finished"}


@dataclass
class TableDiff:
    """How one table differs: row counts and the first differing rows (a, b)."""
    table: str
    rows_a: int
    rows_b: int
    max_rel_diff: float = 0.0
    examples: list = field(default_factory=list)

    @property
    def same(self) -> bool:
        """Whether both databases hold the table with the same rows (within the tolerance)."""
        return self.rows_a == self.rows_b and not self.examples


def _norm_value(v, roots: list[tuple[str, str]], runs: dict):
    if isinstance(v, str):
        if v in runs:
            return runs[v]
        for r, token in roots:
            v = v.replace(r, token)
        for k, new in runs.items():
            v = v.replace(k, new)
        return v
    if isinstance(v, list):
        return [_norm_value(x, roots, runs) for x in v]
    return v


def _rows(con, table: str, roots: list[tuple[str, str]], runs: dict, skip_columns: set[str],
          resort: bool) -> tuple[list[str], list[tuple]]:
    cols = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table]).fetchall() if r[0] not in VOLATILE | skip_columns]
    if not cols:
        return cols, []
    # identifiers from information_schema of this database, quoted; never from input
    rows = con.execute(f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM {table} ORDER BY ALL").fetchall()
    out = [tuple(_norm_value(v, roots, runs) for v in r) for r in rows]
    # several runs: their ids are renamed by creation order, which can change the order of the rows
    return cols, sorted(out, key=lambda r: json.dumps(r, default=str, sort_keys=True)) if resort else out


def _close(x, y, rel_tol: float) -> tuple[bool, float]:
    if isinstance(x, float) and isinstance(y, float):
        if x == y or (x != x and y != y):
            return True, 0.0
        d = abs(x - y) / max(abs(x), abs(y), 1e-300)
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-15), d
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
        worst, ok = 0.0, True
        for a, b in zip(x, y):
            same, d = _close(a, b, rel_tol)
            ok, worst = ok and same, max(worst, d)
        return ok, worst
    return x == y, 0.0 if x == y else math.inf


def _compared_names(con) -> set[str]:
    """The tables compared: every table, with ``uncertainty_hist`` / ``calibration_hist`` (lists whose order is a
    storage detail) compared through their views ``uncertainty_bins`` / ``calibration_bins`` (one row per bin,
    sorted like any table)."""
    names = table_names(con)
    for table, view in VIEWS.items():
        if table in names:
            names = (names - {table}) | {view}
    return names


def compare_databases(a: str | Path, b: str | Path, rel_tol: float = 1e-12, map_runs: bool = True,
                      tables: list[str] | None = None, skip_columns: set[str] | None = None) -> list[TableDiff]:
    """Compare two results databases table by table.

    Args:
        a, b: the database files (opened read-only).
        rel_tol: relative tolerance of float columns (NaN equals NaN).
        map_runs: match runs by creation order instead of by id (ids hash absolute paths).
        tables: the tables to compare (default: every table both hold).
        skip_columns: more columns to leave out (besides :data:`VOLATILE`).

    Returns:
        one :class:`TableDiff` per table, in name order; a table held by one database only has
        ``rows_b`` (or ``rows_a``) = -1.
    """
    cons = [duckdb.connect(str(p), read_only=True) for p in (a, b)]
    try:
        runs = []
        for con in cons:
            ids = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY created_at, run_id").fetchall()] \
                if map_runs else []
            runs.append({rid: f"<run{i}>" for i, rid in enumerate(ids)})
        # absolute paths below the database's folder (maps, cohort) or beside it (the project's weights/)
        roots = [[(str(Path(p).resolve().parent), "<db>"), (str(Path(p).resolve().parent.parent), "<db>/..")]
                 for p in (a, b)]
        names = [_compared_names(c) for c in cons]
        out = []
        for t in sorted(tables or (names[0] | names[1])):
            if t not in names[0] or t not in names[1]:
                out.append(TableDiff(t, -1 if t not in names[0] else 0, -1 if t not in names[1] else 0,
                                     examples=["held by one database only"]))
                continue
            resort = max(len(r) for r in runs) > 1
            (_, ra), (_, rb) = (_rows(c, t, roots[i], runs[i], skip_columns or set(), resort) for i, c in enumerate(cons))
            diff = TableDiff(t, len(ra), len(rb))
            for x, y in zip(ra, rb):
                same, d = _close(x, y, rel_tol)
                diff.max_rel_diff = max(diff.max_rel_diff, d if math.isfinite(d) else 0.0)
                if not same and len(diff.examples) < 5:
                    diff.examples.append((x, y))
            out.append(diff)
        return out
    finally:
        for c in cons:
            c.close()
