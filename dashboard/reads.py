"""Typed, cached reads of the results database for the pages: each is the :mod:`core.store` read of the same
name and signature, minus the connection, plus the database path first.

Every read runs on this process's shared read-only connection (:func:`core.store.shared_reader`), closed one
second after its last use so that a batch can take the write lock between two reruns, and is cached per
database file version (its modification time), so a finished write shows up on the next rerun.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import streamlit as st

from core import report, store


def _frozen(v):
    """Lists (and tuples of lists) as tuples: hashable cache keys with the same meaning."""
    return tuple(_frozen(x) for x in v) if isinstance(v, (list, tuple)) else v


def cached_read(fn):
    """Wrap ``fn(con, *args, **kwargs)`` of :mod:`core.store` as ``read(db: Path, *args, **kwargs)``, cached per
    file version (``st.cache_data``: the caller gets its own copy of the returned frame).

    Args:
        fn: a read of :mod:`core.store` taking a DuckDB connection first.

    Returns:
        the typed read, with ``fn``'s name, docstring and signature (the connection replaced by ``db``).
    """
    def run(db: str, mtime: float, args: tuple, kwargs: tuple):
        with store.shared_reader(db) as con:
            return fn(con, *args, **dict(kwargs))

    # Streamlit keys its cache by the function's qualified name and source: one name per wrapped read
    run.__qualname__ = run.__name__ = f"cached_{fn.__name__}"
    cached = st.cache_data(max_entries=512, show_spinner=False)(run)

    @functools.wraps(fn)
    def read(db: Path, *args, **kwargs):
        db = Path(db)
        kw = tuple(sorted((k, _frozen(v)) for k, v in kwargs.items()))
        return cached(str(db), db.stat().st_mtime, _frozen(args), kw)

    params = list(inspect.signature(fn).parameters.values())[1:]
    read.__signature__ = inspect.Signature([inspect.Parameter("db", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                              annotation=Path)] + params)
    return read


def shared_read(fn, max_entries: int = 8):
    """As :func:`cached_read`, but the value is shared by every caller, not copied (``st.cache_resource``): for large
    read-only arrays (a copy per rerun would cost more than the read). Callers must not modify it.

    Args:
        fn: a read of :mod:`core.store` taking a DuckDB connection first.
        max_entries: values kept.

    Returns:
        ``read(db, *args, **kwargs)``; ``read.cached(db: str, mtime: float, args: tuple, kwargs: tuple)`` is the
        cached function itself (for :func:`dashboard.prefetch.queue_prefetch`).
    """
    def run(db: str, mtime: float, args: tuple, kwargs: tuple):
        with store.shared_reader(db) as con:
            return fn(con, *args, **dict(kwargs))

    run.__qualname__ = run.__name__ = f"shared_{fn.__name__}"
    cached = st.cache_resource(max_entries=max_entries, show_spinner=False)(run)

    @functools.wraps(fn)
    def read(db: Path, *args, **kwargs):
        db = Path(db)
        return cached(str(db), db.stat().st_mtime, _frozen(args), tuple(sorted((k, _frozen(v)) for k, v in kwargs.items())))

    read.cached = cached
    return read


list_runs = cached_read(store.list_runs)
run_models = cached_read(store.run_models)
run_config = cached_read(store.run_config)
run_methods = cached_read(store.run_methods)
evaluation_status = cached_read(store.evaluation_status)
failures = cached_read(store.failures)
cohort_patients = cached_read(store.cohort_patients)
table_counts = cached_read(store.table_counts)
run_temperatures = cached_read(store.run_temperatures)
quality_summary = cached_read(store.quality_summary)
quality_patients = cached_read(store.quality_patients)
patient_measure = cached_read(store.patient_measure)
patient_metrics = cached_read(store.patient_metrics)
patient_maps = cached_read(store.patient_maps)
review_budget_ranking = cached_read(store.review_budget_ranking)
patient_source = cached_read(store.patient_source)
calibration_dense = cached_read(store.calibration_dense)
summed_calibration_bins = cached_read(store.summed_calibration_bins)
summed_uncertainty_bins = cached_read(store.summed_uncertainty_bins)
cohort_threshold_ueo = cached_read(store.cohort_threshold_ueo)
cohort_leaderboard = cached_read(store.cohort_leaderboard)
study_report = cached_read(report.build_report)
threshold_cubes = shared_read(store.threshold_cubes)
