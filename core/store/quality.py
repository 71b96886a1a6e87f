"""The quality-prediction tables of a run, recomputed from its stored metrics (:mod:`core.analysis.quality`)."""
from __future__ import annotations

import json

import pandas as pd

from core.store.writes import write_quality
from core.analysis.quality import FEATURES, quality_for


def update_quality(con, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Recompute the run's quality prediction for every (model, method) and store it (one transaction).

    Args:
        con: a writer connection.
        run_id: the run; (model, method) pairs with at least one ok evaluation and stored metrics are used.

    Returns:
        (per-patient rows, summary rows) as written (:func:`core.store.writes.write_quality`; ``features``
        as JSON); two empty frames when no pair has metrics.
    """

    metrics = sorted({m for _, m in FEATURES} | {"dice"})
    pairs = con.execute("SELECT DISTINCT model, method FROM evaluations WHERE run_id = ? AND status = 'ok' "
                        "ORDER BY model, method", [run_id]).fetchall()
    pers, summs = [], []
    for model, method in pairs:
        long = con.execute(
            "SELECT patient_id, region, mask, metric, value FROM metrics WHERE run_id = ? AND model = ? AND method = ? "
            "AND metric IN (SELECT unnest(?::VARCHAR[]))", [run_id, model, method, metrics]).df()
        if long.empty:
            continue
        per, summ = quality_for(long)
        for df in (per, summ):
            df.insert(0, "method", method)
            df.insert(0, "model", model)
        pers.append(per)
        summs.append(summ)
    per_all = pd.concat(pers, ignore_index=True) if pers else pd.DataFrame()
    summ_all = pd.concat(summs, ignore_index=True) if summs else pd.DataFrame()
    if len(summ_all):
        summ_all["features"] = summ_all["features"].map(json.dumps)
    write_quality(con, run_id, per_all, summ_all)
    return per_all, summ_all
