"""AppTest: every page and widget path, on the tiny results database and with no database at all."""
import math

import numpy as np
import pytest
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]

PAGES = ["app_pages/home.py", "app_pages/compare.py", "app_pages/reliability.py", "app_pages/strata.py",
         "app_pages/budget.py", "app_pages/viewer.py", "app_pages/quality.py",
         "app_pages/review.py", "app_pages/glossary.py"]


@pytest.fixture
def data_env(results_db, monkeypatch):
    monkeypatch.setenv("TUMOURQA_DATA", str(results_db.parent))
    return results_db


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _caption(at):
    return next(c.value for c in at.caption if "patients (entropy quantiles" in c.value)


def test_app_navigation_every_page(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run())
    assert at.title[0].value.startswith("Tumour segmentation QA")
    for page in PAGES:
        _ok(at.switch_page(page).run())


def test_home_page_content(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/home.py"), default_timeout=120).run())
    labels = {m.label: m.value for m in at.metric}
    assert labels["Patients evaluated"] == "4" and labels["Evaluations failed"] == "0"
    assert len(at.dataframe) >= 2
    assert {e.label.split(":")[0] for e in at.expander} >= {"SegResNet", "UNet-Res"}
    # the row counts are computed only once their expander is opened (seconds on a 50,000-patient database)
    assert not any("table" in d.value.columns and "rows" in d.value.columns for d in at.dataframe)
    at.session_state["home_db_tables"] = True
    _ok(at.run())
    counts = next(d.value for d in at.dataframe if "table" in d.value.columns and "rows" in d.value.columns)
    assert counts.set_index("table")["rows"]["patients"] == 4


def test_compare_page_filter_changes_numbers(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120).run())
    assert "4 of 4 patients" in _caption(at)
    full = at.dataframe[0].value
    assert set(full.model) == {"SegResNet", "UNet-Res"} and set(full.region) == {"WT", "TC", "ET"}
    assert (full.n_patients == 4).all()
    at.slider(key="q_range").set_value((50, 100)).run()
    _ok(at)
    assert "2 of 4 patients" in _caption(at)
    half = at.dataframe[0].value
    assert (half.n_patients == 2).all()
    assert not half.dice_mean.reset_index(drop=True).equals(full.dice_mean.reset_index(drop=True)) or \
        not half.ece_dataset.reset_index(drop=True).equals(full.ece_dataset.reset_index(drop=True))
    assert at.query_params["q"] == ["50-100"] or at.query_params["q"] == "50-100"


def test_compare_widgets(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120).run())
    at.selectbox(key="method").set_value("deterministic").run()
    _ok(at)
    assert "Method **deterministic**" in _caption(at)
    at.radio(key="mask").set_value("roi").run()
    _ok(at)
    assert "voxel set **roi**" in _caption(at)
    at.selectbox(key="strat_model").set_value("UNet-Res").run()
    at.selectbox(key="strat_measure").set_value("mean MI (WT, brain)").run()
    _ok(at)
    assert any("needs samples" in w.value for w in at.warning)  # deterministic has no MI: falls back to entropy
    assert "4 of 4 patients" in _caption(at)
    at.multiselect(key="models").set_value(["UNet-Res"]).run()
    _ok(at)
    assert set(at.dataframe[0].value.model) == {"UNet-Res"}
    at.multiselect(key="models").set_value([]).run()
    _ok(at)
    assert any("Select at least one model" in i.value for i in at.info)
    # a quantile range that keeps nobody is said, not failed
    at.multiselect(key="models").set_value(["UNet-Res", "SegResNet"]).run()
    at.slider(key="q_range").set_value((100, 100)).run()
    _ok(at)


def _tab(at, label):
    """Open a tab of the Compare page, as a click on it does."""
    at.session_state["compare_view"] = label
    return _ok(at.run())


def test_compare_tabs_are_lazy_and_in_the_url(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120).run())
    assert at.query_params["view"] in (["Overview"], "Overview")
    assert len(at.dataframe) == 1 and len(at.get("plotly_chart")) == 1  # only the open tab is drawn
    _tab(at, "Distributions")
    assert len(at.get("plotly_chart")) == 2 and at.query_params["view"] in (["Distributions"], "Distributions")
    # a link with ?view= opens that tab
    at2 = AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120)
    at2.query_params["view"] = "Paired test"
    _ok(at2.run())
    assert any("Wilcoxon" in s.value for s in at2.subheader)
    # a widget of a closed tab keeps its value
    _tab(at, "Patients")
    at.selectbox(key="scatter_y").set_value("hd95").run()
    _tab(at, "Overview")
    _tab(at, "Patients")
    assert at.selectbox(key="scatter_y").value == "hd95"


def test_compare_leaderboard_and_paired_test(data_env):
    at = _tab(AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120), "Leaderboard")
    assert set(at.dataframe[0].value.method) == {"mc_dropout"}  # the sidebar's method by default
    at.multiselect(key="lb_methods").set_value(["mc_dropout", "deterministic"]).run()
    _ok(at)
    lb = at.dataframe[0].value
    # model x method x region, with intervals and the patient counts behind them
    assert len(lb) == 2 * 2 * 3 and set(lb.method) == {"deterministic", "mc_dropout"}
    assert (lb.patients == 4).all() and list(dict.fromkeys(lb.region)) == ["WT", "TC", "ET"]
    dice_ci = lb["Dice [95 % CI]"].iloc[0]
    est, lo, hi = (float(v) for v in dice_ci.replace("[", "").replace("]", "").replace(",", "").split())
    assert lo <= est <= hi
    # the leaderboard follows the entropy filter, and keeps its methods across a tab switch
    at.slider(key="q_range").set_value((50, 100)).run()
    _ok(at)
    assert (at.dataframe[0].value.patients == 2).all()
    _tab(at, "Paired test")
    paired = at.dataframe[0].value
    assert list(paired.region) == ["WT", "TC", "ET"] and (paired.n + paired.n_nan == 2).all()
    def num(p):  # the table shows p as text (stats.format_p)
        return math.nan if p == "-" else 0.0 if p == "< 1e-300" else float(p)
    pv, ph = paired.p_value.map(num), paired.p_holm.map(num)
    assert ((ph >= pv) | pv.isna()).all()
    at.selectbox(key="paired_metric").set_value("ece").run()
    _ok(at)
    at.selectbox(key="paired_a").set_value("UNet-Res").run()
    _ok(at)
    assert at.selectbox(key="paired_b").value == "SegResNet"
    _tab(at, "Leaderboard")
    assert set(at.dataframe[0].value.method) == {"deterministic", "mc_dropout"}
    # one model selected: no paired test, said so
    _tab(at, "Paired test")
    at.multiselect(key="models").set_value(["UNet-Res"]).run()
    _ok(at)
    assert any("Needs two selected models" in i.value for i in at.info)


def test_compare_scatter_axes_and_region(data_env):
    at = _tab(AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120), "Patients")
    table = at.dataframe[0].value
    assert len(table) == 2 * 4 and table.open.str.contains("viewer\\?").all()
    at.selectbox(key="scatter_y").set_value("hd95").run()
    at.radio(key="scatter_region").set_value("ET").run()
    _ok(at)


def test_viewer_opens_requested_patient(data_env):
    at = AppTest.from_file(str(ROOT / "app_pages/viewer.py"), default_timeout=120)
    _ok(at.run())
    pid = at.selectbox(key="viewer_patient").options[-1]
    at.session_state["viewer_request"] = (pid, "SegResNet")  # what a row click on the Compare page leaves
    _ok(at.run())
    assert at.selectbox(key="viewer_patient").value == pid and at.selectbox(key="viewer_left").value == "SegResNet"


def test_viewer_link_opens_patient_and_model(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/viewer.py"), default_timeout=120).run())
    pid = at.selectbox(key="viewer_patient").options[-1]
    link = AppTest.from_file(str(ROOT / "app_pages/viewer.py"), default_timeout=120)
    link.query_params["patient"] = pid  # what the patient table's "viewer ↗" link carries
    link.query_params["model"] = "UNet-Res"
    _ok(link.run())
    assert link.selectbox(key="viewer_patient").value == pid and link.selectbox(key="viewer_left").value == "UNet-Res"


def test_query_params_restore_view(data_env):
    at = AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120)
    at.query_params["method"] = "deterministic"
    at.query_params["mask"] = "roi"
    at.query_params["q"] = "0-50"
    _ok(at.run())
    cap = _caption(at)
    assert "Method **deterministic**" in cap and "voxel set **roi**" in cap and "quantiles 0-50" in cap


@pytest.mark.parametrize("page", ["app.py"] + [p for p in PAGES if "glossary" not in p])
def test_no_database_says_how_to_build_one(tmp_path, monkeypatch, page):
    monkeypatch.setenv("TUMOURQA_DATA", str(tmp_path))
    at = _ok(AppTest.from_file(str(ROOT / page), default_timeout=60).run())
    assert any("python -m core demo" in i.value for i in at.info)


def test_glossary_needs_no_database(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMOURQA_DATA", str(tmp_path))
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/glossary.py"), default_timeout=60).run())
    assert len(at.table[0].value) > 30


def test_reliability_page(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/reliability.py"), default_timeout=120).run())
    assert len(at.get("plotly_chart")) >= 3  # diagram + one histogram per model + ECE distribution
    for region in ("TC", "ET"):
        at.radio(key="rel_region").set_value(region).run()
        _ok(at)
        assert f"region **{region}**" in at.caption[0].value
    at.radio(key="mask").set_value("roi").run()
    _ok(at)
    worst = at.dataframe[-1].value
    assert len(worst) > 0 and (worst.ece.diff().dropna() <= 1e-12).all()  # sorted, worst first
    # over + under confidence is the ECE (stored per patient), and the shares table counts kinds from them
    ok = worst.dropna(subset=["ece"])
    assert np.allclose(ok.overconfidence + ok.underconfidence, ok.ece, atol=1e-9)
    shares = next(d.value for d in at.dataframe if "within tolerance" in d.value.columns
                  or "over-confident" in d.value.columns)
    assert np.allclose(shares.sum(axis=1), 1.0, atol=2e-3)


def test_strata_page(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/strata.py"), default_timeout=120).run())
    med = at.dataframe[0].value
    assert list(med.columns) == ["Q1", "Q2", "Q3", "Q4"]
    at.select_slider(key="n_strata").set_value(2).run()
    _ok(at)
    assert list(at.dataframe[0].value.columns) == ["Q1", "Q2"]
    at.radio(key="strata_region").set_value("ET").run()
    _ok(at)
    triage = at.dataframe[-1].value
    assert len(triage) == 4 and triage.iloc[:, 2].is_monotonic_decreasing
    at.slider(key="q_range").set_value((50, 100)).run()
    _ok(at)
    assert len(at.dataframe[-1].value) == 2  # triage follows the filter
    assert (at.dataframe[1].value.n_patients == 2).all()  # subgroup metrics recomputed


def test_budget_page(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/budget.py"), default_timeout=120).run())
    assert len(at.dataframe[0].value) == 2  # 2 models x the sidebar's method
    at.multiselect(key="budget_methods").set_value(["mc_dropout", "deterministic"]).run()
    _ok(at)
    t = at.dataframe[0].value
    assert len(t) == 4  # 2 models x 2 methods
    assert t["captured at 5 %"].between(0, 1).all() and t["capture AUC 0-5 %"].between(0, 1).all()
    at.select_slider(key="budget_max").set_value(20).run()
    _ok(at)
    at.radio(key="budget_region").set_value("TC").run()
    _ok(at)


def test_viewer_page(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/viewer.py"), default_timeout=120).run())
    start = at.slider(key="viewer_slice").value
    assert len(at.get("image")) == 1
    for overlay in ["ground truth", "prediction", "entropy", "mutual information", "error (FP / FN)", "none"]:
        at.selectbox(key="viewer_overlay").set_value(overlay).run()
        _ok(at)
    at.button(key="jump_unc").click().run()
    _ok(at)
    at.button(key="jump_err").click().run()
    _ok(at)
    at.slider(key="viewer_slice").set_value(0).run()
    _ok(at)
    at.radio(key="viewer_axis").set_value("sagittal").run()
    _ok(at)
    at.selectbox(key="viewer_right").set_value("UNet-Res" if at.selectbox(key="viewer_left").value == "SegResNet" else "SegResNet").run()
    _ok(at)
    assert len(at.get("image")) == 2 and start >= 0  # two models side by side
    pid = at.selectbox(key="viewer_patient").options[1]
    at.selectbox(key="viewer_patient").set_value(pid).run()
    _ok(at)
    assert at.query_params["patient"] in (pid, [pid])
    assert len(at.get("download_button")) >= 5  # the NIfTI maps of the shown models


def test_quality_page_empty_state(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/quality.py"), default_timeout=120).run())
    assert any("at least 10 patients" in i.value for i in at.info)


def test_quality_page_with_predictions(results_db, tmp_path, monkeypatch):
    """Quality rows written by core.quality on a copy of the tiny database (4 test patients are too few for
    the batch to fit a regressor, so the frames are built from its real Dice with core.quality's writer)."""
    import shutil

    import numpy as np
    import pandas as pd

    from core import store

    shutil.copy(results_db, tmp_path / "results.duckdb")
    con = store.connect(tmp_path / "results.duckdb")
    run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
    d = con.execute("SELECT model, method, patient_id, region, value AS dice FROM metrics WHERE metric = 'dice'").df()
    d["predicted_dice"] = np.clip(d.dice + 0.05, 0, 1)
    d["uncertainty_score"] = -d.dice
    d["flagged"] = d.predicted_dice < d.predicted_dice.median()
    summ = pd.DataFrame([{"model": m, "method": me, "region": r, "n_patients": 4, "r2": 0.5, "pearson_r": 0.8,
                          "score_spearman": -0.7, "regressor": "test", "features": "[]"}
                         for (m, me, r), _ in d.groupby(["model", "method", "region"])])
    store.write_quality(con, run_id, d, summ)
    con.close()
    monkeypatch.setenv("TUMOURQA_DATA", str(tmp_path))
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/quality.py"), default_timeout=120).run())
    assert len(at.dataframe) == 2  # summary + flagged patients
    assert at.dataframe[0].value.r2.eq(0.5).all()
    flagged = at.dataframe[1].value
    assert len(flagged) and (flagged.predicted_dice <= d.predicted_dice.median()).all()
    _ok(at.radio(key="quality_region").set_value("ET").run())


def test_glossary_page_and_every_stored_metric_is_defined(data_env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/glossary.py"), default_timeout=60).run())
    full = at.table[0].value.reset_index()
    _ok(at.text_input(key="glossary_q").set_value("budget").run())
    part = at.table[0].value.reset_index()
    assert 0 < len(part) < len(full)
    assert (part.term.str.contains("budget") | part.definition.str.contains("budget")).all()
    _ok(at.text_input(key="glossary_q").set_value("zzz-no-such-term").run())
    assert any("Nothing matches" in i.value for i in at.info)
    # the README (hence the glossary) defines every metric name the batch stores
    import duckdb

    con = duckdb.connect(str(data_env), read_only=True)
    stored = {r[0] for r in con.execute("SELECT DISTINCT metric FROM metrics").fetchall()}
    con.close()
    terms = {t.strip() for row in full.term for t in row.split(",")}
    assert stored - terms == set()


def test_database_paths_cannot_leave_the_data_folder(data_env, tmp_path, monkeypatch):
    """Path traversal: names typed into the URL or passed to resolve_db stay inside TUMOURQA_DATA."""
    from dashboard.selection import resolve_db

    outside = tmp_path / "secret.duckdb"
    outside.write_bytes(b"")
    for name in ("../secret.duckdb", "../../etc/passwd", str(outside), "sub/../../secret.duckdb"):
        with pytest.raises(ValueError, match="outside the data folder"):
            resolve_db(name)
    assert resolve_db("results.duckdb") == data_env.resolve()
    at = AppTest.from_file(str(ROOT / "app_pages/home.py"), default_timeout=120)
    at.query_params["db"] = "../secret.duckdb"
    at = _ok(at.run())
    assert at.sidebar.selectbox(key="db").value == "results.duckdb", "an unknown db in the URL falls back to a listed one"
