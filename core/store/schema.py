"""The results database's schema and the one list of its names: tables, columns, regions, masks, metrics."""
from __future__ import annotations

from core.analysis.stats import MEAN_METRICS
from core.metrics.lesions import LESION_METRICS
from core.metrics.suite import PatientEvaluation

from core.analysis.stats import LEADERBOARD_COLUMNS


_TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, cohort VARCHAR, config JSON,
    code_version VARCHAR, device VARCHAR);
CREATE TABLE IF NOT EXISTS models (
    run_id VARCHAR, model VARCHAR, checkpoint VARCHAR, card JSON, PRIMARY KEY (run_id, model));
CREATE TABLE IF NOT EXISTS patients (
    cohort VARCHAR, patient_id VARCHAR, source VARCHAR, shape VARCHAR, spacing VARCHAR,
    label_scheme VARCHAR, split VARCHAR, has_gt BOOLEAN, meta JSON, PRIMARY KEY (cohort, patient_id));
CREATE TABLE IF NOT EXISTS evaluations (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, status VARCHAR, seconds DOUBLE,
    error VARCHAR, finished_at TIMESTAMP, PRIMARY KEY (run_id, model, method, patient_id));
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    metric VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS calibration_hist (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    bins INTEGER[], n BIGINT[], sum_prob DOUBLE[], sum_true DOUBLE[]);
CREATE TABLE IF NOT EXISTS uncertainty_hist (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    measure VARCHAR, bins INTEGER[], n_correct BIGINT[], n_fp BIGINT[], n_fn BIGINT[], n_tp BIGINT[]);
CREATE TABLE IF NOT EXISTS maps (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, kind VARCHAR, path VARCHAR);
CREATE TABLE IF NOT EXISTS temperatures (
    run_id VARCHAR, model VARCHAR, method VARCHAR, region VARCHAR, temperature DOUBLE, n_voxels BIGINT,
    n_positive BIGINT, nll_before DOUBLE, nll_after DOUBLE, patients JSON, PRIMARY KEY (run_id, model, method, region));
CREATE TABLE IF NOT EXISTS quality (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR,
    dice DOUBLE, predicted_dice DOUBLE, uncertainty_score DOUBLE, flagged BOOLEAN);
CREATE TABLE IF NOT EXISTS run_plan (
    run_id VARCHAR, model VARCHAR, precision_requested VARCHAR, precision VARCHAR, precision_reason VARCHAR,
    precision_checks JSON, check_patient VARCHAR, mc_batch INTEGER, chunk_trial JSON, device VARCHAR,
    PRIMARY KEY (run_id, model));
CREATE TABLE IF NOT EXISTS quality_summary (
    run_id VARCHAR, model VARCHAR, method VARCHAR, region VARCHAR, n_patients INTEGER, r2 DOUBLE,
    pearson_r DOUBLE, score_spearman DOUBLE, regressor VARCHAR, features JSON);
"""

# The uncertainty histograms are stored one row per histogram (``uncertainty_hist``: the non-empty bins of one
# (evaluation, region, mask, measure) as parallel lists) and read through the view ``uncertainty_bins``, one row
# per non-empty bin as the batch computes them: n_error is not stored (it is n_fp + n_fn, checked at write time).
# One row per histogram stores the seven key columns once instead of once per bin, and the lists of consecutive
# histograms alternate ascending / descending bin order (:func:`uncertainty_hist_insert`), so that the
# bin column's deltas stay small for DuckDB's delta bit-packing; readers must not rely on the view's row order.
UNCERTAINTY_VIEW = """
CREATE VIEW IF NOT EXISTS uncertainty_bins AS
SELECT run_id, model, method, patient_id, region, mask, measure, bin, n_fp + n_fn AS n_error, n_correct, n_fp,
       n_fn, n_tp
FROM (SELECT run_id, model, method, patient_id, region, mask, measure, unnest(bins) AS bin,
             unnest(n_correct) AS n_correct, unnest(n_fp) AS n_fp, unnest(n_fn) AS n_fn, unnest(n_tp) AS n_tp
      FROM uncertainty_hist);
"""

# the calibration bins likewise: one row per (evaluation, region, mask) with its non-empty bins ascending
CALIBRATION_VIEW = """
CREATE VIEW IF NOT EXISTS calibration_bins AS
SELECT run_id, model, method, patient_id, region, mask, unnest(bins) AS bin, unnest(n) AS n,
       unnest(sum_prob) AS sum_prob, unnest(sum_true) AS sum_true
FROM calibration_hist;
"""

SCHEMA = _TABLES + UNCERTAINTY_VIEW + CALIBRATION_VIEW  # every table, then the views


# a temperatures table of a database written before temperatures were fitted per method: rebuilt with the
# method column, its rows (fitted on the primary's deterministic logits) marked as deterministic+ts's
# (:func:`core.store.connection.migrate`)
LEGACY_TS_METHOD = "deterministic+ts"


TEMPERATURE_COLUMNS = ["run_id", "model", "method", "region", "temperature", "n_voxels", "n_positive", "nll_before",
                       "nll_after", "patients"]


RESULT_TABLES = ("metrics", "calibration_bins", "uncertainty_bins", "maps")  # what the suite returns per evaluation
STORED_TABLES = {"uncertainty_bins": "uncertainty_hist", "calibration_bins": "calibration_hist"}  # where stored
VIEWS = {v: t for t, v in STORED_TABLES.items()}  # stored table -> the view that reads it one row per bin
UNC_LIST_COLS = ["n_correct", "n_fp", "n_fn", "n_tp"]  # uncertainty_hist's count lists (bins: the bin list)
UNC_KEY = ["run_id", "model", "method", "patient_id", "region", "mask", "measure"]


def uncertainty_hist_insert(source: str) -> str:
    """SQL inserting the rows of ``source`` (a table or view with ``uncertainty_bins``' columns: one row per
    non-empty bin) into ``uncertainty_hist``, one row per histogram, in key order; the lists of every other
    histogram of an evaluation (by region, mask, measure) run in descending bin order (see :data:`UNCERTAINTY_VIEW`):
    the stored lists depend only on the evaluation's own bins, not on what else is written with it.

    Args:
        source: an identifier of the caller's own (a registered frame, a temporary or legacy table), never input.

    Returns:
        the INSERT statement (no parameters).
    """
    key = ", ".join(UNC_KEY)
    order = "ORDER BY CASE WHEN _odd THEN bin ELSE -bin END"
    lists = ", ".join([f"list(bin::INTEGER {order})"] + [f"list({c}::BIGINT {order})" for c in UNC_LIST_COLS])
    return f"""INSERT INTO uncertainty_hist
               SELECT {key}, {lists}
               FROM (SELECT *, dense_rank() OVER (PARTITION BY run_id, model, method, patient_id
                                                  ORDER BY region, mask, measure) % 2 = 1 AS _odd FROM {source})
               GROUP BY {key} ORDER BY {key}"""


CAL_KEY = ["run_id", "model", "method", "patient_id", "region", "mask"]


def calibration_hist_insert(source: str) -> str:
    """SQL inserting the rows of ``source`` (``calibration_bins``' columns, one row per non-empty bin) into
    ``calibration_hist``, one row per (evaluation, region, mask), bins ascending.

    Args:
        source: an identifier of the caller's own (a registered frame, a legacy table), never input.

    Returns:
        the INSERT statement (no parameters).
    """
    key = ", ".join(CAL_KEY)
    return f"""INSERT INTO calibration_hist
               SELECT {key}, list(bin::INTEGER ORDER BY bin), list(n::BIGINT ORDER BY bin),
                      list(sum_prob::DOUBLE ORDER BY bin), list(sum_true::DOUBLE ORDER BY bin)
               FROM {source} GROUP BY {key} ORDER BY {key}"""


HIST_INSERT = {"uncertainty_bins": uncertainty_hist_insert, "calibration_bins": calibration_hist_insert}
HIST_VIEW = {"uncertainty_bins": UNCERTAINTY_VIEW, "calibration_bins": CALIBRATION_VIEW}


COLUMNS = {  # the per-evaluation tables' own columns (after the evaluation key), as the metric suite returns them
    "metrics": list(PatientEvaluation.METRIC_COLUMNS),
    "calibration_bins": list(PatientEvaluation.CALIBRATION_COLUMNS),
    "uncertainty_bins": list(PatientEvaluation.UNCERTAINTY_COLUMNS),
    "maps": ["kind", "path"],
}


KEY = ["run_id", "model", "method", "patient_id"]


CAL_LIST_COLS = ["n", "sum_prob", "sum_true"]


# metrics the batch stores for one voxel set only, whatever the page's mask
BRAIN_ONLY = {"dice", "hd95", "volume_gt_ml", "volume_pred_ml", "volume_error_ml", "interrater_dice", "rater_dice_mean",
              "vol_sample_mean_ml", "vol_sample_sd_ml", "vol_q05_ml", "vol_q95_ml", "vol_pi_lo_ml", "vol_pi_hi_ml",
              "vol_pi_nominal", "vol_in_pi", "vol_crps_ml", "vol_fcrps_ml",
              "nsd", *LESION_METRICS}


PRED_ONLY = {"mean_confidence"}


UNC_COUNT_COLS = ["n_error", "n_correct", "n_fp", "n_fn", "n_tp"]


SUMMARY_METRICS = ["dice", "ece", "auroc_entropy", "mean_entropy"]


WIDE_METRICS = ["dice", "hd95", "volume_gt_ml", "volume_pred_ml", "volume_error_ml", "ece", "ace", "mce", "cal_gap",
                "overconfidence", "underconfidence",
                "brier", "nll", "auroc_entropy", "auroc_mi", "auroc_fp_tp", "auroc_fn_tn", "mean_entropy", "mean_mi",
                "mean_epkl", "uncertain_fraction", "ueo_best", "budget_capture_auc", "budget_ueo_auc", "capture_at_5pct",
                "nsd", *LESION_METRICS]


# (metric, mask) stored for the predicted region -> column name in patient_summary
PRED_COLUMNS = {("mean_entropy", "pred"): "mean_entropy_pred", ("mean_mi", "pred"): "mean_mi_pred",
                ("mean_epkl", "pred"): "mean_epkl_pred", ("mean_confidence", "pred"): "mean_confidence"}


LIST_MEASURES = ("entropy",)


# the BraTS evaluation regions (one sigmoid channel each) and the voxel sets every calibration metric is stored for
REGIONS = ("WT", "TC", "ET")
MASKS = ("brain", "roi")


KEYS = "run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR"


TABLES = ("patient_summary", "cohort_calibration_bins",
          "cohort_uncertainty_bins", "cohort_leaderboard", "cohort_ueo_summary", "cohort_ueo_patients")
UEO_SUMMARY_COLUMNS = ["model", "method", "region", "n_patients", "t_ueo", "ueo_mean_at_t", "ueo_pooled_at_t",
                       "ueo_oracle_mean", "t_bnf", "bnf_at_t", "n_bnf"]
UEO_PATIENT_COLUMNS = ["model", "method", "region", "patient_id", "ueo_at_t", "ueo_oracle"]


LEADERBOARD_METRICS = list(MEAN_METRICS)


def _summary_columns() -> list[str]:
    return WIDE_METRICS + list(PRED_COLUMNS.values())


def _schema() -> str:
    # column names come from the constants above (identifiers of this module), never from input

    cols = ", ".join(f"{c} DOUBLE" for c in _summary_columns())
    lb_cols = ", ".join(f"{c} VARCHAR" if c in ("model", "method", "region") else
                        f"{c} BIGINT" if c == "n_patients" or c.endswith(("_n", "_nan")) else f"{c} DOUBLE"
                        for c in LEADERBOARD_COLUMNS)
    return f"""
CREATE TABLE IF NOT EXISTS derived_state (
    run_id VARCHAR PRIMARY KEY, built_at TIMESTAMP, n_ok BIGINT, last_finished TIMESTAMP, seconds DOUBLE);
CREATE TABLE IF NOT EXISTS patient_summary ({KEYS}, {cols});
CREATE TABLE IF NOT EXISTS cohort_calibration_bins (run_id VARCHAR, model VARCHAR, method VARCHAR, region VARCHAR,
    mask VARCHAR, bin INTEGER, n DOUBLE, sum_prob DOUBLE, sum_true DOUBLE);
CREATE TABLE IF NOT EXISTS cohort_uncertainty_bins (run_id VARCHAR, model VARCHAR, method VARCHAR, region VARCHAR,
    mask VARCHAR, measure VARCHAR, bin INTEGER, n_error DOUBLE, n_correct DOUBLE, n_fp DOUBLE, n_fn DOUBLE,
    n_tp DOUBLE);
CREATE TABLE IF NOT EXISTS cohort_leaderboard (run_id VARCHAR, mask VARCHAR, B INTEGER, seed INTEGER, {lb_cols});
CREATE TABLE IF NOT EXISTS cohort_ueo_summary (run_id VARCHAR, mask VARCHAR, measure VARCHAR, model VARCHAR,
    method VARCHAR, region VARCHAR, n_patients INTEGER, t_ueo DOUBLE, ueo_mean_at_t DOUBLE, ueo_pooled_at_t DOUBLE,
    ueo_oracle_mean DOUBLE, t_bnf DOUBLE, bnf_at_t DOUBLE, n_bnf INTEGER);
CREATE TABLE IF NOT EXISTS cohort_ueo_patients (run_id VARCHAR, mask VARCHAR, measure VARCHAR, model VARCHAR,
    method VARCHAR, region VARCHAR, patient_id VARCHAR, ueo_at_t DOUBLE, ueo_oracle DOUBLE);
"""
