"""The results database's schema and the one list of its names: tables, columns, regions, masks, metrics."""
from __future__ import annotations

from core.analysis.stats import MEAN_METRICS
from core.metrics.lesions import LESION_METRICS
from core.metrics.suite import PatientEvaluation

from core.analysis.stats import LEADERBOARD_COLUMNS


SCHEMA = """
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
CREATE TABLE IF NOT EXISTS calibration_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    bin INTEGER, n BIGINT, sum_prob DOUBLE, sum_true DOUBLE);
CREATE TABLE IF NOT EXISTS uncertainty_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    measure VARCHAR, bin INTEGER, n_error BIGINT, n_correct BIGINT, n_fp BIGINT, n_fn BIGINT, n_tp BIGINT);
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


# a temperatures table of a database written before temperatures were fitted per method: rebuilt with the
# method column, its rows (fitted on the primary's deterministic logits) marked as deterministic+ts's
# (:func:`core.store.connection.migrate`)
LEGACY_TS_METHOD = "deterministic+ts"


TEMPERATURE_COLUMNS = ["run_id", "model", "method", "region", "temperature", "n_voxels", "n_positive", "nll_before",
                       "nll_after", "patients"]


RESULT_TABLES = ("metrics", "calibration_bins", "uncertainty_bins", "maps")


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


TABLES = ("patient_summary", "patient_calibration", "patient_uncertainty", "cohort_calibration_bins",
          "cohort_uncertainty_bins", "cohort_leaderboard")


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
