"""Derived tables for fast reads by the app: built from the long tables at the end of a batch.

The long tables (``metrics``: one row per number; ``calibration_bins`` / ``uncertainty_bins``: one row per
patient and bin) are the data interface and stay the truth. At 10,000 patients they hold tens to hundreds of
millions of rows, and every page would scan them. So the batch (:func:`core.batch.run_batch`), the merge
(:func:`core.merge.merge_databases`) and ``python -m core derive`` write, per run:

* ``patient_summary``: one row per ok evaluation (model, method, patient), region and mask ('brain' / 'roi')
  with the page metrics of :data:`WIDE_METRICS` as DOUBLE columns (NULL = undefined), each taken in the
  row's mask except those stored for one voxel set only (:data:`core.store.BRAIN_ONLY` -> 'brain',
  :data:`core.store.PRED_ONLY` -> 'pred'), plus :data:`PRED_COLUMNS` (means over the predicted region). It is
  exactly :func:`core.store.metric_wide` of those metrics (the same pivot writes it).
* ``patient_calibration``: the per-patient calibration bins as lists, one row per (evaluation, region, mask):
  ``bins`` (bin numbers of the stored, non-empty bins, ascending), ``n``, ``sum_prob``, ``sum_true``.
* ``patient_uncertainty``: the same for the uncertainty histograms of :data:`LIST_MEASURES` (``bins``,
  ``n_error``, ``n_correct``, ``n_fp``, ``n_fn``, ``n_tp``).
* ``cohort_calibration_bins`` / ``cohort_uncertainty_bins``: the bins summed over every patient of the run
  (what :func:`core.store.summed_calibration_bins` with no patient list returns).
* ``cohort_leaderboard``: per mask, the leaderboard of every (model, method, region) over every patient of
  the run with its Poisson-bootstrap intervals (:func:`core.stats.leaderboard`, B = 1000, seed 0): what the
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

WIDE_METRICS = ["dice", "hd95", "volume_gt_ml", "volume_pred_ml", "volume_error_ml", "ece", "ace", "mce", "cal_gap",
                "brier", "nll", "auroc_entropy", "auroc_mi", "auroc_fp_tp", "auroc_fn_tn", "mean_entropy", "mean_mi",
                "mean_epkl", "uncertain_fraction", "ueo_best", "budget_capture_auc", "budget_ueo_auc", "capture_at_5pct"]
# (metric, mask) stored for the predicted region -> column name in patient_summary
PRED_COLUMNS = {("mean_entropy", "pred"): "mean_entropy_pred", ("mean_mi", "pred"): "mean_mi_pred",
                ("mean_epkl", "pred"): "mean_epkl_pred", ("mean_confidence", "pred"): "mean_confidence"}
LIST_MEASURES = ("entropy",)
MASKS = ("brain", "roi")
CAL_COLS = ["n", "sum_prob", "sum_true"]
UNC_COLS = ["n_error", "n_correct", "n_fp", "n_fn", "n_tp"]
KEYS = "run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR"
TABLES = ("patient_summary", "patient_calibration", "patient_uncertainty", "cohort_calibration_bins",
          "cohort_uncertainty_bins", "cohort_leaderboard")
LEADERBOARD_METRICS = ["dice", "auroc_entropy"]


def _summary_columns() -> list[str]:
    return WIDE_METRICS + list(PRED_COLUMNS.values())


def _schema() -> str:
    # column names come from the constants above (identifiers of this module), never from input
    from .stats import LEADERBOARD_COLUMNS

    cols = ", ".join(f"{c} DOUBLE" for c in _summary_columns())
    lb_cols = ", ".join(f"{c} VARCHAR" if c in ("model", "method", "region") else
                        f"{c} BIGINT" if c == "n_patients" or c.endswith(("_n", "_nan")) else f"{c} DOUBLE"
                        for c in LEADERBOARD_COLUMNS)
    return f"""
CREATE TABLE IF NOT EXISTS derived_state (
    run_id VARCHAR PRIMARY KEY, built_at TIMESTAMP, n_ok BIGINT, last_finished TIMESTAMP, seconds DOUBLE);
CREATE TABLE IF NOT EXISTS patient_summary ({KEYS}, {cols});
CREATE TABLE IF NOT EXISTS patient_calibration ({KEYS}, bins INTEGER[], n DOUBLE[], sum_prob DOUBLE[],
    sum_true DOUBLE[]);
CREATE TABLE IF NOT EXISTS patient_uncertainty ({KEYS}, measure VARCHAR, bins INTEGER[], n_error BIGINT[],
    n_correct BIGINT[], n_fp BIGINT[], n_fn BIGINT[], n_tp BIGINT[]);
CREATE TABLE IF NOT EXISTS cohort_calibration_bins (run_id VARCHAR, model VARCHAR, method VARCHAR, region VARCHAR,
    mask VARCHAR, bin INTEGER, n DOUBLE, sum_prob DOUBLE, sum_true DOUBLE);
CREATE TABLE IF NOT EXISTS cohort_uncertainty_bins (run_id VARCHAR, model VARCHAR, method VARCHAR, region VARCHAR,
    mask VARCHAR, measure VARCHAR, bin INTEGER, n_error DOUBLE, n_correct DOUBLE, n_fp DOUBLE, n_fn DOUBLE,
    n_tp DOUBLE);
CREATE TABLE IF NOT EXISTS cohort_leaderboard (run_id VARCHAR, mask VARCHAR, B INTEGER, seed INTEGER, {lb_cols});
"""


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def _state(con, run_id: str) -> tuple[int, object]:
    return con.execute("""SELECT count(*) FILTER (WHERE status = 'ok'), max(finished_at) FROM evaluations
                          WHERE run_id = ?""", [run_id]).fetchall()[0]


def valid(con, run_id: str) -> bool:
    """True when the run's derived tables exist and were built from the evaluations the database holds now
    (same count of ok evaluations, same latest finish time)."""
    if "derived_state" not in _tables(con):
        return False
    rows = con.execute("SELECT n_ok, last_finished FROM derived_state WHERE run_id = ?", [run_id]).fetchall()
    if not rows:
        return False
    row = rows[0]
    n_ok, last = _state(con, run_id)
    return int(row[0]) == int(n_ok) and row[1] == last


def build(con, run_id: str) -> dict:
    """(Re)build the run's derived tables in one transaction (a writer connection). Returns rows per table and
    seconds. A table whose columns no longer match this module's (an older version) is dropped and recreated,
    which invalidates every run's derived rows until they are rebuilt."""
    from . import store

    t0 = time.perf_counter()
    existing = _tables(con)
    if "patient_summary" in existing:
        have = [r[0] for r in con.execute("""SELECT column_name FROM information_schema.columns
                                            WHERE table_name = 'patient_summary' ORDER BY ordinal_position""").fetchall()]
        if have[6:] != _summary_columns():
            for t in TABLES + ("derived_state",):
                con.execute(f"DROP TABLE IF EXISTS {t}")
    con.execute(_schema())
    rows = {}
    with store.transaction(con):
        for t in TABLES + ("derived_state",):
            con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])
        n_ok, last = _state(con, run_id)
        # per-patient wide summary: the same pivot as store.metric_wide, one mask at a time
        parts = []
        for mask in MASKS:
            wide = store.metric_wide(con, run_id, WIDE_METRICS, mask=mask, derived=False)
            pred = store.metric_wide(con, run_id, [m for m, _ in PRED_COLUMNS], mask="pred", derived=False)
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
            INSERT INTO patient_calibration
            SELECT run_id, model, method, patient_id, region, mask, list(bin ORDER BY bin), list(n::DOUBLE ORDER BY bin),
                   list(sum_prob ORDER BY bin), list(sum_true ORDER BY bin)
            FROM calibration_bins WHERE run_id = ? AND mask IN ('brain', 'roi') GROUP BY ALL""", [run_id])
        con.execute("""
            INSERT INTO patient_uncertainty
            SELECT run_id, model, method, patient_id, region, mask, measure, list(bin ORDER BY bin),
                   list(n_error ORDER BY bin), list(n_correct ORDER BY bin), list(n_fp ORDER BY bin),
                   list(n_fn ORDER BY bin), list(n_tp ORDER BY bin)
            FROM uncertainty_bins WHERE run_id = ? AND list_contains(?::VARCHAR[], measure) GROUP BY ALL""",
                    [run_id, list(LIST_MEASURES)])
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
        con.execute("UPDATE derived_state SET seconds = ? WHERE run_id = ?", [time.perf_counter() - t0, run_id])
    return {"rows": rows, "seconds": round(time.perf_counter() - t0, 3)}


def _write_leaderboard(con, run_id: str, summary: pd.DataFrame) -> int:
    """cohort_leaderboard rows of the run, one mask at a time (a writer connection inside build's transaction)."""
    from . import stats, store

    keys = ["model", "method", "region"]
    n = 0
    for mask in MASKS:
        per = summary[summary["mask"] == mask][keys + ["patient_id"] + LEADERBOARD_METRICS]
        if per.empty:
            continue
        combos = per[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
        pids = sorted(per.patient_id.unique())
        lb = stats.leaderboard(per, store.calibration_bin_arrays(con, run_id, mask, combos, pids))
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
    """Build the derived tables of every run of the database (``python -m core derive``)."""
    out = {}
    for (run_id,) in con.execute("SELECT DISTINCT run_id FROM evaluations ORDER BY run_id").fetchall():
        out[run_id] = build(con, run_id)
        if echo:
            echo(f"derived tables of {run_id}: {out[run_id]['rows']} in {out[run_id]['seconds']} s")
    return out


def list_arrays(table, list_cols: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Arrow table with list columns (same lengths row by row) -> (row index of every entry (E,) int64,
    {column: flattened values (E,)}). ``bins`` gives the lengths."""
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
