import json

import nibabel as nib
import numpy as np

from core.io.cohort import discover, load_case
from core.io.demo_cohort import CASE_KINDS, DEMO_SHAPE, DEMO_SPACING_MM, DemoSpec, make_patient

from conftest import TINY_SPEC


def test_layout_names_splits(tiny_cohort):
    splits = json.loads((tiny_cohort / "splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "calibration": 1, "test": 4}
    assert len(set(sum(splits.values(), []))) == TINY_SPEC.n_patients
    pid = "BraTS2021_00000"
    for sfx in ("t1", "t1ce", "t2", "flair", "seg"):
        img = nib.load(tiny_cohort / pid / f"{pid}_{sfx}.nii.gz")
        assert img.shape == DEMO_SHAPE
        assert np.allclose(img.header.get_zooms()[:3], DEMO_SPACING_MM)
    man = json.loads((tiny_cohort / "demo_manifest.json").read_text())
    assert [p["kind"] for p in man["patients"][:len(CASE_KINDS)]] == list(CASE_KINDS)


def test_default_spec_is_big_enough():
    s = DemoSpec()
    assert s.n_patients >= 60 and s.n_test >= 40


def test_labels_and_tumour(tiny_cohort):
    man = {p["patient_id"]: p for p in json.loads((tiny_cohort / "demo_manifest.json").read_text())["patients"]}
    for files in discover(tiny_cohort):
        case = load_case(files)
        labels = set(np.unique(case.seg).tolist())
        assert labels <= {0, 1, 2, 4} and labels != {0}
        assert (case.seg[~case.brain_mask] == 0).all(), "tumour outside the brain"
        kind = man[files.patient_id]["kind"]
        if kind == "no_enhancement":
            assert 4 not in labels, "ET must be empty in no-enhancement cases"
        if kind == "typical":
            assert {1, 2, 4} <= labels


def test_deterministic_and_patients_differ(tmp_path):
    a = make_patient(3, tmp_path / "a", seed=11)
    b = make_patient(3, tmp_path / "b", seed=11)
    c = make_patient(3, tmp_path / "c", seed=12)
    assert a == b
    pid = a["patient_id"]
    x = [nib.load(tmp_path / d / pid / f"{pid}_flair.nii.gz").get_fdata() for d in "abc"]
    assert np.array_equal(x[0], x[1])
    assert not np.array_equal(x[0], x[2])


def test_modalities_have_distinct_contrast(tiny_cohort):
    case = load_case(discover(tiny_cohort)[0])
    wt = case.seg > 0
    brain = case.brain_mask & ~wt
    # oedema/tumour is brighter than normal brain on FLAIR and T2, and the contrasts are not copies
    t1, t1ce, t2, flair = case.image
    assert flair[wt].mean() > flair[brain].mean()
    assert t2[wt].mean() > t2[brain].mean()
    assert np.corrcoef(t1[case.brain_mask], t2[case.brain_mask])[0, 1] < 0.5
    et = case.seg == 4
    assert t1ce[et].mean() > t1[et].mean() * 1.3
