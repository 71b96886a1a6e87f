"""The review store for the pages (they reach core only through dashboard): :mod:`core.store.review`."""
from core.store.review import (COLUMNS, MAX_NOTE, MAX_REVIEWER, STATUSES, all_rows, current_status,  # noqa: F401
                               history, progress, review_path, save_review, with_status)

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import streamlit as st  # noqa: E402


@st.cache_data(max_entries=64, show_spinner=False)
def _statuses(path: str, version: tuple, run_id: str, model: str) -> dict:
    cur = current_status(path, run_id, model)
    return dict(zip(cur.patient_id, cur.status))


def statuses(db: Path, run_id: str, model: str) -> dict[str, str]:
    """patient_id -> latest review status of one model in a run: one small SQLite read, cached by the review
    store's file version (mtime of reviews.sqlite and of its WAL file, where writes land first)."""
    p = review_path(db)
    if not p.exists():
        return {}
    wal = Path(str(p) + "-wal")
    version = (os.stat(p).st_mtime_ns, os.stat(wal).st_mtime_ns if wal.exists() else 0,
               wal.stat().st_size if wal.exists() else 0)
    return _statuses(str(p), version, run_id, model)
