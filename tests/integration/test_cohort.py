import gzip

import nibabel as nib
import numpy as np
import pytest

from core.io.cohort import CaseError, discover, labels_to_regions, load_case, regions_to_labels

PID = "BraTS2021_00001"


def _files(cohort):
    return next(f for f in discover(cohort) if f.patient_id == PID)


def _rewrite(path, fn):
    img = nib.load(path)
    nib.save(nib.Nifti1Image(fn(np.asarray(img.dataobj)), img.affine), path)


def test_regions_roundtrip():
    seg = np.array([0, 1, 2, 4, 2, 0], np.uint8).reshape(1, 1, 6)
    r = labels_to_regions(seg)
    assert r[:, 0, 0].tolist() == [[0, 1, 1, 1, 1, 0], [0, 1, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]]
    assert np.array_equal(regions_to_labels(r), seg)
    seg23 = np.where(seg == 4, 3, seg)
    assert np.array_equal(labels_to_regions(seg23, "brats2023"), r)


def test_discover_split(tiny_cohort):
    assert len(discover(tiny_cohort)) == 8
    assert len(discover(tiny_cohort, "test")) == 4


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / PID / f"{PID}_t2.nii.gz").unlink(), "missing modality t2"),
    (lambda d: (d / PID / f"{PID}_flair.nii.gz").write_bytes(b"this is not a nifti file"), "cannot read flair"),
    (lambda d: (d / PID / f"{PID}_t1.nii.gz").write_bytes(gzip.compress((d / PID / f"{PID}_t1ce.nii.gz").read_bytes())[:300]), "cannot read t1"),
    (lambda d: _rewrite(d / PID / f"{PID}_t1ce.nii.gz", lambda a: np.where(a > 0, np.nan, a).astype(np.float32)), "NaN/Inf"),
    (lambda d: _rewrite(d / PID / f"{PID}_t2.nii.gz", lambda a: np.zeros_like(a)), "all zero"),
    (lambda d: _rewrite(d / PID / f"{PID}_t2.nii.gz", lambda a: a[:-1]), "shape of t2"),
    (lambda d: _rewrite(d / PID / f"{PID}_seg.nii.gz", lambda a: np.where(a == 2, 7, a).astype(np.uint8)), "label values [7]"),
    (lambda d: _rewrite(d / PID / f"{PID}_t1.nii.gz", lambda a: np.stack([a, a], -1)), "4 dimensions"),
])
def test_bad_input_names_patient_and_problem(corrupt_copy, damage, message):
    damage(corrupt_copy)
    with pytest.raises(CaseError) as e:
        load_case(_files(corrupt_copy))
    assert str(e.value).startswith(PID) and message in str(e.value)


def test_not_a_patient_folder(corrupt_copy):
    (corrupt_copy / "notes").mkdir()
    (corrupt_copy / "notes" / "readme.txt").write_text("hi")
    files = next(f for f in discover(corrupt_copy) if f.patient_id == "notes")
    with pytest.raises(CaseError, match="not a patient folder"):
        load_case(files)


def test_affine_mismatch(corrupt_copy):
    p = corrupt_copy / PID / f"{PID}_flair.nii.gz"
    img = nib.load(p)
    aff = img.affine.copy()
    aff[0, 3] += 5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), p)
    with pytest.raises(CaseError, match="affine of flair"):
        load_case(_files(corrupt_copy))


def test_brats2023_naming(corrupt_copy):
    src = corrupt_copy / PID
    new = corrupt_copy / "BraTS-GLI-00001-000"
    new.mkdir()
    for a, b in {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}.items():
        (src / f"{PID}_{a}.nii.gz").rename(new / f"{new.name}-{b}.nii.gz")
    seg = nib.load(src / f"{PID}_seg.nii.gz")
    lab = np.asarray(seg.dataobj)
    nib.save(nib.Nifti1Image(np.where(lab == 4, 3, lab).astype(np.uint8), seg.affine), new / f"{new.name}-seg.nii.gz")
    case = load_case(next(f for f in discover(corrupt_copy) if f.patient_id == new.name))
    assert case.label_scheme == "brats2024-gli"  # BraTS-GLI ids: the post-treatment set, which reads 2023 cases too
    assert labels_to_regions(case.seg, case.label_scheme)[2].sum() == (lab == 4).sum()
