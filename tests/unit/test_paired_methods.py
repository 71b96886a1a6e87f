"""Paired comparison of two methods of one model (issue 20, item 8): the model comparison's code, paired by patient."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from core.analysis import stats as S


def _table():
    """Model M, methods det and mc on 12 patients: mc's Dice = det's + known per-patient differences, ECE lower by
    exactly 0.002; a second model whose rows must not enter; one NaN and one patient missing on one side."""
    ids = [f"P{i:02d}" for i in range(12)]
    rng = np.random.default_rng(4)
    rows = []
    d_dice = {"WT": np.linspace(-0.01, 0.03, 12), "TC": np.full(12, 0.0), "ET": np.arange(12) * 0.001 + 0.0005}
    for r in ("WT", "TC", "ET"):
        base = rng.uniform(0.6, 0.9, 12)
        ece = rng.uniform(0.01, 0.05, 12)
        for i, p in enumerate(ids):
            rows.append(dict(model="M", method="det", patient_id=p, region=r, dice=base[i], ece=ece[i]))
            rows.append(dict(model="M", method="mc", patient_id=p, region=r, dice=base[i] + d_dice[r][i],
                             ece=ece[i] - 0.002))
            rows.append(dict(model="Other", method="mc", patient_id=p, region=r, dice=0.0, ece=1.0))
    wide = pd.DataFrame(rows)
    wide = wide[~((wide.method == "det") & (wide.patient_id == "P11") & (wide.region == "ET"))]  # evaluated once
    wide.loc[(wide.method == "mc") & (wide.model == "M") & (wide.patient_id == "P00") & (wide.region == "WT"),
             "ece"] = np.nan
    return wide, d_dice


def test_paired_methods_known_differences():
    wide, d_dice = _table()
    one = wide[wide.model == "M"]
    summary, diffs = S.paired_metrics(one, ["dice", "ece", "not_stored"], "mc", "det", by="method")
    s = summary.set_index(["metric", "region"])
    assert list(summary.metric.unique()) == ["dice", "ece"]
    assert s.loc[("dice", "WT"), "mean_diff"] == pytest.approx(d_dice["WT"].mean(), abs=1e-12)
    assert s.loc[("dice", "ET"), "n"] == 11 and s.loc[("dice", "ET"), "mean_diff"] == pytest.approx(
        d_dice["ET"][:11].mean(), abs=1e-12)
    assert s.loc[("dice", "TC"), "n_zero"] == 12 and np.isnan(s.loc[("dice", "TC"), "p_value"])
    for r in ("WT", "TC", "ET"):  # ECE 0.002 lower everywhere: every pair agrees
        e = s.loc[("ece", r)]
        assert e.mean_diff == pytest.approx(-0.002, abs=1e-12) and e.diff_lo == pytest.approx(-0.002, abs=1e-12)
    assert s.loc[("ece", "WT"), "n"] == 11 and s.loc[("ece", "WT"), "n_nan"] == 1
    ref = sst.wilcoxon(d_dice["WT"], zero_method="wilcox")
    assert s.loc[("dice", "WT"), "p_value"] == pytest.approx(ref.pvalue)
    wt = s.loc[("dice", "WT")]
    assert wt.diff_lo < wt.mean_diff < wt.diff_hi
    # the same numbers as the model comparison's code with the methods in the model column
    as_models = one.drop(columns="model").rename(columns={"method": "model"})
    ref_tab, _ = S.paired_table(as_models, "dice", "mc", "det")
    pd.testing.assert_frame_equal(summary[summary.metric == "dice"].drop(columns="metric").reset_index(drop=True),
                                  ref_tab)
    assert set(diffs.metric) == {"dice", "ece"} and (diffs[diffs.metric == "dice"].groupby("region").size()
                                                    == pd.Series({"ET": 11, "TC": 12, "WT": 12})).all()
