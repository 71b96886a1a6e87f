"""The batch backend: models x methods over a BraTS-layout cohort -> DuckDB + NIfTI maps.

Per patient: load and validate (a :class:`core.cohort.CaseError` fails that patient only), then for every
pending (model, method): inference (:mod:`core.uncertainty`), the metric suite (:mod:`core.metrics`),
NIfTI maps written to ``<maps_dir>/<run_id>/<model>/<method>/``, and finally ONE database transaction
with the patient's row, its evaluations, metrics, bins and map paths. The run id is a hash of the run's
configuration, so running the same command again skips every (model, method, patient) already 'ok' and
retries failed ones. Maps are written (atomically, by rename) before the transaction that refers to them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from . import metrics as M
from . import store
from .cohort import CaseError, discover, labels_to_regions, load_case, read_splits, regions_to_labels
from .models import load_checkpoint
from .uncertainty import METHODS, default_device, predict

MAP_KINDS = ("prob", "entropy", "mi", "pred", "error")


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_run_id(config: dict) -> str:
    return "run_" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _save_map(path: Path, data: np.ndarray, affine: np.ndarray, scaled: bool) -> None:
    """(R, X, Y, Z) or (X, Y, Z) -> NIfTI (channels last). ``scaled``: [0,1] floats as uint8 with scl_slope 1/255."""
    arr = np.moveaxis(data, 0, -1) if data.ndim == 4 else data
    if scaled:
        img = nib.Nifti1Image(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8), affine)
        img.header.set_slope_inter(1.0 / 255.0, 0.0)
    else:
        img = nib.Nifti1Image(arr.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(img, tmp)
    tmp.replace(path)


def write_maps(out_dir: Path, pid: str, prediction, truth, affine, scheme) -> list[tuple[str, str]]:
    """Write the prediction's maps; returns [(kind, path)]. Error map per region: 0 right, 1 FP, 2 FN."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    binary = prediction.prob >= 0.5
    items = [("prob", prediction.prob, True), ("entropy", prediction.entropy, True)]
    if prediction.mi is not None:
        items.append(("mi", prediction.mi, True))
    items.append(("pred", regions_to_labels(binary, scheme), False))
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


def _setup_log(log_path: Path) -> logging.Logger:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"tumourqa.batch.{log_path.stem}")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        h = logging.FileHandler(log_path)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)
    return logger


def run_batch(cohort: str | Path, db: str | Path, checkpoints: list[str | Path], methods=METHODS, T: int = 10,
              split: str | None = None, device: str | None = None, maps_dir: str | Path | None = None,
              mc_batch="auto", seed: int = 0, save_maps: bool = True, progress: bool = True,
              patient_meta: dict | None = None, echo=print) -> dict:
    """Run the batch; returns a summary dict (run_id, ok, failed, skipped, seconds, db)."""
    t_start = time.time()
    cohort = Path(cohort).resolve()
    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    maps_root = Path(maps_dir) if maps_dir else db.parent / "maps"
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; known: {METHODS}")
    dev = torch.device(device) if device else default_device()
    models = [load_checkpoint(c, dev) for c in checkpoints]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two checkpoints share a model name: {names}")
    config = {
        "cohort": str(cohort), "split": split, "methods": list(methods), "T": int(T), "seed": int(seed),
        "models": {m.name: {"checkpoint": str(Path(m.path).resolve()), "sha256": file_sha256(m.path)} for m in models},
        "metrics": {"n_cal_bins": M.N_CAL_BINS, "n_unc_bins": M.N_UNC_BINS, "roi_radius_vox": M.ROI_RADIUS_VOX,
                    "threshold": 0.5},
    }
    run_id = make_run_id(config)
    log = _setup_log(db.parent / "logs" / f"{run_id}.log")
    con = store.connect(db)
    store.upsert_run(con, run_id, str(cohort), config, code_version(), str(dev))
    for m in models:
        store.upsert_model(con, run_id, m.name, str(Path(m.path).resolve()), m.card)
    done = store.done_evaluations(con, run_id)
    cases = discover(cohort, split)
    splits = read_splits(cohort)
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    log.info("run %s: %d patients, models %s, methods %s, T=%d, device %s", run_id, len(cases), names, list(methods), T, dev)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc=f"batch {run_id}", unit="patient")
    for files in cases:
        pid = files.patient_id
        pending = [(m, meth) for m in models for meth in methods if (m.name, meth, pid) not in done]
        if not pending:
            counts["skipped"] += len(models) * len(methods)
        else:
            results, patient_row = _evaluate_patient(files, pending, str(cohort), split_of.get(pid), run_id, maps_root,
                                                     T, mc_batch, seed, save_maps, (patient_meta or {}).get(pid), log)
            store.write_patient(con, run_id, pid, results, patient_row)
            for r in results:
                counts[r["status"]] += 1
            counts["skipped"] += len(models) * len(methods) - len(pending)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(counts)
    if bar is not None:
        bar.close()
    con.close()
    summary = {"run_id": run_id, **counts, "seconds": round(time.time() - t_start, 1), "db": str(db)}
    log.info("summary %s", summary)
    echo(f"batch {run_id}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
         f"(model x method x patient) in {summary['seconds']} s -> {db}")
    return summary


def _evaluate_patient(files, pending, cohort, split, run_id, maps_root, T, mc_batch, seed, save_maps, meta, log):
    pid = files.patient_id
    channels = pending[0][0].card["channels"]
    try:
        case = load_case(files, channels)
        for lm, _ in pending:
            if lm.card["channels"] != channels:
                raise CaseError(pid, "models with different channel orders in one run are not supported yet")
    except Exception as e:  # every failure of this patient is recorded, the batch goes on
        msg = str(e) if isinstance(e, CaseError) else f"{pid}: {type(e).__name__}: {e}"
        log.error("failed %s", msg)
        return [{"model": lm.name, "method": meth, "status": "failed", "seconds": 0.0, "error": msg}
                for lm, meth in pending], None
    truth = labels_to_regions(case.seg, case.label_scheme) if case.seg is not None else None
    brain = case.brain_mask
    patient_row = {"cohort": cohort, "source": case.source, "shape": case.image.shape[1:], "spacing": case.spacing,
                   "label_scheme": case.label_scheme, "split": split, "has_gt": truth is not None, "meta": meta}
    results = []
    for lm, meth in pending:
        t0 = time.perf_counter()
        try:
            pred = predict(lm, case.image, meth, T=T, mc_batch=mc_batch, seed=seed)
            ev = M.evaluate_patient(pred.prob, pred.entropy, pred.mi, truth, brain, spacing=case.spacing)
            maps = []
            if save_maps:
                maps = write_maps(Path(maps_root) / run_id / lm.name / meth, pid, pred, truth,
                                  case.affine, case.label_scheme)
            results.append({"model": lm.name, "method": meth, "status": "ok", "seconds": time.perf_counter() - t0,
                            "error": None, "maps": maps, **ev})
            log.info("ok %s %s %s %.2fs (chunk %d)", pid, lm.name, meth, time.perf_counter() - t0, pred.chunk)
        except Exception as e:
            msg = f"{pid}: {lm.name}/{meth}: {type(e).__name__}: {e}"
            log.error("failed %s\n%s", msg, traceback.format_exc())
            results.append({"model": lm.name, "method": meth, "status": "failed",
                            "seconds": time.perf_counter() - t0, "error": msg})
    return results, patient_row

