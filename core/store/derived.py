"""Derived tables for fast reads by the app: built from the long tables at the end of a batch.

The long tables (``metrics``: one row per number; ``calibration_bins`` / ``uncertainty_bins``: one row per
patient and bin) are the data interface and stay the truth. At 10,000 patients they hold tens to hundreds of
millions of rows, and every page would scan them. So the batch (:func:`core.batch.pipeline.run_batch`), the merge
(:func:`core.batch.merge.merge_databases`) and ``python -m core derive`` write, per run:

* ``patient_summary``: one row per ok evaluation (model, method, patient), region and mask ('brain' / 'roi')
  with the page metrics of :data:`WIDE_METRICS` as DOUBLE columns (NULL = undefined), each taken in the
  row's mask except those stored for one voxel set only (:data:`core.store.BRAIN_ONLY` -> 'brain',
  :data:`core.store.PRED_ONLY` -> 'pred'), plus :data:`PRED_COLUMNS` (means over the predicted region). It is
  exactly :func:`core.store.metric_wide` of those metrics (the same pivot writes it).
* (the bins need no list copy: ``calibration_hist`` / ``uncertainty_hist`` store them as lists already, one row
  per (evaluation, region, mask[, measure]), and the per-group sums read them directly.)
* ``cohort_calibration_bins`` / ``cohort_uncertainty_bins``: the bins summed over every patient of the run
  (what :func:`core.store.summed_calibration_bins` with no patient list returns).
* ``cohort_ueo_summary`` / ``cohort_ueo_patients``: per mask, the U-E overlap and BnF at one cohort threshold of
  every (model, method, region) over every patient of the run, and each patient's U-E at it and its oracle
  (:func:`core.store.cohort_threshold_ueo` with no patient list: what the Review budget page shows first).
* ``cohort_leaderboard``: per mask, the leaderboard of every (model, method, region) over every patient of
  the run with its Poisson-bootstrap intervals (:func:`core.analysis.stats.leaderboard`, B = 1000, seed 0): what the
  Compare page shows for the whole cohort, so its first render does not bootstrap 10,000 patients.
* ``derived_state``: per run, when they were built and from what: the count of ok evaluations and the latest
  ``evaluations.finished_at``. :func:`valid` compares those with the live table, so a reader never uses
  derived rows that a later (or running) batch has made stale; it falls back to the long tables then.

Lists instead of long rows: a read of 10,000 patients' bins is a few hundred thousand rows whose list values
arrive in numpy through Arrow without a string per bin (see :func:`list_arrays`).
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from core.store.connection import transaction
from core.store.reads import calibration_bin_arrays, metric_wide
from core.analysis import stats, ueo
from core.store.freshness import _state, table_names
from core.store.schema import LEADERBOARD_METRICS, MASKS, UEO_PATIENT_COLUMNS, UEO_SUMMARY_COLUMNS, PRED_COLUMNS, TABLES, WIDE_METRICS, _schema, _summary_columns



def build(con, run_id: str) -> dict:
    """(Re)build the run's derived tables in one transaction.

    A table whose columns no longer match this module's (an older version) is dropped and recreated, which
    invalidates every run's derived rows until they are rebuilt.

    Args:
        con: a writer connection.
        run_id: the run.

    Returns:
        ``{"rows": {table: rows written}, "seconds": float}``.
    """

    t0 = time.perf_counter()
    existing = table_names(con)
    if "patient_summary" in existing:
        have = [r[0] for r in con.execute("""SELECT column_name FROM information_schema.columns
                                            WHERE table_name = 'patient_summary' ORDER BY ordinal_position""").fetchall()]
        if have[6:] != _summary_columns():
            for t in TABLES + ("derived_state",):
                con.execute(f"DROP TABLE IF EXISTS {t}")
    con.execute(_schema())
    for old in ("patient_calibration", "patient_uncertainty"):  # an older version's list copies of the bins
        con.execute(f"DROP TABLE IF EXISTS {old}")
    rows = {}
    with transaction(con):
        for t in TABLES + ("derived_state",):
            con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])
        n_ok, last = _state(con, run_id)
        # per-patient wide summary: the same pivot as store.metric_wide, one mask at a time
        parts = []
        for mask in MASKS:
            wide = metric_wide(con, run_id, WIDE_METRICS, mask=mask, derived=False)
            pred = metric_wide(con, run_id, [m for m, _ in PRED_COLUMNS], mask="pred", derived=False)
            pred = pred.rename(columns={m: PRED_COLUMNS[(m, "pred")] for m, _ in PRED_COLUMNS})
            keys = ["model", "method", "patient_id", "region"]
            df = wide.merge(pred, on=keys, how="outer") if len(pred) else wide.assign(
                **{c: np.nan for c in PRED_COLUMNS.values()})
            df.insert(0, "run_id", run_id)
            df.insert(5, "mask", mask)
            parts.append(df[["run_id"] + keys[:3] + ["region", "mask"] + _summary_columns()])
        summary = pd.concat(parts, ignore_index=True)
        con.register("_summary", summary)
        con.execute("INSERT INTO patient_summary SELECT * FROM _summary")
        con.unregister("_summary")
        rows["patient_summary"] = len(summary)
        con.execute("""
            INSERT INTO cohort_calibration_bins
            SELECT run_id, model, method, region, mask, bin, sum(n)::DOUBLE, sum(sum_prob), sum(sum_true)
            FROM calibration_bins WHERE run_id = ? GROUP BY ALL""", [run_id])
        con.execute("""
            INSERT INTO cohort_uncertainty_bins
            SELECT run_id, model, method, region, mask, measure, bin, sum(n_error)::DOUBLE, sum(n_correct)::DOUBLE,
                   sum(n_fp)::DOUBLE, sum(n_fn)::DOUBLE, sum(n_tp)::DOUBLE
            FROM uncertainty_bins WHERE run_id = ? GROUP BY ALL""", [run_id])
        for t in TABLES[1:]:
            rows[t] = con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchall()[0][0]
        con.execute("INSERT INTO derived_state VALUES (?, now(), ?, ?, NULL)", [run_id, int(n_ok), last])
        # from here the reads below use the rows just written (the same transaction sees them as valid)
        rows["cohort_leaderboard"] = _write_leaderboard(con, run_id, summary)
        rows["cohort_ueo_summary"], rows["cohort_ueo_patients"] = _write_cohort_ueo(con, run_id)
        con.execute("UPDATE derived_state SET seconds = ? WHERE run_id = ?", [time.perf_counter() - t0, run_id])
    return {"rows": rows, "seconds": round(time.perf_counter() - t0, 3)}


def _write_cohort_ueo(con, run_id: str, measure: str = "entropy") -> tuple[int, int]:
    """cohort_ueo_summary / cohort_ueo_patients rows of the run (every patient), per mask, one (model, method) at a
    time so that a 50,000-patient run's histograms are never all in memory."""
    from core.store.reads import threshold_cubes

    combos = con.execute("SELECT DISTINCT model, method FROM evaluations WHERE run_id = ? AND status = 'ok' ORDER BY ALL",
                         [run_id]).fetchall()
    n_s = n_p = 0
    for mask in MASKS:
        for model, method in combos:
            summ, pts = ueo.cohort_threshold_from_cubes(threshold_cubes(con, run_id, mask, [method], [model], measure))
            for table, df, cols in (("cohort_ueo_summary", summ, UEO_SUMMARY_COLUMNS),
                                    ("cohort_ueo_patients", pts, UEO_PATIENT_COLUMNS)):
                if df.empty:
                    continue
                df = df[cols].copy()
                df.insert(0, "run_id", run_id)
                df.insert(1, "mask", mask)
                df.insert(2, "measure", measure)
                con.register("_ueo", df)
                con.execute(f"INSERT INTO {table} SELECT * FROM _ueo")  # table names of this module, never input
                con.unregister("_ueo")
            n_s, n_p = n_s + len(summ), n_p + len(pts)
    return n_s, n_p


def _write_leaderboard(con, run_id: str, summary: pd.DataFrame) -> int:
    """cohort_leaderboard rows of the run, one mask at a time (a writer connection inside build's transaction)."""

    keys = ["model", "method", "region"]
    n = 0
    for mask in MASKS:
        per = summary[summary["mask"] == mask][keys + ["patient_id"] + LEADERBOARD_METRICS]
        if per.empty:
            continue
        combos = per[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
        pids = sorted(per.patient_id.unique())
        lb = stats.leaderboard(per, calibration_bin_arrays(con, run_id, mask, combos, pids))
        lb = lb.reindex(columns=stats.LEADERBOARD_COLUMNS)
        lb.insert(0, "run_id", run_id)
        lb.insert(1, "mask", mask)
        lb.insert(2, "B", stats.DEFAULT_B)
        lb.insert(3, "seed", 0)
        con.register("_lb", lb)
        con.execute("INSERT INTO cohort_leaderboard SELECT * FROM _lb")
        con.unregister("_lb")
        n += len(lb)
    return n


def build_all(con, echo=None) -> dict:
    """Build the derived tables of every run of the database (``python -m core derive``).

    Args:
        con: a writer connection.
        echo: where a line per run goes (None: silent).

    Returns:
        run_id -> the summary of :func:`build`, for every run with evaluations.
    """
    out = {}
    for (run_id,) in con.execute("SELECT DISTINCT run_id FROM evaluations ORDER BY run_id").fetchall():
        out[run_id] = build(con, run_id)
        if echo:
            echo(f"derived tables of {run_id}: {out[run_id]['rows']} in {out[run_id]['seconds']} s")
    return out
