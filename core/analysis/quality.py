"""Segmentation quality prediction without ground truth (paper 001), from the stored per-patient metrics.

For every (model, method) of a run and every region r (WT, TC, ET):

* features (per patient, all regions together, from the ``metrics`` table; no ground truth used):
  mean entropy / MI / EPKL in the predicted region, at its boundary and in the brain (MI and EPKL where
  the method has samples), mean confidence in the predicted region, uncertain-voxel fraction in the
  brain, log(1 + predicted volume in ml), and the predicted-volume coefficient of variation over the
  samples (sd / (mean + 1 ml)) where there are samples;
* regressor: median imputation -> standardisation -> ridge regression (alpha chosen by inner
  leave-one-out, ``RidgeCV``), clipped to [0, 1]; ``predicted_dice`` is its out-of-fold prediction under
  5-fold cross-validation (shuffled, seed 0), so no patient is predicted by a model that saw it;
* ``r2`` = scikit-learn ``r2_score(dice, predicted_dice)``, ``pearson_r`` = scipy ``pearsonr``;
* ``uncertainty_score``: one aggregated uncertainty per patient and region, the mean of the z-scores
  (over the cohort) of the region's mean entropy, MI, EPKL in the predicted region, 1 - mean confidence
  and uncertain fraction (those present); ``score_spearman`` = Spearman rho of score vs Dice (negative
  when the score finds the bad segmentations);
* ``flagged``: predicted Dice in the lowest quarter of the cohort or below 0.5 (patients to review).

Computed when at least :data:`MIN_PATIENTS` patients have a Dice; written to ``quality`` and
``quality_summary`` (:func:`core.store.write_quality`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


MIN_PATIENTS = 10


FEATURES = [  # (mask, metric)
    ("pred", "mean_entropy"), ("boundary", "mean_entropy"), ("brain", "mean_entropy"),
    ("pred", "mean_mi"), ("boundary", "mean_mi"), ("brain", "mean_mi"),
    ("pred", "mean_epkl"), ("brain", "mean_epkl"),
    ("pred", "mean_confidence"), ("brain", "uncertain_fraction"),
    ("brain", "volume_pred_ml"), ("brain", "vol_sample_sd_ml"), ("brain", "vol_sample_mean_ml"),
]


SCORE_PARTS = [("pred", "mean_entropy", 1), ("pred", "mean_mi", 1), ("pred", "mean_epkl", 1),
               ("pred", "mean_confidence", -1), ("brain", "uncertain_fraction", 1)]


def feature_table(long: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long metrics (patient_id, region, mask, metric, value) -> (features X, Dice y) indexed by patient.

    X columns ``<region>_<mask>_<metric>`` plus derived ``<region>_log_volume`` and ``<region>_volume_cv``;
    y columns are the regions."""
    wide = long.pivot_table(index="patient_id", columns=["region", "mask", "metric"], values="value", aggfunc="first")
    cols = {}
    regions = sorted({c[0] for c in wide.columns})
    for reg in regions:
        for mask, metric in FEATURES:
            key = (reg, mask, metric)
            if key in wide.columns and metric not in ("volume_pred_ml", "vol_sample_sd_ml", "vol_sample_mean_ml"):
                cols[f"{reg}_{mask}_{metric}"] = wide[key]
        if (reg, "brain", "volume_pred_ml") in wide.columns:
            cols[f"{reg}_log_volume"] = np.log1p(wide[(reg, "brain", "volume_pred_ml")].clip(lower=0))
        sd, mean = (reg, "brain", "vol_sample_sd_ml"), (reg, "brain", "vol_sample_mean_ml")
        if sd in wide.columns and mean in wide.columns and wide[sd].fillna(0).gt(0).any():
            cols[f"{reg}_volume_cv"] = wide[sd] / (wide[mean].clip(lower=0) + 1.0)
    X = pd.DataFrame(cols, index=wide.index)
    X = X.loc[:, X.notna().any()]  # drop features no patient has
    y = pd.DataFrame({reg: wide[(reg, "brain", "dice")] for reg in regions if (reg, "brain", "dice") in wide.columns},
                     index=wide.index)
    return X, y


def uncertainty_score(X: pd.DataFrame, region: str) -> pd.Series:
    """Mean z-score over the cohort of the region's uncertainty features (higher = more uncertain)."""
    parts = []
    for mask, metric, sign in SCORE_PARTS:
        c = f"{region}_{mask}_{metric}"
        if c in X.columns:
            v = X[c].astype(float)
            sd = v.std(ddof=0)
            if np.isfinite(sd) and sd > 0:
                parts.append(sign * (v - v.mean()) / sd)
    if not parts:
        return pd.Series(np.nan, index=X.index)
    return pd.concat(parts, axis=1).mean(axis=1, skipna=True)


def predict_quality(X: pd.DataFrame, y: pd.Series, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predicted Dice (clipped to [0, 1]) for each patient of ``X`` (rows aligned with ``y``)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                          RidgeCV(alphas=np.logspace(-2, 3, 21)))
    cv = KFold(n_splits=min(n_splits, len(y)), shuffle=True, random_state=seed)
    return np.clip(cross_val_predict(model, X.to_numpy(float), y.to_numpy(float), cv=cv), 0.0, 1.0)


def quality_for(long: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-patient and summary rows for one (model, method) from its long metrics frame."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import r2_score

    X, Y = feature_table(long)
    per, summ = [], []
    for region in Y.columns:
        y = Y[region].dropna()
        if len(y) < MIN_PATIENTS or X.empty:
            continue
        Xr = X.loc[y.index]
        pred = predict_quality(Xr, y)
        score = uncertainty_score(Xr, region)
        cut = np.quantile(pred, 0.25)
        flagged = (pred <= cut) | (pred < 0.5)
        ok = score.notna().to_numpy()
        rho = spearmanr(score[ok], y[ok]).statistic if ok.sum() >= 3 and np.ptp(y[ok]) > 0 else math.nan
        r = pearsonr(y, pred).statistic if np.ptp(pred) > 0 and np.ptp(y) > 0 else math.nan
        summ.append({"region": region, "n_patients": len(y), "r2": float(r2_score(y, pred)), "pearson_r": float(r),
                     "score_spearman": float(rho), "regressor": "RidgeCV (5-fold out-of-fold)",
                     "features": list(Xr.columns)})
        per.append(pd.DataFrame({"patient_id": y.index, "region": region, "dice": y.to_numpy(),
                                 "predicted_dice": pred, "uncertainty_score": score.to_numpy(), "flagged": flagged}))
    per_df = pd.concat(per, ignore_index=True) if per else pd.DataFrame(
        columns=["patient_id", "region", "dice", "predicted_dice", "uncertainty_score", "flagged"])
    return per_df, pd.DataFrame(summ)
