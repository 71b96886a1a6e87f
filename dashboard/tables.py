"""Cached table builders of the Compare page (bootstrap leaderboard, paired tests) and CI formatting.

Thin glue between :mod:`dashboard.subsets` (cached read-only queries) and :mod:`core.analysis.stats` (pure statistics);
the bootstrap's per-group sums are cached per database file version and stratification, so moving the entropy
filter adds up groups instead of resampling patients.
"""
from __future__ import annotations

import hashlib
import math
import re
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import streamlit as st

from core import store
from core.analysis import stats
from core.analysis.strata import groups_kept
from dashboard import memo, reads
from dashboard.prefetch import queue_prefetch
from dashboard.selection import Selection
from dashboard.subsets import patient_table


LEADERBOARD_METRICS = list(stats.MEAN_METRICS)


def _sorted_ids(s: pd.Series) -> np.ndarray:
    """Sorted unique patient ids as an object array (unique() in Arrow, not a Python loop over every row)."""
    return np.sort(np.asarray(s.unique(), dtype=object))


# cache_resource: per-group replicate sums of every combo (tens of MB at 10,000 patients), only read
@st.cache_resource(max_entries=6, show_spinner=False)
def _leaderboard_parts(db: str, mtime: float, run_id: str, mask: str, methods: tuple, models: tuple, groups_key: str,
                       B: int, _everyone: pd.DataFrame, _gpids: tuple, _gids: tuple) -> dict:
    keys = ["model", "method", "region"]
    combos = _everyone[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    with store.shared_reader(db) as con:
        arrays = store.calibration_bin_arrays(con, run_id, mask, combos, list(_sorted_ids(_everyone.patient_id)))
    parts = stats.leaderboard_parts(_everyone, arrays, pd.Series(_gids, index=list(_gpids), dtype="float64"), B=B)
    for v in parts.values():
        for a in (v.values() if isinstance(v, dict) else [v]):
            if isinstance(a, np.ndarray):
                a.flags.writeable = False  # shared by every session
    return parts


@memo.per_selection
def leaderboard(sel: Selection, methods: list[str], B: int = stats.DEFAULT_B) -> pd.DataFrame:
    """The leaderboard of the patients inside the entropy filter, with 95 % Poisson-bootstrap intervals.

    One row per model x method x region (the selected models, the given methods) with Dice, AUROC (means over
    patients) and dataset ECE, each with its interval, and the patient counts behind them
    (:func:`core.analysis.stats.leaderboard`).

    The whole cohort reads the batch's leaderboard (:func:`core.store.cohort_leaderboard`) and queues, for the
    first move of the filter, the per-quantile-group replicate sums of every patient
    (:func:`core.analysis.stats.leaderboard_parts`, cached per database version, methods, models and
    stratification); any other range (or a database without the stored leaderboard) adds up its groups' sums
    (:func:`core.analysis.stats.leaderboard_from_parts`): the same numbers as bootstrapping the subgroup's
    patients afresh, without a pass over them.

    Args:
        sel: the selection (run, models, mask, filter).
        methods: the methods to rank (at least one).
        B: bootstrap replicates.

    Returns:
        one row per (model, method, region) with the columns of :func:`core.analysis.stats.leaderboard`
        (n_patients; <m>, <m>_lo, <m>_hi, <m>_n, <m>_nan of dice and auroc_entropy; ece_dataset(_lo, _hi));
        empty when no patient row matches.
    """
    everyone = patient_table(sel, LEADERBOARD_METRICS, subset=False, method=methods[0] if len(methods) == 1 else None)
    everyone = everyone[everyone.method.isin(methods) & everyone.model.isin(sel.models)]
    if everyone.empty:
        return stats.leaderboard(everyone)
    args = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, sel.mask, tuple(sorted(methods)), tuple(sorted(sel.models)),
            sel.groups_key, int(B), everyone, sel.group_pids, sel.group_ids)
    if sel.review_filtered:  # the review-status filter: two groups, inside (0) and outside (1), by patient id
        inside = set(sel.patients)
        pids = tuple(sorted(set(everyone.patient_id)))
        gids = tuple(0 if p in inside else 1 for p in pids)
        gkey = hashlib.blake2b(repr(gids).encode() + repr(pids).encode(), digest_size=8).hexdigest()
        parts = _leaderboard_parts(str(sel.db), sel.db.stat().st_mtime, sel.run_id, sel.mask, tuple(sorted(methods)),
                                   tuple(sorted(sel.models)), "review-" + gkey, int(B), everyone, pids, gids)
        return stats.leaderboard_from_parts(parts, np.asarray(parts["groups"]) == 0)
    if tuple(sel.q_range) == (0, 100):
        stored = reads.cohort_leaderboard(sel.db, sel.run_id, sel.mask, sorted(methods), sorted(sel.models), B=int(B))
        if stored is not None:
            queue_prefetch(_leaderboard_parts, args, n_private=3)
            return stored
    parts = _leaderboard_parts(*args)
    return stats.leaderboard_from_parts(parts, groups_kept(parts["groups"], sel.q_range))


@st.cache_resource(max_entries=16, show_spinner=False)
def _cohort_ids(key: tuple, _everyone: pd.DataFrame) -> tuple:
    return tuple(str(p) for p in _sorted_ids(_everyone.patient_id))


def paired(sel: Selection, metrics: list[str], metric: str, a: str, b: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired comparison of models ``a`` and ``b`` on ``metric`` over the patients inside the filter.

    The sidebar's method; :func:`core.analysis.stats.paired_table` with intervals from the Poisson bootstrap of
    the run's cohort: each patient carries the leaderboard's weights, so a move of the filter costs two
    matrix-vector products per region instead of a fresh resampling.

    Args:
        sel: the selection (run, method, mask, filter).
        metrics: the cached per-patient table's columns (with ``metric``), so that pages share one cached table.
        metric: the compared metric.
        a, b: the two models.

    Returns:
        (summary, diffs): one test row per region (with p_holm), and the per-patient rows (region, patient_id,
        a, b, diff = a - b) of the patients both models evaluated.
    """
    everyone = patient_table(sel, metrics, method=sel.method, subset=False)
    ids = _cohort_ids((str(sel.db), sel.db.stat().st_mtime, sel.run_id, tuple(metrics), sel.mask, sel.method), everyone)
    wide = patient_table(sel, metrics, method=sel.method)
    return stats.paired_table(wide[wide.model.isin([a, b])], metric, a, b, cohort_ids=ids)


def paired_methods(sel: Selection, metrics: list[str], compared: list[str], model: str, a: str,
                   b: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired comparison of methods ``a`` and ``b`` of one model over the patients inside the filter, on every
    metric of ``metrics`` (:func:`core.analysis.stats.paired_metrics`: the model comparison's test and
    intervals, paired by patient, the cohort's Poisson bootstrap weights).

    Args:
        sel: the selection (run, mask, filter).
        metrics: the cached per-patient table's columns (so that pages share one cached table).
        compared: the compared metrics (among ``metrics``).
        model: the model.
        a, b: the two methods (e.g. ``mc_dropout`` vs ``deterministic``).

    Returns:
        (summary, diffs): one row per (metric, region) with the :func:`core.analysis.stats.paired_test` fields and
        p_holm (over the regions of each metric); per-patient rows (metric, region, patient_id, a, b, diff = a - b).
    """
    everyone = patient_table(sel, metrics, subset=False)
    ids = _cohort_ids((str(sel.db), sel.db.stat().st_mtime, sel.run_id, tuple(metrics), sel.mask, None), everyone)
    wide = patient_table(sel, metrics)
    wide = wide[(wide.model == model) & wide.method.isin([a, b])]
    return stats.paired_metrics(wide, compared, a, b, by="method", cohort_ids=ids)


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*")


def _quoted(values: pd.Index) -> np.ndarray:
    """Each value percent-encoded for a URL query (most patient ids and model names need nothing)."""
    return np.array([v if _URL_SAFE.fullmatch(v) else quote(v, safe="") for v in values.astype(str)], dtype=object)


def viewer_links(base: str, patient_ids: pd.Series, models: pd.Series) -> np.ndarray:
    """Viewer links of a table's rows, each distinct id percent-encoded once (not per row: tens of thousands
    of rows of the patient table).

    Args:
        base: the link up to its query (e.g. ``"./viewer?db=...&run=..."``).
        patient_ids: (R,) patient id per row.
        models: (R,) model per row.

    Returns:
        (R,) object array of ``base + "&patient=<id>&model=<model>"``.
    """
    pcode, pids = pd.factorize(patient_ids)
    mcode, mods = pd.factorize(models)
    head = np.array([f"{base}&patient={q}&model=" for q in _quoted(pids)], dtype=object)
    return head[pcode] + _quoted(mods)[mcode]


def csv_later(df: pd.DataFrame):
    """The ``data`` of a CSV download button, built only when the user clicks it.

    A table of tens of thousands of rows would otherwise be rendered to CSV on every rerun.

    Args:
        df: the table (written without its index).

    Returns:
        a callable returning the CSV text.
    """
    return lambda: df.to_csv(index=False)


def arrow(df: pd.DataFrame) -> pa.Table:
    """``df`` as an Arrow table (index dropped), for ``st.dataframe`` of a kept (memoised) table.

    ``st.dataframe`` converts a pandas frame to Arrow on every rerun (about 20 ms for the 40,000 rows of a
    10,000-patient scatter); an Arrow table is written out as it is. Keep the result with :func:`dashboard.memo.get`
    beside the frame it came from; row positions (a table selection) are the frame's.

    Args:
        df: the table (columns of plain dtypes: numbers, strings, booleans).

    Returns:
        the table, same columns and rows in the same order.
    """
    return pa.Table.from_pandas(df, preserve_index=False)


def fmt_ci(est: float, lo: float, hi: float, digits: int = 3) -> str:
    """An estimate with its interval as text, e.g. '0.812 [0.781, 0.840]'.

    Args:
        est: the estimate; None or NaN: missing.
        lo, hi: the interval's bounds; a missing ``lo`` (None or NaN) shows the estimate alone.
        digits: decimals.

    Returns:
        the text; '-' for a missing estimate.
    """
    if est is None or not math.isfinite(est):
        return "-"
    if lo is None or not math.isfinite(lo):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def leaderboard_display(lb: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Readable leaderboard: one string column per metric with its interval, counts, pooled AUROC from bins.

    Args:
        lb: the leaderboard (:func:`leaderboard`).
        summary: the cohort summary (:func:`dashboard.subsets.subset_summary`), for its pooled
            ``auroc_entropy_dataset`` (may be empty).

    Returns:
        model, method, region, patients, 'Dice [95 % CI]', 'AUROC mean [95 % CI]', 'AUROC NaN skipped',
        'AUROC pooled', 'lesion PQ [95 % CI]', 'ECE dataset [95 % CI]'; sorted by region (WT, TC, ET), then by Dice, best first.
    """
    pooled = summary[["model", "method", "region", "auroc_entropy_dataset"]] if len(summary) else None
    out = lb.copy()
    if pooled is not None:
        out = out.merge(pooled, on=["model", "method", "region"], how="left")
    disp = pd.DataFrame({
        "model": out.model, "method": out.method, "region": out.region, "patients": out.n_patients,
        "Dice [95 % CI]": [fmt_ci(r.dice, r.dice_lo, r.dice_hi) for r in out.itertuples()],
        "AUROC mean [95 % CI]": [fmt_ci(r.auroc_entropy, r.auroc_entropy_lo, r.auroc_entropy_hi) for r in out.itertuples()],
        "AUROC NaN skipped": out.auroc_entropy_nan,
        "AUROC pooled": out.get("auroc_entropy_dataset"),
        "lesion PQ [95 % CI]": [fmt_ci(r.lesion_pq_dice, r.lesion_pq_dice_lo, r.lesion_pq_dice_hi)
                                if "lesion_pq_dice" in out else "-" for r in out.itertuples()],
        "ECE dataset [95 % CI]": [fmt_ci(r.ece_dataset, r.ece_dataset_lo, r.ece_dataset_hi, 4)
                                  if "ece_dataset" in out else "-" for r in out.itertuples()],
        "_dice": out.dice,
    })
    disp["region"] = pd.Categorical(disp.region, ["WT", "TC", "ET"], ordered=True)
    disp = disp.sort_values(["region", "_dice"], ascending=[True, False]).drop(columns="_dice")
    disp["region"] = disp.region.astype(str)
    return disp.reset_index(drop=True)
