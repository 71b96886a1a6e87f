"""Cached table builders of the Compare page (bootstrap leaderboard, paired tests) and CI formatting.

Thin glue between :mod:`dashboard.state` (cached read-only queries) and :mod:`core.stats` (pure statistics);
the results are cached per database file version and patient subset, so moving a widget that does not change
the subset does not redo the bootstrap.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import stats, store
from dashboard.state import Selection, patient_table, subset_key

LEADERBOARD_METRICS = ["dice", "auroc_entropy"]


@st.cache_resource(max_entries=16, show_spinner=False)  # large and read-only: no pickled copy per rerun
def _bin_arrays(db: str, mtime: float, run_id: str, mask: str, _combos: pd.DataFrame, combos_key: tuple,
                pids_key: str, _pids: tuple) -> dict:
    con = store.connect(db, read_only=True)
    try:
        out = store.calibration_bin_arrays(con, run_id, mask, _combos, list(_pids))
    finally:
        con.close()
    for v in out.values():
        v.flags.writeable = False  # shared by every session
    return out


def _sorted_ids(s: pd.Series) -> np.ndarray:
    """Sorted unique patient ids as an object array (unique() in Arrow, not a Python loop over every row)."""
    return np.sort(np.asarray(s.unique(), dtype=object))


@st.cache_data(max_entries=64, show_spinner="Bootstrapping confidence intervals ...")
def _leaderboard(db: str, mtime: float, run_id: str, mask: str, methods: tuple, models: tuple, patients_key: str,
                 B: int, _wide: pd.DataFrame, _all: pd.DataFrame) -> pd.DataFrame:
    if _wide.empty:
        return stats.leaderboard(_wide)
    keys = ["model", "method", "region"]
    # per-patient bins of ALL patients are read once (cached) and re-indexed to this subset in memory
    combos = _wide[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    all_pids = _sorted_ids(_all.patient_id)
    arrays = _bin_arrays(db, mtime, run_id, mask, combos, tuple(map(tuple, combos.to_numpy())),
                         subset_key(all_pids), tuple(all_pids))
    sub = _sorted_ids(_wide.patient_id)
    if len(sub) == len(all_pids):  # nobody filtered out: the same patient indices
        return stats.leaderboard(_wide, arrays, B=B)
    # position of each of ALL patients in the subset (-1: outside), then per bin row by an integer gather
    ppos = pd.Index(sub).get_indexer(all_pids)
    pos = ppos[arrays["patient"]]
    inside = pos >= 0
    sub_arrays = {k: v[inside] for k, v in arrays.items()}
    sub_arrays["patient"] = pos[inside]
    return stats.leaderboard(_wide, sub_arrays, B=B)


def leaderboard(sel: Selection, methods: list[str], B: int = stats.DEFAULT_B) -> pd.DataFrame:
    """model x method x region (the given methods) with Dice, AUROC (means over patients) and dataset ECE, each
    with a 95 % patient-bootstrap interval over the patients inside the entropy filter, and the patient counts
    behind them (:func:`core.stats.leaderboard`). Cached per database version, methods and patient subset."""
    everyone = patient_table(sel, LEADERBOARD_METRICS, subset=False, method=methods[0] if len(methods) == 1 else None)
    everyone = everyone[everyone.method.isin(methods) & everyone.model.isin(sel.models)]
    wide = everyone[everyone.patient_id.isin(sel.patients)] if len(sel.patients) < len(sel.all_patients) else everyone
    key = subset_key(_sorted_ids(wide.patient_id), _sorted_ids(everyone.patient_id))
    return _leaderboard(str(sel.db), sel.db.stat().st_mtime, sel.run_id, sel.mask, tuple(sorted(methods)),
                        tuple(sorted(sel.models)), key, B, _wide=wide, _all=everyone)


def csv_later(df: pd.DataFrame):
    """The ``data`` of a CSV download button, built only when the user clicks it (a 40,000-row table would
    otherwise be rendered to CSV on every rerun)."""
    return lambda: df.to_csv(index=False)


def fmt_ci(est: float, lo: float, hi: float, digits: int = 3) -> str:
    """'0.812 [0.781, 0.840]'; '-' for a missing estimate."""
    if est is None or not math.isfinite(est):
        return "-"
    if lo is None or not math.isfinite(lo):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def leaderboard_display(lb: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Readable leaderboard: one string column per metric with its interval, counts, pooled AUROC from bins."""
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
        "ECE dataset [95 % CI]": [fmt_ci(r.ece_dataset, r.ece_dataset_lo, r.ece_dataset_hi, 4)
                                  if "ece_dataset" in out else "-" for r in out.itertuples()],
        "_dice": out.dice,
    })
    disp["region"] = pd.Categorical(disp.region, ["WT", "TC", "ET"], ordered=True)
    disp = disp.sort_values(["region", "_dice"], ascending=[True, False]).drop(columns="_dice")
    disp["region"] = disp.region.astype(str)
    return disp.reset_index(drop=True)
