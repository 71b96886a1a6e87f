"""NIfTI maps of a prediction (prob, entropy, mi, epkl, pred, error): written atomically, stale ones cleaned."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from core import store
from core.io.cohort import regions_to_labels


MAP_KINDS = ("prob", "entropy", "mi", "epkl", "pred", "error")


MAP_LEVELS = 65535  # quantisation steps of the [0, 1] maps (uint16)
MAP_MANTISSA_BITS = 12  # mantissa bits kept in the float32 uncertainty maps (:func:`relative_precision`)


def relative_precision(x: np.ndarray, mantissa_bits: int | None = None) -> np.ndarray:
    """float32 copy of ``x`` rounded (to nearest, ties to even) to ``mantissa_bits`` of mantissa, full exponent.

    For the uncertainty maps (entropy, MI, EPKL): their AUROC bins are log-spaced down to 1e-30
    (:data:`core.metrics.uncertainty.UNC_EDGES`), so a fixed-step quantisation (16-bit with ``scl_slope``) ties
    every confident voxel and moved the AUROC of entropy by up to 0.025 on the demo. 12 mantissa bits (relative
    precision 2^-13 = 1.2e-4, float32's range, stored as float32 so that every NIfTI viewer reads it) keep the
    ranking down to 1e-38 and are finer than the 0.001-wide bins near 1, while the zeroed low bits shrink the
    gzip size (docs/database.md). Measured: the binned AUROC of entropy recomputed from the file moved by at most
    2.1e-4 on 1-epoch models whose entropies crowd near 1 (10 bits: 1.3e-3, 7 bits: 2.6e-3, 14 bits: 7.2e-5);
    on the real demo 7 bits already moved it by at most 1.1e-5.

    Args:
        x: any float array (NaN / inf kept as they are).
        mantissa_bits: bits of mantissa kept, 1-23 (default :data:`MAP_MANTISSA_BITS`; 23 returns ``x`` as float32).

    Returns:
        float32 array of ``x``'s shape.
    """
    a = np.ascontiguousarray(x, dtype=np.float32)
    shift = 23 - (MAP_MANTISSA_BITS if mantissa_bits is None else mantissa_bits)
    if shift <= 0:
        return a.reshape(np.shape(x))
    u = a.view(np.uint32).astype(np.uint64)
    u += (1 << (shift - 1)) - 1 + ((u >> shift) & 1)  # round half to even on the kept bits
    out = (u & ~np.uint64((1 << shift) - 1)).astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(a), out, a).reshape(np.shape(x))


def _save_map(path: Path, data: np.ndarray, affine: np.ndarray, scaled: bool | None) -> None:
    """(R, X, Y, Z) or (X, Y, Z) -> NIfTI (channels last), written atomically (by rename).

    ``scaled``: probabilities in [0, 1] as uint16 with scl_slope 1/65535 (steps of 1.5e-5: the ECE recomputed
    from the file moves by about 1e-5); False: integer labels as uint8; None: float32 (the uncertainty maps,
    already rounded by :func:`relative_precision`)."""
    arr = np.moveaxis(data, 0, -1) if data.ndim == 4 else data
    if scaled is None:
        img = nib.Nifti1Image(arr.astype(np.float32), affine)
    elif scaled:
        img = nib.Nifti1Image(np.round(np.clip(arr, 0, 1) * MAP_LEVELS).astype(np.uint16), affine)
        img.header.set_slope_inter(1.0 / MAP_LEVELS, 0.0)
    else:
        img = nib.Nifti1Image(arr.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(img, tmp)
    tmp.replace(path)


def write_maps(out_dir: Path, pid: str, prediction, truth, affine, scheme, labels: np.ndarray | None = None) -> list[tuple[str, str]]:
    """Write the prediction's maps; returns [(kind, path)]. Error map per region: 0 right, 1 FP, 2 FN."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    binary = prediction.prob >= 0.5
    items = [("prob", prediction.prob, True), ("entropy", relative_precision(prediction.entropy), None)]
    if prediction.mi is not None:
        items.append(("mi", relative_precision(prediction.mi), None))
    if getattr(prediction, "epkl", None) is not None:  # bits, unbounded
        items.append(("epkl", relative_precision(prediction.epkl), None))
    items.append(("pred", labels if labels is not None else regions_to_labels(binary, scheme), False))
    if truth is not None:
        err = np.zeros(binary.shape, np.uint8)
        err[binary & ~truth] = 1
        err[~binary & truth] = 2
        items.append(("error", err, False))
    for kind, data, scaled in items:
        p = out_dir / f"{pid}_{kind}.nii.gz"
        _save_map(p, data, affine, scaled)
        paths.append((kind, str(p)))
    return paths


def clean_stale_maps(con, run_id: str, maps_root: Path, log=None, patients: set[str] | None = None,
                     keep: set | None = None) -> list[Path]:
    """Delete what a killed or failed run left in ``<maps_root>/<run_id>/``; returns the deleted files.

    * every ``*.part.nii.gz`` (a map write interrupted before its rename);
    * every ``<pid>_<kind>.nii.gz`` of a (model, method, patient) that is not 'ok' in this database and that
      no ``maps`` row refers to (maps are written before the patient's transaction: a kill between the two
      leaves files that no row points at; the rerun writes them again).
    Maps of evaluations that are 'ok' are never touched. A shard (``patients``: its patient ids; ``keep``:
    (model, method, patient) done in the merged database) only cleans its own patients' files, since the
    other shards write into the same folder at the same time.
    """
    root = Path(maps_root) / run_id
    if not root.is_dir():
        return []
    referenced = {str(Path(p)) for (p,) in con.execute("SELECT path FROM maps WHERE run_id = ?", [run_id]).fetchall()}
    done = store.done_evaluations(con, run_id) | set(keep or ())
    removed = []
    for f in root.glob("*/*/*"):
        if not f.is_file():
            continue
        if patients is not None and f.name.split(".nii.gz")[0].rsplit("_", 1)[0] not in patients:
            continue
        if f.name.endswith(".part.nii.gz"):
            stale = True
        elif f.name.endswith(".nii.gz") and "_" in f.name:
            pid, kind = f.name[: -len(".nii.gz")].rsplit("_", 1)
            model, method = f.parent.parent.name, f.parent.name
            stale = kind in MAP_KINDS and str(f) not in referenced and (model, method, pid) not in done
        else:
            stale = False
        if stale:
            f.unlink(missing_ok=True)
            removed.append(f)
    if removed and log is not None:
        log.warning("removed %d stale map file(s) of unfinished evaluations under %s", len(removed), root)
    return removed
