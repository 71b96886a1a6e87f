"""Patient grid -> model grid (RAS, card spacing) -> patient grid: exact reorientation, resampling in the batch."""
import json

import nibabel as nib
import numpy as np
import torch

from core import store
from core.io.cohort import discover
from core.inference.resample import plan


def test_reorientation_matches_nibabel_and_round_trips():
    rng = np.random.default_rng(0)
    img = rng.random((2, 5, 6, 7)).astype(np.float32)
    aff = np.array([[0, 0, -2, 10], [-1, 0, 0, 5], [0, 1.5, 0, 3], [0, 0, 0, 1.0]])
    g = plan(aff, img.shape, {"spacing_mm": [2, 1, 1.5]})  # RAS spacing already the model's: no interpolation
    assert g.reorient and not g.resample
    m = g.to_model(img)
    canon = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(img, 0, -1), aff))
    assert np.array_equal(np.moveaxis(np.asarray(canon.dataobj), -1, 0), m)
    assert np.array_equal(g.to_patient(m), img)


def test_identity_and_resampled_shapes():
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    x = np.ones((4, 8, 10, 12), np.float32)
    assert plan(aff, x.shape, {"spacing_mm": [3, 3, 3.002]}).to_model(x) is x  # within 1e-3 relative: untouched
    g = plan(np.diag([1.0, 1.0, 1.0, 1.0]), (240, 240, 155), {"spacing_mm": [3, 3, 3]})
    assert g.model_shape == (80, 80, 52) and abs(g.voxel_ratio - 27) < 1e-9
    maps = np.full((3, 80, 80, 52), 0.9, np.float32)
    back = g.to_patient(maps, 0, 1)
    assert back.shape == (3, 240, 240, 155) and back.max() <= 1.0


def _write_upsampled_las(src_cohort, dst, pid):
    """Copy one patient at 1.5 mm (each voxel repeated 2 x 2 x 2) and in LAS orientation (x flipped)."""
    (dst / pid).mkdir(parents=True)
    for f in sorted((src_cohort / pid).glob("*.nii.gz")):
        img = nib.load(f)
        a = np.asarray(img.dataobj)
        up = a.repeat(2, 0).repeat(2, 1).repeat(2, 2)[::-1]
        aff = img.affine.copy()
        aff[:3, :3] = aff[:3, :3] / 2
        # x flipped: voxel i of the new grid is at the world position of old voxel (n - 1 - i) at 1.5 mm
        aff[:3, 3] = aff[:3, 3] - 0.25 * img.affine[:3, :3].sum(1) + aff[:3, 0] * (up.shape[0] - 1)
        aff[:3, 0] = -aff[:3, 0]
        out = nib.Nifti1Image(np.ascontiguousarray(up), aff)
        out.header.set_data_dtype(a.dtype)
        nib.save(out, dst / pid / f.name)
    (dst / "splits.json").write_text(json.dumps({"calibration": [pid]}))


def test_batch_resamples_to_model_spacing_and_back(tiny_cohort, tiny_checkpoints, tmp_path):
    from core.batch.pipeline import run_batch

    torch.set_num_threads(1)
    pid = discover(tiny_cohort, "calibration")[0].patient_id
    up = tmp_path / "up"
    _write_upsampled_las(tiny_cohort, up, pid)
    ckpt = [str(tiny_checkpoints[1])]  # UNet-Res, card spacing 3 mm
    kw = dict(methods=["deterministic", "deterministic+ts", "mc_dropout"], T=2, split="calibration", progress=False,
              echo=lambda *_: None, quality=False)
    s1 = run_batch(tiny_cohort, tmp_path / "native.duckdb", ckpt, maps_dir=tmp_path / "m1", **kw)
    s2 = run_batch(up, tmp_path / "up.duckdb", ckpt, maps_dir=tmp_path / "m2", **kw)
    assert s1["ok"] == s2["ok"] == 3 and s2["failed"] == 0
    for db in ("native", "up"):  # temperatures fitted through the same grid path
        con = store.connect(tmp_path / f"{db}.duckdb", read_only=True)
        assert con.execute("SELECT count(*) FROM temperatures").fetchone()[0] == 3
        con.close()

    def dice(db):
        con = store.connect(db, read_only=True)
        rows = con.execute("SELECT method, region, value FROM metrics WHERE metric = 'dice' ORDER BY ALL").fetchall()
        vols = con.execute("SELECT method, region, value FROM metrics WHERE metric = 'volume_pred_ml' ORDER BY ALL").fetchall()
        maps = dict(con.execute("SELECT kind, path FROM maps WHERE method = 'mc_dropout'").fetchall())
        con.close()
        return rows, vols, maps

    d1, v1, m1 = dice(tmp_path / "native.duckdb")
    d2, v2, m2 = dice(tmp_path / "up.duckdb")
    assert [r[:2] for r in d1] == [r[:2] for r in d2]
    for a, b in zip(d1, d2):
        assert abs(a[2] - b[2]) < 0.05, (a, b)
    # volumes in ml agree although the voxels are 8 times smaller (loosely: the 1-epoch model's p hovers near 0.5,
    # so interpolating p back to 1.5 mm moves many voxels across the threshold)
    for a, b in zip(v1, v2):
        assert abs(a[2] - b[2]) <= 0.25 * max(a[2], 1.0), (a, b)
    patient = nib.load(up / pid / f"{pid}_t1.nii.gz")
    for kind in ("prob", "entropy", "mi", "epkl", "pred", "error"):
        img = nib.load(m2[kind])
        assert img.shape[:3] == patient.shape == (112, 128, 112), kind
        assert np.allclose(img.affine, patient.affine), kind
    p_native = nib.load(m1["prob"]).get_fdata()
    p_up = nib.load(m2["prob"]).get_fdata()
    p_native_up = p_native.repeat(2, 0).repeat(2, 1).repeat(2, 2)[::-1]
    # (the 1-epoch model's p hovers near 0.5: the two grids' probabilities agree in pattern, not to the last digit)
    assert np.corrcoef(p_up.ravel(), p_native_up.ravel())[0, 1] > 0.8
    assert np.abs(p_up - p_native_up).mean() < np.abs(p_up - p_up.mean()).mean()
    assert float(np.asarray(nib.load(m2["epkl"]).dataobj).min()) >= 0
