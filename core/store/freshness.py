"""Whether a run's derived tables are current, and the Arrow list reader shared by the reads of them."""
from __future__ import annotations

import numpy as np


def table_names(con) -> set[str]:
    """Names of the tables the database holds."""
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def _state(con, run_id: str) -> tuple[int, object]:
    return con.execute("""SELECT count(*) FILTER (WHERE status = 'ok'), max(finished_at) FROM evaluations
                          WHERE run_id = ?""", [run_id]).fetchall()[0]


def valid(con, run_id: str) -> bool:
    """Whether the run's derived tables are current (:mod:`core.store.derived`).

    Args:
        con: a connection (read-only or writer).
        run_id: the run.

    Returns:
        True when the run's derived tables exist and were built from the evaluations the database holds now
        (same count of ok evaluations, same latest finish time); False otherwise, e.g. in a database written
        before derived tables existed.
    """
    if "derived_state" not in table_names(con):
        return False
    rows = con.execute("SELECT n_ok, last_finished FROM derived_state WHERE run_id = ?", [run_id]).fetchall()
    if not rows:
        return False
    row = rows[0]
    n_ok, last = _state(con, run_id)
    return int(row[0]) == int(n_ok) and row[1] == last


def list_arrays(table, list_cols: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flatten list columns of an Arrow table into numpy arrays, without a Python object per entry.

    Args:
        table: a ``pyarrow.Table`` whose ``list_cols`` have the same length row by row (NULL lists: none).
        list_cols: the list columns; the first one gives the lengths (``bins`` in the derived tables).

    Returns:
        (row index of every entry (E,) int64, {column: flattened values (E,)}).
    """
    import pyarrow as pa

    first = table.column(list_cols[0])
    first = first.combine_chunks() if isinstance(first, pa.ChunkedArray) else first
    lengths = first.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    out = {}
    for c in list_cols:
        col = table.column(c)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        out[c] = col.flatten().to_numpy(zero_copy_only=False)
    return row, out
