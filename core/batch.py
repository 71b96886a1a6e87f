"""The batch backend: models x methods over a BraTS-layout cohort -> DuckDB + NIfTI maps.

Per patient: load and validate (a :class:`core.cohort.CaseError` fails that patient only), then for every
pending (model, method): inference (:mod:`core.uncertainty`) on the model's grid (RAS at the card's spacing,
:mod:`core.resample`) with the maps brought back to the patient's grid, the metric suite (:mod:`core.metrics`),
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
from .modelset import load_model_set
from .resample import plan as grid_plan, prediction_to_patient
from .uncertainty import METHODS, canonical_method, deterministic_logits, default_device, parse_method, predict, \
    unavailable_reason

MAP_KINDS = ("prob", "entropy", "mi", "epkl", "pred", "error")


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file; of a folder (a MONAI bundle): of its files' relative paths and contents, sorted.
    A plain state dict's sidecar (``X.json`` / ``X.toml``) is hashed with it."""
    h = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        from .bundle import sidecar_of

        files = [path] + ([sidecar_of(path)] if path.suffix == ".pt" and sidecar_of(path) else [])
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def make_run_id(config: dict) -> str:
    return "run_" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _save_map(path: Path, data: np.ndarray, affine: np.ndarray, scaled: bool | None) -> None:
    """(R, X, Y, Z) or (X, Y, Z) -> NIfTI (channels last). ``scaled``: [0,1] floats as uint8 with scl_slope
    1/255; False: integer labels as uint8; None: float32 as is."""
    arr = np.moveaxis(data, 0, -1) if data.ndim == 4 else data
    if scaled is None:
        img = nib.Nifti1Image(arr.astype(np.float32), affine)
    elif scaled:
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
    if getattr(prediction, "epkl", None) is not None:  # bits, unbounded: stored as float32
        items.append(("epkl", prediction.epkl.astype(np.float32), None))
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


def clean_stale_maps(con, run_id: str, maps_root: Path, log=None) -> list[Path]:
    """Delete what a killed or failed run left in ``<maps_root>/<run_id>/``; returns the deleted files.

    * every ``*.part.nii.gz`` (a map write interrupted before its rename);
    * every ``<pid>_<kind>.nii.gz`` of a (model, method, patient) that is not 'ok' in this database and that
      no ``maps`` row refers to (maps are written before the patient's transaction: a kill between the two
      leaves files that no row points at; the rerun writes them again).
    Maps of evaluations that are 'ok' are never touched.
    """
    root = Path(maps_root) / run_id
    if not root.is_dir():
        return []
    referenced = {str(Path(p)) for (p,) in con.execute("SELECT path FROM maps WHERE run_id = ?", [run_id]).fetchall()}
    done = store.done_evaluations(con, run_id)
    removed = []
    for f in root.glob("*/*/*"):
        if not f.is_file():
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


def _setup_log(log_path: Path) -> logging.Logger:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"tumourqa.batch.{log_path.stem}")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        h = logging.FileHandler(log_path)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)
    return logger


def run_batch(cohort: str | Path, db: str | Path, checkpoints: list, methods=METHODS, T: int = 10,
              split: str | None = None, device: str | None = None, maps_dir: str | Path | None = None,
              mc_batch="auto", seed: int = 0, save_maps: bool = True, progress: bool = True,
              patient_meta: dict | None = None, calibration_split: str = "calibration", quality: bool = True,
              ts_fit_mask: str = "brain", echo=print) -> dict:
    """Run the batch; returns a summary dict (run_id, ok, failed, skipped, unavailable, seconds, db).

    ``checkpoints``: model specs (a checkpoint path, or a mapping with ``checkpoint``, ``ensemble``,
    ``snapshots``, ``auxiliary``; :mod:`core.modelset`). ``methods``: method names
    (:mod:`core.uncertainty`); a (model, method) pair the model cannot run (no ensemble members, no
    snapshots, no auxiliary network, no dropout) is left out and reported, not failed. ``+ts`` methods fit
    the temperatures first on the ``calibration_split`` patients (stored in ``temperatures``). With
    ``quality``, the quality-prediction tables are recomputed at the end (:mod:`core.quality`).
    """
    t_start = time.time()
    cohort = Path(cohort).resolve()
    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    maps_root = Path(maps_dir) if maps_dir else db.parent / "maps"
    methods = list(dict.fromkeys(canonical_method(m) for m in methods))
    dev = torch.device(device) if device else default_device()
    models = [load_model_set(c, dev) for c in checkpoints]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two checkpoints share a model name: {names}")
    config = {
        "cohort": str(cohort), "split": split, "methods": list(methods), "T": int(T), "seed": int(seed),
        "calibration_split": calibration_split, "ts_fit_mask": ts_fit_mask,
        "models": {m.name: {**m.files(), "sha256": file_sha256(m.path),
                            **({"card": m.card} if m.card.get("source", {}).get("sidecar") == "spec" else {})}
                   for m in models},
        "metrics": {"n_cal_bins": M.N_CAL_BINS, "n_unc_bins": M.N_UNC_BINS, "roi_radius_vox": M.ROI_RADIUS_VOX,
                    "threshold": 0.5},
    }
    run_id = make_run_id(config)
    log = _setup_log(db.parent / "logs" / f"{run_id}.log")
    # the database is opened for each write only (store.writer), so the app can read between two patients
    with store.writer(db) as con:
        store.upsert_run(con, run_id, str(cohort), config, code_version(), str(dev))
        for m in models:
            store.upsert_model(con, run_id, m.name, str(Path(m.path).resolve()), m.card)
        done = store.done_evaluations(con, run_id)
        clean_stale_maps(con, run_id, maps_root, log)  # leftovers of a killed run (never maps of 'ok' evaluations)
    cases = discover(cohort, split)
    splits = read_splits(cohort)
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    log.info("run %s: %d patients, models %s, methods %s, T=%d, device %s", run_id, len(cases), names, list(methods), T, dev)
    pairs, unavailable = [], []
    for m in models:
        for meth in (m.methods or methods):
            why = unavailable_reason(meth, m)
            if why:
                unavailable.append(f"{m.name}/{meth}: {why}")
                log.warning("left out %s/%s: %s", m.name, meth, why)
            else:
                pairs.append((m, meth))
    if unavailable:
        echo("left out (model cannot run the method): " + "; ".join(unavailable))
    if any(parse_method(meth).ts for _, meth in pairs):
        for m in {id(m): m for m, meth in pairs if parse_method(meth).ts}.values():
            m.temperature = _temperatures(db, run_id, m, cohort, splits.get(calibration_split), calibration_split, log, echo,
                                          ts_fit_mask)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    status = store.RunStatus(db, run_id, len(cases))
    try:
        _loop(cases, pairs, done, counts, status, db, cohort, split_of, run_id, maps_root, T, mc_batch, seed,
              save_maps, patient_meta, progress, log)
    finally:
        status.clear()
    with store.writer(db) as con:
        clean_stale_maps(con, run_id, maps_root, log)  # maps of evaluations that failed after writing some maps
        if quality:
            from .quality import update_quality

            try:
                update_quality(con, run_id)
            except Exception as e:  # quality prediction is an add-on: never lose the batch over it
                log.error("quality prediction failed: %s\n%s", e, traceback.format_exc())
                echo(f"quality prediction failed: {e}")
    summary = {"run_id": run_id, **counts, "unavailable": unavailable, "seconds": round(time.time() - t_start, 1),
               "db": str(db)}
    log.info("summary %s", summary)
    echo(f"batch {run_id}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
         f"(model x method x patient) in {summary['seconds']} s -> {db}")
    return summary


def _loop(cases, pairs, done, counts, status, db, cohort, split_of, run_id, maps_root, T, mc_batch, seed, save_maps,
          patient_meta, progress, log):
    """The patient loop: evaluate the pending (model, method) pairs, commit the patient, update the status."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc=f"batch {run_id}", unit="patient")
    for i, files in enumerate(cases):
        pid = files.patient_id
        pending = [(m, meth) for m, meth in pairs if (m.name, meth, pid) not in done]
        if not pending:
            counts["skipped"] += len(pairs)
        else:
            results, patient_row = _evaluate_patient(files, pending, str(cohort), split_of.get(pid), run_id, maps_root,
                                                     T, mc_batch, seed, save_maps, (patient_meta or {}).get(pid), log)
            with store.writer(db) as con:
                store.write_patient(con, run_id, pid, results, patient_row)
            for r in results:
                counts[r["status"]] += 1
            counts["skipped"] += len(pairs) - len(pending)
        status.update(i + 1, counts)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(counts)
    if bar is not None:
        bar.close()


def _temperatures(db, run_id, ms, cohort, cal_ids, cal_split, log, echo, fit_mask="brain") -> np.ndarray:
    """The model's per-region temperatures for this run: read from ``temperatures`` or fitted now on the
    calibration split (deterministic logits in the ROI, :mod:`core.temperature`) and stored."""
    from .temperature import fit_region_temperatures, gather_roi

    regions = ms.card["regions"]
    with store.writer(db) as con:
        stored = store.read_temperatures(con, run_id, ms.name)
    if len(stored) == len(regions):
        return np.array([stored[r] if stored[r] is not None else 1.0 for r in regions], np.float32)
    if not cal_ids:
        raise ValueError(f"+ts methods need a '{cal_split}' split in {cohort}/splits.json to fit temperatures on; "
                         f"none found (set calibration_split or drop the +ts methods)")
    zs, ys, used = [], [], []
    for files in discover(cohort):
        if files.patient_id not in set(cal_ids):
            continue
        try:
            case = load_case(files, ms.card["channels"], require_seg=True)
        except CaseError as e:
            log.error("temperature fit: skipping %s", e)
            echo(f"temperature fit: skipping {e}")
            continue
        grid = grid_plan(case.affine, case.image.shape, ms.card)  # model grid (RAS, card spacing) and back
        z = grid.to_patient(deterministic_logits(ms, grid.to_model(case.image)))
        zr, yr = gather_roi(z, labels_to_regions(case.seg, case.label_scheme), case.brain_mask, mask=fit_mask)
        zs.append(zr)
        ys.append(yr)
        used.append(files.patient_id)
    if not zs:
        raise ValueError(f"no usable '{cal_split}' patient with ground truth to fit temperatures of {ms.name}")
    fits = fit_region_temperatures(zs, ys)
    with store.writer(db) as con:
        store.write_temperatures(con, run_id, ms.name, regions, fits, used)
    msg = ", ".join(f"{r} T={f['temperature']:.3f} (NLL {f['nll_before']:.4f} -> {f['nll_after']:.4f})"
                    for r, f in zip(regions, fits))
    log.info("temperatures of %s on %d %s patients (%s voxels): %s", ms.name, len(used), cal_split, fit_mask, msg)
    echo(f"temperatures of {ms.name}: {msg}")
    return np.array([f["temperature"] if np.isfinite(f["temperature"]) else 1.0 for f in fits], np.float32)


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
    raters = (np.stack([labels_to_regions(r, case.label_scheme) for r in case.raters])
              if case.raters is not None and truth is not None else None)
    brain = case.brain_mask
    caches = {}  # per model set: deterministic passes shared between methods
    inputs = {}  # per model set: (grid plan, the image on the model's grid); the same array for every method
    meta = {**(meta or {}), **({"n_raters": int(len(case.raters))} if case.raters is not None else {})} or None
    patient_row = {"cohort": cohort, "source": case.source, "shape": case.image.shape[1:], "spacing": case.spacing,
                   "label_scheme": case.label_scheme, "split": split, "has_gt": truth is not None, "meta": meta}
    results = []
    for lm, meth in pending:
        t0 = time.perf_counter()
        try:
            if id(lm) not in inputs:
                grid = grid_plan(case.affine, case.image.shape, lm.card)
                inputs[id(lm)] = (grid, grid.to_model(case.image))
                if not grid.identity:
                    log.info("%s %s: patient grid %s (RAS %s mm) -> model grid %s (%s mm) and back", pid, lm.name,
                             grid.patient_shape, grid.ras_spacing, grid.model_shape, grid.model_spacing)
            grid, image = inputs[id(lm)]
            pred = predict(lm, image, meth, T=T, mc_batch=mc_batch, seed=seed, cache=caches.setdefault(id(lm), {}))
            pred = prediction_to_patient(pred, grid)  # metrics and maps on the patient's own grid
            ev = M.evaluate_patient(pred.prob, pred.entropy, pred.mi, truth, brain, spacing=case.spacing,
                                    epkl=pred.epkl, sample_volumes=pred.sample_volumes, raters=raters)
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

