"""End to end on the tiny cohort: batch -> DuckDB -> queries; resumable; bad patients recorded."""
import duckdb
import nibabel as nib
import numpy as np

from core import store
from core.batch.pipeline import run_batch
from core.io.cohort import discover

TABLES = ("runs", "models", "patients", "evaluations", "metrics", "calibration_bins", "uncertainty_bins", "maps")


def test_batch_writes_every_table(results_db):
    con = duckdb.connect(str(results_db), read_only=True)
    for t in TABLES:
        assert con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] > 0, t
    ev = con.execute("SELECT model, method, count(*), count(*) FILTER (WHERE status='ok') FROM evaluations GROUP BY ALL").fetchall()
    assert sorted((m, meth, n, ok) for m, meth, n, ok in ev) == [
        ("SegResNet", "deterministic", 4, 4), ("SegResNet", "mc_dropout", 4, 4),
        ("UNet-Res", "deterministic", 4, 4), ("UNet-Res", "mc_dropout", 4, 4)]
    names = {r[0] for r in con.execute("SELECT DISTINCT metric FROM metrics").fetchall()}
    assert {"dice", "auroc_entropy", "ece", "mean_entropy", "mean_mi", "ace", "mce", "brier", "nll"} <= names
    # mutual information only where there are samples
    assert con.execute("SELECT count(*) FROM metrics WHERE metric='mean_mi' AND method='deterministic'").fetchone()[0] == 0
    # maps exist and open
    for kind, path in con.execute("SELECT kind, path FROM maps LIMIT 10").fetchall():
        img = nib.load(path)
        assert img.shape[:3] == (56, 64, 56)
    prob_path = con.execute("SELECT path FROM maps WHERE kind='prob' LIMIT 1").fetchone()[0]
    p = nib.load(prob_path).get_fdata()
    assert p.shape[-1] == 3 and 0 <= p.min() and p.max() <= 1.0 + 1e-6
    con.close()


def test_bins_reproduce_stored_metrics(results_db):
    """Per-patient ECE and AUROC recomputed from that patient's bins equal the stored numbers."""
    from core import metrics as M

    con = duckdb.connect(str(results_db), read_only=True)
    rows = con.execute("""SELECT model, method, patient_id, region, mask, value FROM metrics
                          WHERE metric = 'ece' LIMIT 6""").fetchall()
    for model, method, pid, region, mask, value in rows:
        b = con.execute("""SELECT bin, n, sum_prob, sum_true FROM calibration_bins WHERE model=? AND method=?
                           AND patient_id=? AND region=? AND mask=?""", [model, method, pid, region, mask]).fetchnumpy()
        n, sp, st = (np.zeros(M.N_CAL_BINS) for _ in range(3))
        n[b["bin"]], sp[b["bin"]], st[b["bin"]] = b["n"], b["sum_prob"], b["sum_true"]
        assert abs(M.calibration_from_bins(n, sp, st)["ece"] - value) < 1e-12
    con.close()


def test_rerun_skips_done(results_db, tiny_cohort, tiny_checkpoints):
    before = duckdb.connect(str(results_db), read_only=True).execute("SELECT count(*) FROM metrics").fetchone()[0]
    s = run_batch(tiny_cohort, results_db, tiny_checkpoints, T=3, split="test", progress=False, echo=lambda *_: None)
    assert s["ok"] == 0 and s["failed"] == 0 and s["skipped"] == 16
    con = duckdb.connect(str(results_db), read_only=True)
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == before
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    con.close()


def test_bad_patient_is_recorded_and_batch_goes_on(corrupt_copy, tiny_cohort, tiny_checkpoints, tmp_path):
    pid = "BraTS2021_00001"
    (corrupt_copy / pid / f"{pid}_t1ce.nii.gz").write_bytes(b"\x1f\x8b garbage")
    db = tmp_path / "r.duckdb"
    s = run_batch(corrupt_copy, db, tiny_checkpoints[1:], methods=["deterministic"], progress=False,
                  save_maps=False, echo=lambda *_: None)
    assert s["failed"] == 1 and s["ok"] == 7
    con = store.connect(db, read_only=True)
    err = con.execute("SELECT patient_id, error FROM evaluations WHERE status = 'failed'").fetchall()
    assert err[0][0] == pid and err[0][1].startswith(pid) and "t1ce" in err[0][1]
    assert con.execute("SELECT count(*) FROM metrics WHERE patient_id = ?", [pid]).fetchone()[0] == 0
    con.close()
    # fixed input: the failed patient is retried, the others skipped
    import shutil

    shutil.copy(tiny_cohort / pid / f"{pid}_t1ce.nii.gz", corrupt_copy / pid / f"{pid}_t1ce.nii.gz")
    s2 = run_batch(corrupt_copy, db, tiny_checkpoints[1:], methods=["deterministic"], progress=False,
                   save_maps=False, echo=lambda *_: None)
    assert s2["ok"] == 1 and s2["skipped"] == 7 and s2["failed"] == 0


def test_cli_run(tiny_cohort, tiny_checkpoints, tmp_path):
    from core.cli import main

    db = tmp_path / "cli.duckdb"
    rc = main(["run", "--cohort", str(tiny_cohort), "--db", str(db), "--models", str(tiny_checkpoints[1]),
               "--methods", "deterministic", "--split", "calibration", "--no-maps"])
    assert rc == 0
    con = store.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM evaluations WHERE status='ok'").fetchone()[0] == 1


def test_bin_auroc_within_0002_on_demo_predictions(tiny_cohort, tiny_checkpoints):
    """On real demo predictions (float32 MC-dropout maps), AUROC from the stored bins is within 0.002 of exact."""
    from sklearn.metrics import roc_auc_score

    from core import metrics as M
    from core.io.cohort import discover, labels_to_regions, load_case
    from core.io.checkpoints import load_checkpoint
    from core.inference.uncertainty import predict

    lm = load_checkpoint(tiny_checkpoints[1])
    for files in discover(tiny_cohort, "test")[:2]:
        case = load_case(files)
        truth = labels_to_regions(case.seg)
        pred = predict(lm, case.image, "mc_dropout", T=3)
        ev = M.evaluate_patient(pred.prob, pred.entropy, pred.mi, truth, case.brain_mask)
        got = {(r, m, k): v for r, m, k, v in ev.metrics}
        brain = case.brain_mask
        for i, region in enumerate(M_REGIONS):
            err = (pred.prob[i][brain] >= 0.5) != truth[i][brain]
            if err.any() and (~err).any():
                exact = roc_auc_score(err, pred.entropy[i][brain])
                assert abs(got[(region, "brain", "auroc_entropy")] - exact) < 0.002
                exact_mi = roc_auc_score(err, pred.mi[i][brain])
                assert abs(got[(region, "brain", "auroc_mi")] - exact_mi) < 0.002


M_REGIONS = ("WT", "TC", "ET")


def test_batch_runs_every_method_and_fits_temperatures(tiny_cohort, tiny_checkpoints, unet_set, tmp_path):
    """A model with members, snapshots and an auxiliary network runs every method; a bare model has the
    member-based methods left out (reported, not failed); +ts fits and stores one temperature per region."""
    METHODS = ["deterministic", "deterministic+ts", "mc_dropout", "ensemble", "checkpoint_ensemble+tta+ts", "auxiliary"]
    db = tmp_path / "all.duckdb"
    s = run_batch(tiny_cohort, db, [unet_set, str(tiny_checkpoints[0])], methods=METHODS, T=2,
                  split="test", progress=False, echo=lambda *_: None)
    assert s["failed"] == 0
    bare = {u.split(":")[0] for u in s["unavailable"]}
    assert bare == {"SegResNet/ensemble", "SegResNet/checkpoint_ensemble+tta+ts", "SegResNet/auxiliary"}
    con = store.connect(db, read_only=True)
    ev = con.execute("SELECT model, method, count(*) FROM evaluations WHERE status = 'ok' GROUP BY ALL").fetchall()
    assert {(m, me) for m, me, _ in ev} == {("UNet-Res", me) for me in METHODS} | {
        ("SegResNet", me) for me in ("deterministic", "deterministic+ts", "mc_dropout")}
    assert all(n == 4 for *_, n in ev)
    temps = store.run_temperatures(con, s["run_id"])
    # one row per (model, +ts method, region): each +ts method has the temperatures fitted on its own output
    ts_pairs = {("UNet-Res", "deterministic+ts"), ("UNet-Res", "checkpoint_ensemble+tta+ts"), ("SegResNet", "deterministic+ts")}
    assert sorted(zip(temps.model, temps.method, temps.region)) == sorted((m, me, r) for m, me in ts_pairs for r in M_REGIONS)
    assert (temps.temperature.isna() | (temps.temperature > 0)).all()
    own = temps[temps.model == "UNet-Res"].pivot(index="region", columns="method", values="temperature")
    assert (own["checkpoint_ensemble+tta+ts"] - own["deterministic+ts"]).abs().max() > 1e-3
    fitted = temps.dropna(subset=["temperature"])  # NaN: the calibration ROI had one class only (then T = 1 is used)
    assert len(fitted) >= 2 and (fitted.nll_after <= fitted.nll_before + 1e-12).all()
    assert (temps.temperature.isna() == (temps.n_positive == 0)).all()
    d = con.execute("""SELECT a.value - b.value FROM metrics a JOIN metrics b USING (run_id, model, patient_id, region, mask, metric)
                       WHERE a.metric = 'dice' AND a.method = 'deterministic' AND b.method = 'deterministic+ts'""").fetchall()
    assert len(d) == 2 * 4 * 3 and max(abs(x[0]) for x in d) < 1e-9
    kinds = con.execute("SELECT method, list(DISTINCT kind ORDER BY kind) FROM maps WHERE model = 'UNet-Res' GROUP BY ALL").fetchall()
    kinds = dict(kinds)
    assert "epkl" in kinds["ensemble"] and "epkl" in kinds["checkpoint_ensemble+tta+ts"] and "epkl" not in kinds["deterministic"] and "mi" not in kinds["auxiliary"]
    soft = con.execute("SELECT count(*) FROM metrics WHERE metric = 'soft_ece'").fetchone()[0]
    assert soft > 0, "the demo test patients carry raters"
    con.close()
    # rerun: everything skipped, temperatures read back, not refitted
    s2 = run_batch(tiny_cohort, db, [unet_set, str(tiny_checkpoints[0])], methods=METHODS, T=2,
                   split="test", progress=False, echo=lambda *_: None)
    assert s2["ok"] == 0 and s2["skipped"] == s["ok"]


def test_patient_without_ground_truth_is_inference_only(corrupt_copy, tiny_checkpoints, tmp_path):
    """No _seg file: the evaluation is ok, uncertainty aggregates and volumes are stored, no Dice / calibration
    / error-based rows and no bins; patients.has_gt is false (the app's home page counts it)."""
    pid = discover(corrupt_copy, "test")[0].patient_id
    for f in (corrupt_copy / pid).glob(f"{pid}_*"):
        if f.name.endswith("_seg.nii.gz") or "_rater" in f.name:
            f.unlink()
    db = tmp_path / "nogt.duckdb"
    s = run_batch(corrupt_copy, db, [str(tiny_checkpoints[1])], methods=["deterministic", "mc_dropout"], T=2,
                  split="test", progress=False, echo=lambda *_: None)
    assert s["failed"] == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT has_gt FROM patients WHERE patient_id = ?", [pid]).fetchone()[0] is False
    names = {r[0] for r in con.execute("SELECT DISTINCT metric FROM metrics WHERE patient_id = ?", [pid]).fetchall()}
    assert {"mean_entropy", "mean_mi", "volume_pred_ml", "uncertain_fraction"} <= names
    assert not names & {"dice", "hd95", "ece", "brier", "nll", "auroc_entropy", "vol_crps_ml", "soft_ece"}
    for t in ("calibration_bins", "uncertainty_bins"):
        assert con.execute(f"SELECT count(*) FROM {t} WHERE patient_id = ?", [pid]).fetchone()[0] == 0
    kinds = {r[0] for r in con.execute("SELECT kind FROM maps WHERE patient_id = ?", [pid]).fetchall()}
    assert "error" not in kinds and {"prob", "entropy", "pred"} <= kinds
    con.close()
