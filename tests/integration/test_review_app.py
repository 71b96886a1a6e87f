"""AppTest of the Review worklist page on the tiny results database (a copy: reviews.sqlite is written beside it)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.store import review

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "app_pages/review.py")


@pytest.fixture
def env(results_db, tmp_path, monkeypatch):
    shutil.copy(results_db, tmp_path / "results.duckdb")
    monkeypatch.setenv("TUMOURQA_DATA", str(tmp_path))
    return tmp_path / "results.duckdb"


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _table(at):
    return at.dataframe[0].value


def test_orderings(env):
    at = _ok(AppTest.from_file(PAGE, default_timeout=120).run())
    t = _table(at)
    assert len(t) == 4 and (t.status == "to review").all() and t.open.str.contains("viewer\\?").all()
    assert t.entropy_WT_pred.dropna().is_monotonic_decreasing
    _ok(at.selectbox(key="review_priority").set_value(
        "lowest predicted quality (quality model's predicted WT Dice)").run())
    q = _table(at)
    assert "predicted_dice_WT" in q.columns
    assert q.predicted_dice_WT.dropna().is_monotonic_increasing
    _ok(at.selectbox(key="review_priority").set_value("lowest Dice (WT)").run())
    assert _table(at).dice_WT.is_monotonic_increasing
    _ok(at.selectbox(key="review_priority").set_value(
        "largest disagreement with another model (|Δ WT Dice|)").run())
    d = _table(at)
    assert d.disagreement.is_monotonic_decreasing and (d.disagreement >= 0).all()


def test_save_from_page_shows_in_store_table_filter_and_csv(env):
    at = _ok(AppTest.from_file(PAGE, default_timeout=120).run())
    model = at.selectbox(key="review_model").value
    pid = _table(at).patient_id.iloc[0]
    at.selectbox(key="review_patient").set_value(pid)
    at.selectbox(key="review_status").set_value("needs correction")
    at.text_area(key="review_note").set_value("<b>ET</b> missed")
    at.text_input(key="review_reviewer").set_value("dr a")
    _ok(at.button[0].click().run())  # the form's submit button
    cur = review.current_status(review.review_path(env), at.session_state["run"], model)
    assert list(cur.patient_id) == [pid] and cur.status.iloc[0] == "needs correction"
    _ok(at.run())
    t = _table(at)
    assert t.set_index("patient_id").loc[pid, "status"] == "needs correction"
    assert t.set_index("patient_id").loc[pid, "note"] == "<b>ET</b> missed"  # shown as data, not HTML
    assert not any("<b>" in m.value for m in at.markdown)
    assert at.dataframe[1].value.status.tolist() == ["needs correction"]  # history
    _ok(at.multiselect(key="review_statuses").set_value(["needs correction"]).run())
    assert _table(at).patient_id.tolist() == [pid]
    # invalid reviewer: an error, nothing saved
    at.text_input(key="review_reviewer").set_value("")
    _ok(at.button[0].click().run())
    assert at.error and len(review.all_rows(review.review_path(env))) == 1


def test_two_sessions_interleaved_save(env):
    """Two live AppTest sessions saving turn by turn (AppTest is not thread-safe: two threads each driving its own
    AppTest failed now and then with a widget-id KeyError, so the threads' concurrency is tested on the store in
    tests/unit/test_review.py); each session sees the other's saves on its next rerun."""
    a, b = (_ok(AppTest.from_file(PAGE, default_timeout=120).run()) for _ in range(2))
    pids = _table(a).patient_id.tolist()
    for i, pid in enumerate(pids):
        for at, status in ((a, "accepted"), (b, "excluded")):
            at.selectbox(key="review_patient").set_value(pid)
            at.selectbox(key="review_status").set_value(status)
            at.text_input(key="review_reviewer").set_value(status)
            _ok(at.button[0].click().run())
    rows = review.all_rows(review.review_path(env))
    assert len(rows) == 8 and rows.reviewer.value_counts().to_dict() == {"accepted": 4, "excluded": 4}
    _ok(a.run())
    assert (_table(a).status == "excluded").all()  # b saved last for every patient


def test_viewer_form_saves_and_home_shows_progress(env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/viewer.py"), default_timeout=120).run())
    pid, model = at.selectbox(key="viewer_patient").value, at.selectbox(key="viewer_left").value
    at.selectbox(key="viewer_review_status").set_value("accepted")
    at.text_input(key="viewer_review_reviewer").set_value("dr v")
    _ok(at.button(key="FormSubmitter:viewer_review_form-Save decision").click().run())
    cur = review.current_status(review.review_path(env), at.session_state["run"], model)
    assert cur.set_index("patient_id").loc[pid, "status"] == "accepted"
    home = _ok(AppTest.from_file(str(ROOT / "app_pages/home.py"), default_timeout=120).run())
    prog = next(d.value for d in home.dataframe if "accepted_share" in d.value.columns).set_index("model")
    assert prog.loc[model, "reviewed"] == 1 and prog.loc[model, "total"] == 4
    assert prog.loc[model, "accepted_share"] == 1.0
    assert (prog.drop(index=model).reviewed == 0).all()


def test_sidebar_review_status_filter(env):
    at = _ok(AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120).run())
    run, model = at.session_state["run"], at.session_state["strat_model"]
    pid = _table(_ok(AppTest.from_file(PAGE, default_timeout=120).run())).patient_id.iloc[0]
    review.save_review(review.review_path(env), run, model, pid, "needs correction", "", "dr a")
    _ok(at.sidebar.multiselect(key="review_filter").set_value(["needs correction"]).run())
    assert any("1 of 4 patients in the filter" in c.value for c in at.sidebar.caption)
    # the Overview's cohort metrics (pooled bins) follow the review filter, not the whole quantile range
    over = at.dataframe[0].value
    assert (over.n_patients == 1).all()
    lb = _ok(AppTest.from_file(str(ROOT / "app_pages/compare.py"), default_timeout=120))
    lb.session_state["compare_view"] = "Leaderboard"
    lb.session_state["review_filter"] = ["needs correction"]
    _ok(lb.run())
    assert (lb.dataframe[0].value.patients == 1).all()
    _ok(at.sidebar.multiselect(key="review_filter").set_value(["to review"]).run())
    assert any("3 of 4 patients in the filter" in c.value for c in at.sidebar.caption)
