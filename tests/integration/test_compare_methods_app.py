"""AppTest of issue 20's page sections: Compare's paired comparison of two methods of one model (item 8) and the
Budget page's U-E overlap at one cohort threshold (item 7), on the tiny results database."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_env(results_db, monkeypatch):
    monkeypatch.setenv("TUMOURQA_DATA", str(results_db.parent))
    return results_db


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_paired_methods_tab(data_env):
    at = AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120)
    at.session_state["compare_view"] = "Paired methods"
    _ok(at.run())
    assert any("two methods of one model" in s.value for s in at.subheader)
    at.selectbox(key="pm_model").set_value("UNet-Res").run()
    at.selectbox(key="pm_a").set_value("mc_dropout").run()
    _ok(at)
    assert at.selectbox(key="pm_b").value == "deterministic"
    tab = at.dataframe[0].value
    assert {"Dice", "ECE", "AUROC entropy vs error"} <= set(tab.metric)
    assert list(tab[tab.metric == "Dice"].region) == ["WT", "TC", "ET"]
    assert {"mean_diff", "diff_lo", "diff_hi", "p_value", "p_holm"} <= set(tab.columns)
    # the numbers are the per-patient differences of the stored metrics, paired by patient
    con = store.connect(data_env, read_only=True)
    run = store.list_runs(con).run_id.iloc[0]
    m = con.execute("""SELECT a.region, avg(a.value - b.value) FROM metrics a JOIN metrics b
                       USING (run_id, model, patient_id, region, mask, metric)
                       WHERE a.run_id = ? AND a.model = 'UNet-Res' AND a.metric = 'dice' AND a.mask = 'brain'
                         AND a.method = 'mc_dropout' AND b.method = 'deterministic' GROUP BY ALL""", [run]).fetchall()
    con.close()
    dice = tab[tab.metric == "Dice"].set_index("region")
    for region, mean in m:
        assert dice.loc[region, "mean_diff"] == pytest.approx(mean, abs=1e-12)
    assert ((dice.diff_lo <= dice.mean_diff + 1e-12) & (dice.mean_diff <= dice.diff_hi + 1e-12)).all()
    assert (dice.n + dice.n_nan == 4).all()
    at.selectbox(key="pm_plot_metric").set_value("ece").run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 1
    at.slider(key="q_range").set_value((50, 100)).run()  # the entropy filter: fewer pairs
    _ok(at)
    assert (at.dataframe[0].value.n + at.dataframe[0].value.n_nan <= 2).all()


def test_budget_page_cohort_threshold_ueo(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/budget.py"), default_timeout=120).run())
    lines = [m.value for m in at.markdown if "UEO at cohort threshold t=" in m.value]
    assert lines and all("per-patient oracle" in x for x in lines)
    tab = next(d.value for d in at.dataframe if "t (U-E)" in d.value.columns)
    assert np.isin(np.round(tab["t (U-E)"].dropna() * 20, 9) % 1, [0]).all()  # multiples of 0.05
    assert (tab["U-E mean, per-patient best t (oracle)"] >= tab["U-E mean at cohort t"] - 1e-12).all()


def test_temperature_expander_names_the_fit_voxels(results_db, tmp_path, monkeypatch):
    """The run's config says which voxels fitted the temperatures; the Distributions tab's expander says the same.

    On a copy of the tiny database whose config is switched to ``roi`` and given one model's temperatures, so the
    caption must follow the stored config, not a default."""
    import json
    import shutil
    shutil.copy(results_db, tmp_path / "results.duckdb")
    con = store.connect(tmp_path / "results.duckdb")
    run = store.list_runs(con).run_id.iloc[0]
    assert store.run_config(con, run).get("ts_fit_mask") == "brain"  # the default the batch wrote
    assert store.run_config(con, "no-such-run") == {}
    cfg = store.run_config(con, run) | {"ts_fit_mask": "roi"}
    con.execute("UPDATE runs SET config = ? WHERE run_id = ?", [json.dumps(cfg), run])
    model = con.execute("SELECT min(model) FROM models WHERE run_id = ?", [run]).fetchone()[0]
    con.execute("DELETE FROM temperatures WHERE run_id = ?", [run])
    for region in ("WT", "TC", "ET"):
        con.execute("INSERT INTO temperatures VALUES (?, ?, 'deterministic+ts', ?, 1.5, 100, 10, 0.3, 0.2, '[]')",
                    [run, model, region])
    assert store.run_config(con, run)["ts_fit_mask"] == "roi"
    con.close()
    monkeypatch.setenv("TUMOURQA_DATA", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120)
    at.session_state["compare_view"] = "Distributions"
    _ok(at.run())
    captions = [c.value for c in at.caption]
    assert any("ROI voxels" in c for c in captions), captions
    assert not any("brain voxels" in c for c in captions)
