"""Cached table builders of the Compare page (bootstrap leaderboard, paired tests) and CI formatting.

Thin glue between :mod:`dashboard.state` (cached read-only queries) and :mod:`core.stats` (pure statistics);
the results are cached per database file version and patient subset, so moving a widget that does not change
the subset does not redo the bootstrap.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import streamlit as st

from core import stats, store
from dashboard.state import Selection, patient_table

LEADERBOARD_METRICS = ["dice", "auroc_entropy"]


@st.cache_data(max_entries=16, show_spinner=False)
def _patient_bins(db: str, mtime: float, run_id: str, mask: str, methods: tuple) -> pd.DataFrame:
    con = store.connect(db, read_only=True)
    try:
        return store.calibration_bins_subset(con, run_id, None, mask=mask, methods=list(methods))
    finally:
        con.close()


@st.cache_data(max_entries=64, show_spinner="Bootstrapping confidence intervals ...")
def _leaderboard(db: str, mtime: float, run_id: str, mask: str, methods: tuple, models: tuple, patients: tuple | None,
                 B: int, _wide: pd.DataFrame) -> pd.DataFrame:
    bins = _patient_bins(db, mtime, run_id, mask, methods)
    if patients is not None:
        bins = bins[bins.patient_id.isin(patients)]
    return stats.leaderboard(_wide, bins, B=B)


def leaderboard(sel: Selection, methods: list[str], B: int = stats.DEFAULT_B) -> pd.DataFrame:
    """model x method x region (the given methods) with Dice, AUROC (means over patients) and dataset ECE, each
    with a 95 % patient-bootstrap interval over the patients inside the entropy filter, and the patient counts
    behind them (:func:`core.stats.leaderboard`). Cached per database version, methods and patient subset."""
    wide = patient_table(sel, LEADERBOARD_METRICS)
    wide = wide[wide.method.isin(methods) & wide.model.isin(sel.models)]
    subset = None if len(sel.patients) == len(sel.all_patients) else tuple(sel.patients)
    return _leaderboard(str(sel.db), sel.db.stat().st_mtime, sel.run_id, sel.mask, tuple(sorted(methods)),
                        tuple(sorted(sel.models)), subset, B, _wide=wide)


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
