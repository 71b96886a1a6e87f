"""Embedded demo cohort: real MNI152 anatomy (shipped inside the nilearn wheel) + synthetic gliomas.

Every patient is the MNI152 2009c template (T1, grey matter, white matter and brain mask, 2 mm, loaded
offline by nilearn) warped by a small smooth random deformation and resampled to a 3 mm grid of shape
``DEMO_SHAPE`` = (56, 64, 56) voxels (x, y, z; RAS+ affine). Four MR contrasts are synthesised from the
tissue fractions (CSF = brain - GM - WM) and the tumour labels with per-patient tissue contrast, a
multiplicative bias field and Rician noise. Each patient carries a glioma with oedema (label 2), necrotic /
non-enhancing core (1) and enhancing rim (4), in BraTS 2021 layout::

    <out>/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz
    <out>/splits.json          {"train": [...], "calibration": [...], "test": [...]}
    <out>/demo_manifest.json   per patient: split, case kind, tumour centre and radii (voxels)

Hard cases are made on purpose (``CASE_KINDS``): small tumours, no enhancement (ET empty in the ground
truth), faint enhancement, low contrast, tumours against the ventricles or the cortex. Everything is
deterministic from ``seed`` (one ``numpy.random.Generator`` per patient, seeded by (seed, index)).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

DEMO_SPACING_MM = 3.0
DEMO_SHAPE = (56, 64, 56)
MODALITIES = ("t1", "t1ce", "t2", "flair")  # channel order of the demo models (BraTS 2021 suffixes)
CASE_KINDS = (
    "typical",
    "small",
    "no_enhancement",
    "faint_enhancement",
    "low_contrast",
    "periventricular",
    "cortical",
)
# Mean intensity of each tissue in each contrast (arbitrary units, jittered per patient).
#              csf   gm    wm    oedema necrosis enhancing
TISSUE_MEANS = {
    "t1": (0.25, 0.55, 0.80, 0.45, 0.20, 0.55),
    "t1ce": (0.25, 0.55, 0.80, 0.47, 0.18, 1.30),
    "t2": (1.00, 0.60, 0.40, 0.85, 0.95, 0.70),
    "flair": (0.15, 0.60, 0.45, 1.00, 0.50, 0.75),
}


@dataclass(frozen=True)
class DemoSpec:
    """How big the demo is. Defaults: 76 patients = 28 train / 6 calibration / 42 test; the test patients
    carry ``n_raters`` rater segmentations beside the consensus."""

    n_train: int = 28
    n_calibration: int = 6
    n_test: int = 42
    seed: int = 2026
    n_raters: int = 3

    @property
    def n_patients(self) -> int:
        return self.n_train + self.n_calibration + self.n_test


def patient_id(i: int) -> str:
    return f"BraTS2021_{i:05d}"


_ANATOMY: dict | None = None


def load_anatomy() -> dict:
    """MNI152 2 mm template arrays (float32, shape (99, 117, 95)) and the 2 mm affine; cached per process."""
    global _ANATOMY
    if _ANATOMY is None:
        from nilearn import datasets

        t1 = datasets.load_mni152_template(resolution=2)
        _ANATOMY = {
            "t1": np.asarray(t1.get_fdata(), np.float32),
            "gm": np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), np.float32),
            "wm": np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), np.float32),
            "mask": np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata(), np.float32),
            "affine": t1.affine.copy(),
        }
    return _ANATOMY


def demo_affine() -> np.ndarray:
    """RAS+ affine of the 3 mm demo grid, centred on the MNI brain."""
    aff = np.diag([DEMO_SPACING_MM] * 3 + [1.0])
    centre_mm = np.array([0.0, -18.0, 10.0])  # centre of the MNI brain bounding box
    aff[:3, 3] = centre_mm - DEMO_SPACING_MM * (np.array(DEMO_SHAPE) - 1) / 2.0
    return aff


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (float32)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    f -= f.mean()
    return f / (f.std() + 1e-8)


def _warp_anatomy(rng: np.random.Generator) -> dict:
    """Tissue maps of one patient on the demo grid: template resampled through a random smooth warp."""
    anat = load_anatomy()
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in DEMO_SHAPE], indexing="ij"))
    # demo voxel -> world (mm) -> template voxel
    vox2vox = np.linalg.inv(anat["affine"]) @ demo_affine()
    coords = np.einsum("ij,jxyz->ixyz", vox2vox[:3, :3].astype(np.float32), grid) + vox2vox[:3, 3, None, None, None]
    # small global scaling (brain size) and a smooth displacement of up to ~2 template voxels (4 mm)
    centre = np.array([(s - 1) / 2 for s in anat["t1"].shape], np.float32)[:, None, None, None]
    coords = centre + (coords - centre) * rng.uniform(0.94, 1.06, size=(3, 1, 1, 1)).astype(np.float32)
    coords += np.stack([_smooth_noise(rng, DEMO_SHAPE, 6.0) for _ in range(3)]) * rng.uniform(0.5, 1.5)
    out = {k: ndimage.map_coordinates(anat[k], coords, order=1, mode="constant", cval=0.0) for k in ("t1", "gm", "wm", "mask")}
    out["mask"] = out["mask"] > 0.5
    for k in ("t1", "gm", "wm"):
        out[k] = np.where(out["mask"], np.clip(out[k], 0, None), 0).astype(np.float32)
    return out


def _choose_centre(rng, kind: str, tissue: dict) -> np.ndarray:
    mask = tissue["mask"]
    inner = ndimage.binary_erosion(mask, iterations=4)
    depth = ndimage.distance_transform_edt(mask)
    csf = np.clip(1.0 - tissue["gm"] - tissue["wm"], 0, 1) * mask
    if kind == "periventricular":
        # deep CSF = ventricles: CSF-rich voxels far from the brain surface
        ventricles = (csf > 0.5) & (depth > 8)
        cand = np.argwhere(ndimage.binary_dilation(ventricles, iterations=2) & ~ventricles & inner)
    elif kind == "cortical":
        cand = np.argwhere((depth >= 3) & (depth <= 5) & (tissue["gm"] > 0.4))
    else:
        cand = np.argwhere((tissue["wm"] > 0.5) & (depth > 6))
    if len(cand) == 0:
        cand = np.argwhere(inner)
    return cand[rng.integers(len(cand))].astype(np.float32)


def _tumour_labels(rng, kind: str, tissue: dict) -> tuple[np.ndarray, dict]:
    """BraTS 2021 label map (uint8: 0, 1 NCR/NET, 2 ED, 4 ET) of one synthetic glioma and its parameters."""
    centre = _choose_centre(rng, kind, tissue)
    if kind == "small":
        r_ed = rng.uniform(2.5, 4.0)
    elif kind == "cortical":
        r_ed = rng.uniform(3.5, 7.0)
    else:
        r_ed = rng.uniform(4.5, 9.5)
    r_core = r_ed * rng.uniform(0.35, 0.65)
    r_nec = r_core * rng.uniform(0.2, 0.65)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in DEMO_SHAPE], indexing="ij"))
    d = grid - centre[:, None, None, None]
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))  # random rotation
    axes = rng.uniform(0.75, 1.3, size=3).astype(np.float32)
    d = np.einsum("ij,jxyz->ixyz", (q / axes[:, None]).astype(np.float32), d)
    rho = np.sqrt((d**2).sum(0))
    ed_rho = rho * (1 + 0.22 * _smooth_noise(rng, DEMO_SHAPE, 3.0))
    core_rho = rho * (1 + 0.15 * _smooth_noise(rng, DEMO_SHAPE, 2.0))
    brain = tissue["mask"]
    oedema = (ed_rho < r_ed) & brain
    core = (core_rho < r_core) & brain
    necrosis = (core_rho < r_nec) & brain
    labels = np.zeros(DEMO_SHAPE, np.uint8)
    labels[oedema] = 2
    labels[core] = 4
    labels[necrosis] = 1
    if kind == "no_enhancement":
        labels[labels == 4] = 1  # non-enhancing tumour core: ET empty in the ground truth
    if not (labels > 0).any():  # guarantee a lesion
        labels[tuple(centre.astype(int))] = 2
    params = {"centre_vox": centre.round(1).tolist(), "r_oedema": round(float(r_ed), 2),
              "r_core": round(float(r_core), 2), "r_necrosis": round(float(r_nec), 2)}
    return labels, params


def _synthesise(rng, kind: str, tissue: dict, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Four contrasts (float32, zero outside the brain) from tissue fractions and tumour labels."""
    brain = tissue["mask"]
    gm, wm = tissue["gm"], tissue["wm"]
    csf = np.clip(1.0 - gm - wm, 0, 1)
    tum = {2: labels == 2, 1: labels == 1, 4: labels == 4}
    # soft tumour fractions (partial volume at the tumour border)
    frac = {k: ndimage.gaussian_filter(v.astype(np.float32), 0.6) for k, v in tum.items()}
    tumour_total = np.clip(sum(frac.values()), 0, 1)
    scale_normal = 1.0 - tumour_total
    t1_texture = tissue["t1"] / (tissue["t1"][brain].max() + 1e-6)
    contrast = 0.45 if kind == "low_contrast" else 1.0
    out = {}
    for mod, means in TISSUE_MEANS.items():
        m = np.array(means) * rng.uniform(0.9, 1.1, size=6)
        normal = csf * m[0] + gm * m[1] + wm * m[2]
        if mod in ("t1", "t1ce"):
            normal = 0.5 * normal + 0.5 * t1_texture * m[2]
        ref = m[2]  # tumour contrast is pulled towards white matter in low-contrast cases
        ed, nec, et = (ref + contrast * (m[i] - ref) for i in (3, 4, 5))
        if mod == "t1ce" and kind == "faint_enhancement":
            et = ref + 0.12 * (m[5] - ref)
        img = normal * scale_normal + frac[2] * ed + frac[1] * nec + frac[4] * et
        bias = np.exp(0.12 * _smooth_noise(rng, DEMO_SHAPE, 12.0))
        img = img * bias
        sigma = rng.uniform(0.02, 0.05) * (1.6 if kind == "low_contrast" else 1.0)
        n1, n2 = rng.normal(0, sigma, (2,) + DEMO_SHAPE).astype(np.float32)
        img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude noise
        out[mod] = np.where(brain, img * 1000.0, 0.0).astype(np.float32)
    return out


def rater_labels(labels: np.ndarray, rng: np.random.Generator, bias_vox: float, noise_vox: float = 0.8) -> np.ndarray:
    """One rater's plausible variant of a BraTS 2021 label map: every region boundary (WT, TC, ET) moved
    outwards by ``bias_vox`` voxels (negative: inwards) plus a smooth random offset (s.d. ``noise_vox``);
    regions kept nested (ET in TC in WT). Same labels (0, 1, 2, 4)."""
    offset = bias_vox + noise_vox * _smooth_noise(rng, labels.shape, 3.0)
    regions = [labels > 0, (labels == 1) | (labels == 4), labels == 4]
    out = []
    for m in regions:
        if not m.any():
            out.append(np.zeros_like(m))
            continue
        sd = ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)  # < 0 inside, voxels
        out.append(sd < offset)
    wt, tc, et = out
    tc &= wt
    et &= tc
    res = np.zeros(labels.shape, np.uint8)
    res[wt] = 2
    res[tc] = 1
    res[et] = 4
    return res


RATER_BIAS_VOX = (-0.6, 0.0, 0.6)  # a tight, a neutral and a generous rater


def make_patient(index: int, out_dir: str | os.PathLike, seed: int = 2026, kind: str | None = None,
                 n_raters: int = 0) -> dict:
    """Write one demo patient in BraTS 2021 layout; returns its manifest entry. ``n_raters`` > 0 also writes
    ``<pid>_rater<k>.nii.gz`` (k = 1..n), plausible boundary variations of the consensus ``_seg``, from their
    own random stream (the images and consensus do not depend on ``n_raters``)."""
    rng = np.random.default_rng([seed, index])
    kind = kind or CASE_KINDS[index % len(CASE_KINDS)]
    tissue = _warp_anatomy(rng)
    labels, params = _tumour_labels(rng, kind, tissue)
    images = _synthesise(rng, kind, tissue, labels)
    pid = patient_id(index)
    pdir = Path(out_dir) / pid
    pdir.mkdir(parents=True, exist_ok=True)
    aff = demo_affine()
    for mod, arr in images.items():
        img = nib.Nifti1Image(arr, aff)
        img.header.set_xyzt_units("mm")
        nib.save(img, pdir / f"{pid}_{mod}.nii.gz")
    seg = nib.Nifti1Image(labels, aff)
    seg.header.set_xyzt_units("mm")
    nib.save(seg, pdir / f"{pid}_seg.nii.gz")
    for k in range(n_raters):
        r_rng = np.random.default_rng([seed, index, 1000 + k])
        rl = rater_labels(labels, r_rng, RATER_BIAS_VOX[k % len(RATER_BIAS_VOX)])
        img = nib.Nifti1Image(rl, aff)
        img.header.set_xyzt_units("mm")
        nib.save(img, pdir / f"{pid}_rater{k + 1}.nii.gz")
    vox_ml = DEMO_SPACING_MM**3 / 1000.0
    return {"patient_id": pid, "kind": kind, **params,
            "wt_ml": round(float((labels > 0).sum() * vox_ml), 3),
            "et_ml": round(float((labels == 4).sum() * vox_ml), 3)}


def build_demo_cohort(out_dir: str | os.PathLike, spec: DemoSpec = DemoSpec(), workers: int | None = None,
                      progress: bool = True) -> Path:
    """Build the whole demo cohort in ``out_dir`` (skipped if its manifest is already there and complete)."""
    out = Path(out_dir)
    manifest_path = out / "demo_manifest.json"
    if manifest_path.exists():
        man = json.loads(manifest_path.read_text())
        if man.get("spec") == spec.__dict__ and all((out / p["patient_id"]).is_dir() for p in man["patients"]):
            return out
    out.mkdir(parents=True, exist_ok=True)
    n = spec.n_patients
    # split: interleaved so every case kind appears in every split
    order = np.random.default_rng(spec.seed).permutation(n)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[int(i)] = "train" if rank < spec.n_train else (
            "calibration" if rank < spec.n_train + spec.n_calibration else "test")
    workers = workers or min(2, os.cpu_count() or 1)
    idx = list(range(n))
    kinds = [None] * n
    raters = [spec.n_raters if split_of[i] == "test" else 0 for i in idx]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            entries = list(_progress(ex.map(make_patient, idx, [out] * n, [spec.seed] * n, kinds, raters), n, progress))
    else:
        entries = list(_progress((make_patient(i, out, spec.seed, None, raters[i]) for i in idx), n, progress))
    for i, e in enumerate(entries):
        e["split"] = split_of[i]
    splits = {s: [e["patient_id"] for e in entries if e["split"] == s] for s in ("train", "calibration", "test")}
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    manifest_path.write_text(json.dumps({"spec": spec.__dict__, "spacing_mm": DEMO_SPACING_MM,
                                         "modalities": MODALITIES, "patients": entries}, indent=1))
    return out


def _progress(it, total, enabled):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="demo cohort", unit="patient")
