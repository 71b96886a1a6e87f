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


def decision_form(form_key: str, prefix: str, store: Path, run_id: str, model: str, patient: str | None,
                  patients: list[str] | None = None, submit: str = "Save") -> str | None:
    """The review-decision form (status, note, reviewer) of one model; saves through :func:`save_review` and shows
    the store's error for bad input. ``patients``: offer a patient choice inside the form (key ``<prefix>_patient``),
    else ``patient`` is the one decided on. Widget keys ``<prefix>_status`` / ``_note`` / ``_reviewer``.

    Returns:
        the patient the form is about (None when there is none).
    """
    with st.form(form_key):
        if patients is not None:
            patient = st.selectbox("Patient", patients, key=f"{prefix}_patient")
        status = st.selectbox("Status", list(STATUSES), key=f"{prefix}_status")
        note = st.text_area("Note", max_chars=MAX_NOTE, key=f"{prefix}_note")
        reviewer = st.text_input("Reviewer", max_chars=MAX_REVIEWER, key=f"{prefix}_reviewer")
        if st.form_submit_button(submit):
            try:
                save_review(store, run_id, model, patient, status, note, reviewer)
                st.success(f"Saved: {patient} ({model}) is now '{status}'. Tables show it from the next rerun.")
            except ValueError as exc:
                st.error(str(exc))
    return patient


def export_zip(db: Path, run_id: str, model: str, method: str, patient_ids: list[str]) -> tuple[bytes, int]:
    """(zip archive, number of patients) of the ``needs correction`` patients of one model among ``patient_ids``:
    :func:`core.io.review_export.export_reviews` into a temporary folder, packed by ``zip_bytes``."""
    import tempfile

    from core.io.review_export import export_reviews, zip_bytes

    with tempfile.TemporaryDirectory() as tmp:
        table = export_reviews(db, run_id, model, Path(tmp) / "export", method=method, patient_ids=patient_ids)
        return zip_bytes(Path(tmp) / "export"), len(table)
