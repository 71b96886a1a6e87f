"""Discover, load and validate BraTS-style cases (nibabel); label schemes and region masks.

A cohort is a folder with one sub-folder per patient. Two namings are recognised per patient folder:

* BraTS 2021: ``<pid>/<pid>_{t1,t1ce,t2,flair}.nii.gz`` and ``<pid>_seg.nii.gz`` (labels 1 NCR, 2 ED, 4 ET)
* BraTS 2023+: ``<pid>/<pid>-{t1n,t1c,t2w,t2f}.nii.gz`` and ``<pid>-seg.nii.gz`` (labels 1, 2, 3 = ET)

Images are returned channel-first as float32 arrays of shape (C, X, Y, Z) in the channel order the model
card asks for (canonical names ``t1, t1ce, t2, flair``). Region masks are (3, X, Y, Z) bool in the order
WT, TC, ET. Every problem raises :class:`CaseError` whose message starts with the patient id.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from core.io.label_sets import LabelSet, get_label_set, label_set_for

CANONICAL_MODALITIES = ("t1", "t1ce", "t2", "flair")
# canonical modality -> file suffix per naming scheme
NAMING = {
    "brats2021": {"sep": "_", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    "brats2023": {"sep": "-", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}


class CaseError(ValueError):
    """Bad input for one patient; the message names the patient and the problem."""

    def __init__(self, patient_id: str, problem: str):
        super().__init__(f"{patient_id}: {problem}")
        self.patient_id = patient_id
        self.problem = problem


@dataclass
class CaseFiles:
    patient_id: str
    folder: Path
    naming: str | None  # 'brats2021' | 'brats2023' | None (nothing recognised)
    images: dict[str, Path] = field(default_factory=dict)  # canonical modality -> path
    seg: Path | None = None
    raters: list[Path] = field(default_factory=list)  # <pid>{_,-}rater<k>.nii.gz, sorted by k


@dataclass
class Case:
    patient_id: str
    image: np.ndarray  # (C, X, Y, Z) float32, channels in the requested order
    seg: np.ndarray | None  # (X, Y, Z) uint8 label map, None when there is no ground truth
    affine: np.ndarray  # (4, 4) voxel -> world (mm)
    spacing: tuple[float, float, float]  # mm
    label_scheme: str
    source: str
    raters: np.ndarray | None = None  # (K, X, Y, Z) uint8 label maps of K raters, None when there are none

    @property
    def brain_mask(self) -> np.ndarray:
        """(X, Y, Z) bool: voxels where any input channel is non-zero."""
        return (self.image != 0).any(axis=0)


def detect_case(folder: Path) -> CaseFiles:
    """The files of one patient folder (BraTS 2021 or 2023+ naming); raises CaseError naming the patient."""
    pid = folder.name
    for naming, suf in NAMING.items():
        sep = suf["sep"]
        imgs = {m: folder / f"{pid}{sep}{suf[m]}.nii.gz" for m in CANONICAL_MODALITIES}
        found = {m: p for m, p in imgs.items() if p.exists()}
        if found:
            seg = folder / f"{pid}{sep}seg.nii.gz"
            raters = sorted(folder.glob(f"{pid}{sep}rater*.nii.gz"),
                            key=lambda p: int("".join(c for c in p.name[len(pid) + 6:] if c.isdigit()) or 0))
            return CaseFiles(pid, folder, naming, found, seg if seg.exists() else None, raters)
    return CaseFiles(pid, folder, None)


def discover(cohort_dir: str | Path, split: str | None = None) -> list[CaseFiles]:
    """All patient folders of a cohort, sorted by id. ``split`` selects ids listed in ``splits.json``."""
    root = Path(cohort_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"cohort folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if split:
        splits_file = root / "splits.json"
        if not splits_file.exists():
            raise FileNotFoundError(f"--split {split} given but {splits_file} does not exist")
        keep = set(json.loads(splits_file.read_text()).get(split, []))
        folders = [f for f in folders if f.name in keep]
    return [detect_case(f) for f in folders]


def read_splits(cohort_dir: str | Path) -> dict[str, list[str]]:
    p = Path(cohort_dir) / "splits.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _load_nifti(pid: str, path: Path, what: str):
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for truncated / non-NIfTI files
        raise CaseError(pid, f"cannot read {what} file {path.name}: {type(e).__name__}: {e}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(pid, f"{what} file {path.name} has {data.ndim} dimensions {data.shape}, expected 3")
    return img, data


def load_case(files: CaseFiles, channel_order=CANONICAL_MODALITIES, require_seg: bool = False,
              label_set: str | None = None) -> Case:
    """Load and validate one patient. Raises :class:`CaseError` naming the patient and the problem.

    ``label_set``: the name of the patient's label set (:mod:`core.io.label_sets`); None: chosen by the naming
    and the patient id (:func:`core.io.label_sets.label_set_for`). A label value outside the set is a CaseError.
    """
    pid = files.patient_id
    if files.naming is None:
        raise CaseError(pid, f"folder {files.folder} holds no BraTS image file (not a patient folder?)")
    missing = [m for m in channel_order if m not in files.images]
    if missing:
        sfx = [NAMING[files.naming][m] for m in missing]
        raise CaseError(pid, f"missing modality {', '.join(sfx)}")
    chans, ref = [], None
    for m in channel_order:
        img, data = _load_nifti(pid, files.images[m], m)
        if ref is None:
            ref = img
        else:
            if data.shape != ref.shape[:3]:
                raise CaseError(pid, f"shape of {m} {data.shape} differs from {channel_order[0]} {ref.shape[:3]}")
            if not np.allclose(img.affine, ref.affine, atol=1e-3):
                raise CaseError(pid, f"affine of {m} differs from {channel_order[0]}")
        data = data.astype(np.float32, copy=False)
        if not np.isfinite(data).all():
            raise CaseError(pid, f"{m} contains {int((~np.isfinite(data)).sum())} NaN/Inf voxels")
        if not data.any():
            raise CaseError(pid, f"{m} is all zero")
        chans.append(data)
    image = np.stack(chans)
    try:
        labels = label_set_for(pid, files.naming, label_set)
    except ValueError as e:
        raise CaseError(pid, str(e)) from None
    seg = None
    if files.seg is not None:
        seg = _load_labels(pid, files.seg, "seg", image.shape[1:], labels)
    elif require_seg:
        raise CaseError(pid, "ground truth segmentation missing")
    raters = None
    if files.raters:
        raters = np.stack([_load_labels(pid, p, p.name[len(pid) + 1:].split(".")[0], image.shape[1:], labels)
                           for p in files.raters])
    zooms = tuple(float(z) for z in ref.header.get_zooms()[:3])
    return Case(pid, image, seg, ref.affine.copy(), zooms, labels.name, str(files.folder), raters)


def _load_labels(pid: str, path: Path, what: str, shape, labels: LabelSet) -> np.ndarray:
    """A label map (seg or a rater's), validated against the image shape and the patient's label set."""
    _, sdata = _load_nifti(pid, path, what)
    if sdata.shape != tuple(shape):
        raise CaseError(pid, f"{what} shape {sdata.shape} differs from image shape {tuple(shape)}")
    if not np.isfinite(sdata).all():
        raise CaseError(pid, f"{what} contains NaN/Inf")
    allowed = labels.allowed
    values = set(np.unique(sdata).astype(int).tolist())
    if not values <= allowed or not np.all(np.mod(sdata, 1) == 0):
        raise CaseError(pid, f"{what} has label values {sorted(values - allowed)} outside {sorted(allowed)} "
                             f"of label set {labels.name}")
    return sdata.astype(np.uint8)


def labels_to_regions(seg: np.ndarray, scheme: str = "brats2021") -> np.ndarray:
    """(X, Y, Z) label map -> (3, X, Y, Z) bool WT, TC, ET of label set ``scheme`` (:mod:`core.io.label_sets`)."""
    return get_label_set(scheme).to_regions(seg)


def regions_to_labels(regions: np.ndarray, scheme: str = "brats2021") -> np.ndarray:
    """(3, X, Y, Z) bool WT, TC, ET -> (X, Y, Z) uint8 label map of label set ``scheme``, nested (ET inside TC
    inside WT, as BraTS post-processing)."""
    return get_label_set(scheme).to_labels(regions)
