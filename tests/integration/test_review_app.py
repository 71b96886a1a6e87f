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


def test_budget_ranking_read_sums_to_budget(env):
    import duckdb

    from core.store import review_budget_ranking

    con = duckdb.connect(str(env), read_only=True)
    try:
        run, model, method = con.execute("SELECT run_id, model, method FROM evaluations LIMIT 1").fetchone()
        total = con.execute("""SELECT sum(n_error + n_correct) FROM uncertainty_bins WHERE run_id = ? AND model = ?
                               AND method = ? AND region = 'WT' AND mask = 'brain' AND measure = 'entropy'""",
                            [run, model, method]).fetchone()[0]
        rank, info = review_budget_ranking(con, run, model, method, "WT", 0.02)
        one, _ = review_budget_ranking(con, run, model, method, "WT", 0.02, patient_ids=[rank.patient_id.iloc[-1]])
    finally:
        con.close()
    assert len(rank) == 4 and rank.review_voxels.sum() == pytest.approx(0.02 * total)
    assert info["budget_voxels"] == pytest.approx(0.02 * total) and 0 <= info["threshold"] <= 1
    assert rank.review_share.is_monotonic_decreasing and rank.cumulative_share.iloc[-1] == pytest.approx(1.0)
    assert ((rank.capture.dropna() >= 0) & (rank.capture.dropna() <= 1 + 1e-9)).all()
    assert len(one) == 1 and one.review_share.iloc[0] == pytest.approx(1.0)  # a one-patient cohort holds it all


def test_budget_priority_evidence_and_viewer_focus_link(env):
    at = _ok(AppTest.from_file(PAGE, default_timeout=120).run())
    t = _table(at)
    assert t.open.str.contains("focus=uncertainty").all()
    assert {"lesions_pred_WT", "lesions_missed_WT", "lesions_pred_ET"} <= set(t.columns)
    assert (t.lesions_pred_WT.dropna() >= 0).all()
    _ok(at.selectbox(key="review_priority").set_value(
        "review budget ranking (share of the cohort's most uncertain voxels)").run())
    b = _table(at)
    assert b.review_share.is_monotonic_decreasing and b.cumulative_share.iloc[-1] == pytest.approx(1.0)
    assert any("Cohort threshold" in c.value for c in at.caption)
    # the viewer opened from such a link lands on the left model's most uncertain slice
    from dashboard import views
    from dashboard import viewer as V

    link = b.open.iloc[0]
    pid = b.patient_id.iloc[0]
    model = at.selectbox(key="review_model").value
    v = AppTest.from_file(str(ROOT / "app_pages/viewer.py"), default_timeout=120)
    for kv in link.split("?", 1)[1].split("&"):
        k, val = kv.split("=", 1)
        from urllib.parse import unquote
        v.query_params[k] = unquote(val)
    _ok(v.run())
    assert v.selectbox(key="viewer_patient").value == pid and v.selectbox(key="viewer_left").value == model
    shown = v.slider(key="viewer_slice").value
    import duckdb
    con = duckdb.connect(str(env), read_only=True)
    path = con.execute("SELECT path FROM maps WHERE patient_id = ? AND model = ? AND kind = 'entropy' AND method = ?",
                       [pid, model, v.query_params["method"]]).fetchone()[0]
    con.close()
    import nibabel as nib
    ent = np.asarray(nib.load(path).dataobj, np.float32)[..., 0]
    assert shown == V.best_slice(ent, v.session_state["viewer_axis"])  # the most uncertain WT slice
    assert views is not None


def test_export_folder_zip_and_cli(env, tmp_path):
    import io
    import zipfile

    import duckdb
    import nibabel as nib

    from core.cli import main
    from core.io.review_export import export_reviews

    con = duckdb.connect(str(env), read_only=True)
    run, model = con.execute("SELECT run_id, model FROM evaluations ORDER BY model LIMIT 1").fetchone()
    pids = [r[0] for r in con.execute("SELECT DISTINCT patient_id FROM evaluations ORDER BY 1").fetchall()]
    pred = dict(con.execute("SELECT patient_id, path FROM maps WHERE run_id = ? AND model = ? AND method = "
                            "'deterministic' AND kind = 'pred'", [run, model]).fetchall())
    con.close()
    store = review.review_path(env)
    review.save_review(store, run, model, pids[0], "needs correction", "ET missed", "dr a")
    review.save_review(store, run, model, pids[1], "needs correction", "", "dr a")
    review.save_review(store, run, model, pids[1], "accepted", "fine after all", "dr b")  # latest wins
    review.save_review(store, run, model, pids[2], "excluded", "", "dr a")
    out = tmp_path / "export"
    table = export_reviews(env, run, model, out)
    assert table.patient_id.tolist() == [pids[0]] and table.note.tolist() == ["ET missed"]
    seg = out / pids[0] / f"{pids[0]}_seg.nii.gz"
    a, b = nib.load(seg), nib.load(pred[pids[0]])
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    images = sorted(p.name for p in (out / pids[0]).iterdir())
    assert len(images) == 5 and all(n.startswith(pids[0]) for n in images)  # seg + 4 modalities, BraTS naming
    assert not any("rater" in n for n in images)
    csv = (out / "worklist.csv").read_text()
    assert "ET missed" in csv and pids[1] not in csv
    # the CLI: both statuses, zipped
    z = tmp_path / "e.zip"
    assert main(["export-reviews", "--db", str(env), "--model", model, "--status", "needs correction", "excluded",
                 "--out", str(tmp_path / "cli"), "--zip", str(z)]) == 0
    names = zipfile.ZipFile(io.BytesIO(z.read_bytes())).namelist()
    assert f"{pids[0]}/{pids[0]}_seg.nii.gz" in names and f"{pids[2]}/{pids[2]}_seg.nii.gz" in names
    assert "worklist.csv" in names and not any(n.startswith(pids[1]) for n in names)
    # bad input: a clear error, exit status 2
    assert main(["export-reviews", "--db", str(tmp_path / "none.duckdb"), "--model", model, "--out", str(out)]) == 2
    Path(pred[pids[0]]).rename(str(pred[pids[0]]) + ".gone")
    try:
        with pytest.raises(ValueError, match=pids[0]):
            export_reviews(env, run, model, tmp_path / "x")
    finally:
        Path(str(pred[pids[0]]) + ".gone").rename(pred[pids[0]])


def test_export_button_on_page(env):
    at = _ok(AppTest.from_file(PAGE, default_timeout=120).run())
    model = at.selectbox(key="review_model").value
    pid = _table(at).patient_id.iloc[0]
    review.save_review(review.review_path(env), at.session_state["run"], model, pid, "needs correction", "", "dr a")
    _ok(at.run())
    _ok(at.button(key="review_export").click().run())
    assert not at.error
    assert any("Download 1 patients" in str(getattr(e, "label", "")) for e in at.get("download_button"))
