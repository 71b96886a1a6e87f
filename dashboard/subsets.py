"""The filtered patients' bins, per-patient tables and cohort summaries, from per-group sums cached per
stratification (a move of the entropy filter adds groups, it does not reread patients)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core import store
from core.analysis import summaries
from core.analysis.strata import groups_kept
from core.metrics.binning import sum_by_bin
from dashboard import reads
from dashboard.prefetch import queue_prefetch
from dashboard.selection import Selection


# cache_resource, not cache_data: these values are large (per-group bins of every combo, per-patient tables)
# and only read; cache_data would pickle them on every miss and unpickle a copy on every rerun
@st.cache_resource(max_entries=32, show_spinner=False)
def _rollup(db: str, mtime: float, run_id: str, kind: str, mask: str, measure: str, methods: tuple | None,
            columns: tuple | None, groups_key: str, _pids: tuple, _gids: tuple) -> dict:
    with store.shared_reader(db) as con:
        out = store.grouped_bins(con, run_id, kind, list(_pids), list(_gids), mask=mask, measure=measure,
                                 methods=None if methods is None else list(methods),
                                 columns=None if columns is None else list(columns))
        for v in out.values():
            if isinstance(v, np.ndarray):
                v.flags.writeable = False  # shared by every session (cache_resource)
        return out


def subset_bins(sel: Selection, kind: str, mask: str | None = None, measure: str = "entropy",
                methods: list[str] | None = None, columns: list[str] | None = None,
                region: str | None = None) -> pd.DataFrame:
    """The filtered patients' bins, summed over the patients inside the entropy filter.

    The whole range (0-100 %) reads the cohort totals (every patient of the run) and queues, in the background,
    the per-group sums the first move of the filter will need. Other ranges are computed from per-group sums
    read once per stratification (:func:`core.store.grouped_bins`, cached), so moving the quantile filter adds
    up a few dozen groups' rows (numpy) instead of rereading every patient.

    Args:
        sel: the selection (run, filter).
        kind: 'calibration' or 'uncertainty'.
        mask: the voxel set (default: the sidebar's).
        measure: the uncertainty measure of ``kind`` 'uncertainty' (e.g. 'entropy').
        methods: only these methods (default: every method of the run).
        columns: only these count columns of ``kind`` 'uncertainty' (default: all).
        region: only this region's rows (default: every region); a filter move then sums only its groups' rows.

    Returns:
        one row per (model, method, region, bin) with the count columns, as
        :func:`core.store.summed_calibration_bins` / :func:`core.store.summed_uncertainty_bins`; empty when
        there are no such bins.
    """
    mask = mask or sel.mask
    if region is not None and (sel.review_filtered or tuple(sel.q_range) == (0, 100)):
        df = subset_bins(sel, kind, mask, measure, methods, columns)  # SQL sums / cohort totals: filtered after
        return df[df.region == region].reset_index(drop=True)
    args = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, kind, mask, measure,
            None if methods is None else tuple(sorted(methods)), None if columns is None else tuple(columns),
            sel.groups_key, sel.group_pids, sel.group_ids)
    if sel.review_filtered:  # the review-status filter: the SQL sums of exactly these patients
        meths = None if methods is None else sorted(methods)
        if kind == "calibration":
            return reads.summed_calibration_bins(sel.db, sel.run_id, sorted(sel.patients), mask, methods=meths)
        return reads.summed_uncertainty_bins(sel.db, sel.run_id, sorted(sel.patients), mask, measure, methods=meths,
                                             columns=None if columns is None else list(columns))
    if tuple(sel.q_range) == (0, 100):  # everyone: the cohort totals (written by the batch, see core.derived)
        meths = None if methods is None else sorted(methods)
        if kind == "calibration":
            df = reads.summed_calibration_bins(sel.db, sel.run_id, None, mask, methods=meths)
        else:
            df = reads.summed_uncertainty_bins(sel.db, sel.run_id, None, mask, measure, methods=meths,
                       columns=None if columns is None else list(columns))
        queue_prefetch(_rollup, args)  # what the first move of the filter will need: computed after the page is drawn
        return df
    roll = _rollup(*args)
    combos, cols = roll["combos"], roll["columns"]
    if not len(roll["g"]):
        return pd.DataFrame(columns=["model", "method", "region", "bin"] + cols)
    keep = groups_kept(roll["g"], sel.q_range)
    if region is not None:
        keep &= np.isin(roll["combo"], np.flatnonzero(combos.region.to_numpy() == region))
    c, b, sums = sum_by_bin(roll["combo"][keep], roll["bin"][keep], roll["counts"][keep], len(combos),
                            int(roll["bin"].max()) + 1)
    out = pd.DataFrame({"model": combos.model.to_numpy()[c], "method": combos.method.to_numpy()[c],
                        "region": combos.region.to_numpy()[c], "bin": b.astype(np.int32)})
    for j, col in enumerate(cols):
        out[col] = sums[:, j]
    return out


@st.cache_resource(max_entries=64, show_spinner=False)
def _patient_table(db: str, mtime: float, run_id: str, metrics: tuple, mask: str, method: str | None):
    with store.shared_reader(db) as con:
        return store.metric_wide(con, run_id, list(metrics), mask=mask, method=method)


@st.cache_resource(max_entries=64, show_spinner=False)
def _row_groups(key: tuple, groups_key: str, _df: pd.DataFrame, _pids: tuple, _gids: tuple) -> np.ndarray:
    """Quantile group id (:func:`quantile_groups`) per row of a cached per-patient table; -2 for a patient
    without a value of the stratifying measure (kept, like every patient, only by the whole range 0-100)."""
    pos = pd.Index(list(_pids)).get_indexer(_df.patient_id.to_numpy(object))
    gids = np.asarray(_gids, np.int64)
    out = np.where(pos >= 0, gids[np.maximum(pos, 0)] if len(gids) else -2, -2)
    out.flags.writeable = False
    return out


def _rows_kept(sel: Selection, key: tuple, df: pd.DataFrame) -> np.ndarray:
    """(R,) bool: the rows of the cached table ``df`` (cache key ``key``) whose patient is inside the filter."""
    if sel.review_filtered:  # the review-status filter is not a union of quantile groups: by id
        return df.patient_id.isin(set(sel.patients)).to_numpy()
    return groups_kept(_row_groups(key, sel.groups_key, df, sel.group_pids, sel.group_ids), sel.q_range)


def patient_table(sel: Selection, metrics: list[str], mask: str | None = None, method: str | None = None,
                  subset: bool = True) -> pd.DataFrame:
    """Per-patient metrics (:func:`core.store.metric_wide`) of every patient of the run, read once and cached.

    The table is cached per database version, run, metrics, mask and method; ``subset`` keeps the patients
    inside the entropy filter (a boolean mask of the rows' cached quantile groups, not a lookup of thousands of
    patient ids).

    Args:
        sel: the selection (run, filter).
        metrics: the metric columns.
        mask: the voxel set (default: the sidebar's).
        method: only this method's rows (None: every method).
        subset: keep only the patients inside the entropy filter.

    Returns:
        model, method, patient_id, region, <metric>... (NaN where undefined), one row per ok evaluation and
        region. It may be the cached frame itself, shared by every session: do not modify it in place.
    """
    key = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, tuple(metrics), mask or sel.mask, method)
    df = _patient_table(*key)
    if subset:
        df = _subset_rows(sel, key, df)
    return df


def _subset_rows(sel: Selection, key: tuple, df: pd.DataFrame) -> pd.DataFrame:
    if len(sel.patients) != len(sel.all_patients):
        return df[_rows_kept(sel, key, df)]
    queue_prefetch(_row_groups, (key, sel.groups_key, df, sel.group_pids, sel.group_ids), n_private=3)
    return df


@st.cache_resource(max_entries=32, show_spinner=False)
def _summary_parts(key: tuple, _df: pd.DataFrame) -> dict:

    return summaries.summary_parts(_df)


def subset_summary(sel: Selection, mask: str | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """Cohort metrics of the filtered patients per model, method and region.

    These are :func:`core.analysis.summaries.cohort_summary` of the cached per-patient table and the filtered
    summed bins (:func:`subset_bins`): the same numbers as :func:`core.store.cohort_summary` on ``sel.patients``.

    Args:
        sel: the selection (run, filter).
        mask: the voxel set (default: the sidebar's).
        methods: only these methods (default: all).

    Returns:
        one row per (model, method, region), columns as :func:`core.store.cohort_summary`.
    """

    mask = mask or sel.mask
    # one method: read only its rows (a quarter of a 4-method run's); several: all, the others dropped at the end
    key = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, tuple(store.SUMMARY_METRICS), mask,
           methods[0] if methods and len(methods) == 1 else None)
    wide = _patient_table(*key)
    keep = None
    if len(sel.patients) != len(sel.all_patients):
        keep = _rows_kept(sel, key, wide)
    else:  # the first move of the filter needs the rows' groups: found in the background meanwhile
        queue_prefetch(_row_groups, (key, sel.groups_key, wide, sel.group_pids, sel.group_ids), n_private=3)
    out = summaries.cohort_summary(wide, subset_bins(sel, "calibration", mask, methods=methods),
                                   subset_bins(sel, "uncertainty", mask, methods=methods,
                                               columns=["n_error", "n_correct"]),
                                   parts=_summary_parts(key, wide), keep=keep)
    return out if methods is None else out[out.method.isin(methods)].reset_index(drop=True)
