"""Each label set end to end: a small cohort in that set's naming and labels (written here from the tiny demo
cohort), through the batch, with the stored Dice equal to the Dice of the exported label map's regions
against the set's regions; a BraTS 2024 post-treatment case with a resection cavity (label 4) is read, and a
label outside the chosen set is a clear per-patient error."""
import json
import shutil

import duckdb
import nibabel as nib
import numpy as np
import pytest

from core.batch.pipeline import run_batch
from core.io.cohort import CaseError, discover, load_case
from core.io.label_sets import LABEL_SETS
from core.metrics.overlap import dice

# label set -> (patient id prefix, BraTS 2021 label -> this set's label); RC (4) added by hand for brats2024-gli
SETS = {"brats2021": ("BraTS2021_", {1: 1, 2: 2, 4: 4}), "brats2023": ("Case-", {1: 1, 2: 2, 4: 3}),
        "brats2024-gli": ("BraTS-GLI-", {1: 1, 2: 2, 4: 3}), "brats-men": ("BraTS-MEN-", {1: 1, 2: 2, 4: 3}),
        "brats-met": ("BraTS-MET-", {1: 1, 2: 2, 4: 3}), "brats-ped": ("BraTS-PED-", {1: 2, 2: 4, 4: 1})}
NEW = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}


def _write_cohort(src_cohort, dst, name, n=2, add_rc=False):
    prefix, mapping = SETS[name]
    cases = discover(src_cohort, "test")[:n]
    for k, files in enumerate(cases):
        pid = f"{prefix}{k:05d}" + ("" if name == "brats2021" else "-000")
        folder = dst / pid
        folder.mkdir(parents=True)
        old_pid = files.patient_id
        for mod in ("t1", "t1ce", "t2", "flair", "seg"):
            src = files.folder / f"{old_pid}_{mod}.nii.gz"
            if name == "brats2021":
                out = folder / f"{pid}_{mod}.nii.gz"
            else:
                out = folder / f"{pid}-{NEW[mod]}.nii.gz"
            if mod != "seg":
                shutil.copy(src, out)
                continue
            img = nib.load(src)
            lab = np.asarray(img.dataobj).astype(np.uint8)
            new = np.zeros_like(lab)
            for a, b in mapping.items():
                new[lab == a] = b
            if add_rc:  # a resection cavity next to the tumour: label 4, in no region
                brain = np.asarray(nib.load(files.folder / f"{old_pid}_flair.nii.gz").dataobj) != 0
                cavity = np.zeros_like(brain)
                cavity[5:9, 20:24, 20:24] = True
                new[cavity & brain & (lab == 0)] = 4
            nib.save(nib.Nifti1Image(new, img.affine), out)
    return dst


@pytest.mark.parametrize("name", list(SETS))
def test_label_set_end_to_end(name, tiny_cohort, tiny_checkpoints, tmp_path):
    cohort = _write_cohort(tiny_cohort, tmp_path / "cohort", name, add_rc=name == "brats2024-gli")
    db = tmp_path / "r.duckdb"
    s = run_batch(cohort, db, [str(tiny_checkpoints[1])], methods=["deterministic"], progress=False,
                  echo=lambda *_: None, quality=False)
    assert s["ok"] == 2 and s["failed"] == 0
    con = duckdb.connect(str(db), read_only=True)
    schemes = {r[0] for r in con.execute("SELECT label_scheme FROM patients").fetchall()}
    assert schemes == {name}
    ls = LABEL_SETS[name]
    for pid, path in con.execute("SELECT patient_id, path FROM maps WHERE kind = 'pred'").fetchall():
        pred = np.asarray(nib.load(path).dataobj).astype(np.uint8)
        assert set(np.unique(pred)) <= ls.allowed - ({4} if name == "brats2024-gli" else set())  # RC never painted
        files = next(f for f in discover(cohort) if f.patient_id == pid)
        truth = ls.to_regions(load_case(files).seg)
        got = ls.to_regions(pred)
        for r, region in enumerate(("WT", "TC", "ET")):
            stored = con.execute("SELECT value FROM metrics WHERE patient_id = ? AND region = ? AND metric = 'dice'",
                                 [pid, region]).fetchone()[0]
            assert stored == pytest.approx(dice(got[r], truth[r]), abs=1e-12), (name, pid, region)
    con.close()


def test_post_treatment_cavity_is_read_and_belongs_to_no_region(tiny_cohort, tmp_path):
    cohort = _write_cohort(tiny_cohort, tmp_path / "c", "brats2024-gli", n=1, add_rc=True)
    files = discover(cohort)[0]
    case = load_case(files)
    assert case.label_scheme == "brats2024-gli" and (case.seg == 4).any()
    regions = LABEL_SETS["brats2024-gli"].to_regions(case.seg)
    assert not regions[:, case.seg == 4].any()
    with pytest.raises(CaseError, match=r"label values \[4\] outside \[0, 1, 2, 3\] of label set brats2023"):
        load_case(files, label_set="brats2023")  # the 2023 glioma set has no label 4: a clear per-patient error


def test_explicit_label_set_enters_the_run_config(tiny_cohort, tiny_checkpoints, tmp_path):
    cohort = _write_cohort(tiny_cohort, tmp_path / "c", "brats2023", n=1)
    db = tmp_path / "r.duckdb"
    run_batch(cohort, db, [str(tiny_checkpoints[1])], methods=["deterministic"], progress=False, echo=lambda *_: None,
              quality=False, label_set="brats-men")
    con = duckdb.connect(str(db), read_only=True)
    config = json.loads(con.execute("SELECT config FROM runs").fetchone()[0])
    assert config["label_set"] == "brats-men"
    assert con.execute("SELECT label_scheme FROM patients").fetchone()[0] == "brats-men"
    with pytest.raises(ValueError, match="unknown label set"):
        run_batch(cohort, db, [str(tiny_checkpoints[1])], label_set="brats1999", progress=False)
