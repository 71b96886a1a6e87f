"""The Home page's first view as data (dashboard.views.findings): best model per region on Dice and on ECE
with intervals, the worst-calibrated region, the flagged patients."""
import pandas as pd

from dashboard import views


def _lb():
    rows = []
    for model, dice, ece in [("A", 0.90, 0.010), ("B", 0.80, 0.030)]:
        for region, dd, de in [("WT", 0.0, 0.0), ("TC", -0.1, 0.01), ("ET", -0.2, 0.05)]:
            rows.append({"model": model, "method": "m", "region": region, "n_patients": 10,
                         "dice": dice + dd, "dice_lo": dice + dd - 0.02, "dice_hi": dice + dd + 0.02,
                         "ece_dataset": ece + de, "ece_dataset_lo": ece + de - 0.005, "ece_dataset_hi": ece + de + 0.005})
    rows.append({**rows[0], "method": "other", "dice": 0.99})  # another method never wins
    return pd.DataFrame(rows)


def test_best_worst_and_flags():
    flagged = pd.DataFrame({"model": ["A", "B", "A", "A"], "patient_id": ["p1", "p1", "p2", "p3"],
                            "region": ["WT", "WT", "ET", "ET"], "flagged": [True, True, True, False]})
    f = views.findings(_lb(), flagged, "m")
    bd = f["best_dice"].set_index("region")
    assert list(bd.index) == ["WT", "TC", "ET"] and (bd.model == "A").all()
    assert bd.loc["WT", "value"] == 0.90 and bd.loc["WT", "lo"] == 0.88 and bd.loc["WT", "runner_up"] == "B"
    assert bd.separated.all()  # 0.88 > 0.82
    be = f["best_ece"].set_index("region")
    assert (be.model == "A").all() and abs(be.loc["ET", "value"] - 0.06) < 1e-12
    assert f["worst"]["region"] == "ET" and f["worst"]["model"] == "B" and abs(f["worst"]["value"] - 0.08) < 1e-12
    assert f["flagged"] == 2 and f["flagged_by_region"] == {"ET": 1, "WT": 1}
    assert f["n_patients"] == 10


def test_overlapping_intervals_are_not_separated_and_empty_inputs():
    lb = _lb()
    lb.loc[lb.model == "B", "dice"] = lb.loc[lb.model == "B", "dice"] + 0.09  # B 0.89 vs A 0.90, intervals overlap
    lb.loc[lb.model == "B", ["dice_lo", "dice_hi"]] += 0.09
    f = views.findings(lb, pd.DataFrame(), "m")
    assert not f["best_dice"].separated.any() and f["flagged"] == 0
    empty = views.findings(lb.iloc[:0], pd.DataFrame(), "m")
    assert empty["best_dice"].empty and empty["worst"] is None
