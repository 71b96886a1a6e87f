"""The batch backend: models x methods over a BraTS-layout cohort -> DuckDB + NIfTI maps.

Before the first patient, the run's *plan* (:mod:`core.batch.plan`) is resolved once per model: forward
precision (:mod:`core.inference.precision`), passes per forward call (:func:`core.inference.forward.choose_chunk`) and the
+ts temperatures (stored in ``run_plan`` and ``temperatures``). Then per patient, in three stages that overlap
(:mod:`core.batch.prefetch`):

1. loader thread: load and validate (a :class:`core.io.cohort.CaseError` fails that patient only), region masks,
   the image on each model's grid (RAS at the card's spacing, :mod:`core.inference.resample`), normalised;
2. this thread: for every pending (model, method) the inference (:mod:`core.inference.uncertainty`, on the GPU when
   there is one);
3. finisher thread, in patient order: maps back to the patient's grid, the metric suite (:mod:`core.metrics`),
   NIfTI maps written to ``<maps_dir>/<run_id>/<model>/<method>/``, and finally ONE database transaction with
   the patient's row, its evaluations, metrics, bins and map paths.

The run id is a hash of the run's configuration, so running the same command again skips every (model,
method, patient) already 'ok' and retries failed ones. Maps are written (atomically, by rename) before the
transaction that refers to them. ``shard`` runs one share of the patients (:mod:`core.batch.shards`); the
executors (:mod:`core.batch.executors`) run the shards in parallel and merge them (:mod:`core.batch.merge`).
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import store
from core.batch.plan import apply_plan, prepare_models
from core.batch.prefetch import OrderedWorker, Prefetcher
from core.batch.config import RunConfig
from core.batch.shards import shard_cases
from core.inference.forward import default_device
from core.inference.mc_masks import patient_seed
from core.inference.methods import parse_method
from core.inference.modelset import load_model_set
from core.inference.resample import plan as grid_plan, prediction_to_patient
from core.inference.uncertainty import predict, unavailable_reason
from core.io.architectures import preprocess
from core.io.cohort import CaseError, discover, labels_to_regions, load_case, read_splits, regions_to_labels
from core.io.hashing import code_version, file_sha256, make_run_id
from core.io.maps import clean_stale_maps, write_maps
from core.metrics.calibration import N_CAL_BINS
from core.metrics.lesions import CONNECTIVITY, MATCH_THRESHOLD
from core.metrics.overlap import NSD_TOLERANCE_MM, ROI_RADIUS_VOX
from core.metrics.suite import evaluate_patient
from core.metrics.uncertainty import N_UNC_BINS
from core.store import derived
from core.store.quality import update_quality




def _setup_log(log_path: Path) -> logging.Logger:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"tumourqa.batch.{log_path.stem}")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        h = logging.FileHandler(log_path)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(h)
    return logger


def run_batch(cohort: str | Path, db: str | Path, checkpoints: list, **options) -> dict:
    """:func:`run` of ``RunConfig(cohort, db, checkpoints, **options)``.

    Args:
        cohort: BraTS-layout folder.
        db: results database file.
        checkpoints: model specs (:mod:`core.inference.modelset`).
        **options: the other fields of :class:`core.batch.config.RunConfig`, by name.

    Returns:
        the summary of :func:`run`.

    Raises:
        TypeError: for an unknown option.
        ValueError: for an unknown method, precision or shard, and as :func:`run`.
    """
    return run(RunConfig(cohort, db, checkpoints, **options))


def run(cfg: RunConfig) -> dict:
    """Run the batch of ``cfg`` (:class:`core.batch.config.RunConfig`) and return its summary.

    ``checkpoints``: model specs (a checkpoint path, or a mapping with ``checkpoint``, ``ensemble``,
    ``snapshots``, ``auxiliary``; :mod:`core.inference.modelset`). ``methods``: method names
    (:mod:`core.inference.uncertainty`); a (model, method) pair the model cannot run (no ensemble members, no
    snapshots, no auxiliary network, no dropout) is left out and reported, not failed. ``+ts`` methods fit
    the temperatures first on the ``calibration_split`` patients (stored in ``temperatures``). With
    ``quality``, the quality-prediction tables are recomputed at the end (:mod:`core.analysis.quality`; never for a
    shard: after the merge).

    Scale: ``precision`` (``auto|fp32|bf16|fp16``, :mod:`core.inference.precision`) and ``mc_batch`` (passes per forward
    call, ``"auto"``: :func:`core.inference.forward.choose_chunk`) are resolved once per model before the first
    patient into the run's *plan* (with the temperatures; stored in ``run_plan``), unless ``plan`` is given
    (a worker of :mod:`core.batch.executors` gets its driver's). ``shard`` = (i, n) or ``"i/n"``: only that share of
    the sorted patients (:mod:`core.batch.shards`). ``skip``: (model, method, patient) already done elsewhere (the
    merged database). ``prefetch``: patients loaded ahead in a background thread; ``finish_depth``: patients
    whose metrics, maps and transaction wait for the background finisher (0, 0: all inline).
    ``prepare_only``: write the run, models and plan, then stop (the driver of a sharded run).

    A patient that cannot be loaded, or an evaluation that raises, is recorded as failed and the batch goes
    on; a failure of the quality prediction or of the derived tables is logged, never fatal.

    Args:
        cfg: the run's configuration (the fields above).

    Returns:
        summary dict: run_id, ok, failed, skipped (counts of (model, method, patient) evaluations),
        unavailable ("model/method: reason" of the pairs left out), seconds, db, plan; with ``prepare_only``
        the counts are 0 and it also holds done (the evaluations already ok or skipped) and patients (the
        run's, or the shard's, patient count).

    Raises:
        ValueError: when two checkpoints share a model name, a model spec does not load or fit, or ``+ts``
            methods have no usable calibration patient to fit temperatures on.
    """
    t_start = time.time()
    cohort, db, methods, shard, T, echo = cfg.cohort, cfg.db, cfg.methods, cfg.shard, cfg.T, cfg.echo
    db.parent.mkdir(parents=True, exist_ok=True)
    maps_root = cfg.maps_root
    dev = torch.device(cfg.device) if cfg.device else default_device()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed window shapes: let cuDNN pick its fastest kernels
    models = [load_model_set(c, dev) for c in cfg.checkpoints]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two checkpoints share a model name: {names}")
    config = {
        "cohort": str(cohort), "split": cfg.split, "methods": list(methods), "T": int(T), "seed": int(cfg.seed),
        "calibration_split": cfg.calibration_split, "ts_fit_mask": cfg.ts_fit_mask,
        "models": {m.name: {**m.files(), "sha256": file_sha256(m.path),
                            **({"card": m.card} if m.card.get("source", {}).get("sidecar") == "spec" else {})}
                   for m in models},
        "metrics": {"n_cal_bins": N_CAL_BINS, "n_unc_bins": N_UNC_BINS, "roi_radius_vox": ROI_RADIUS_VOX,
                    "threshold": 0.5, "nsd_tolerance_mm": float(cfg.nsd_tolerance_mm),
                    "lesions": {"connectivity": CONNECTIVITY, "match_dice": MATCH_THRESHOLD}},
    }
    if cfg.label_set is not None:  # an explicit label set is part of the run (naming-chosen sets are per patient)
        config["label_set"] = cfg.label_set
    if cfg.precision != "auto":  # an explicit cfg.precision is part of the run; auto (the default) keeps older run ids
        config["precision"] = cfg.precision
    if any(parse_method(meth).ts and parse_method(meth).name != "deterministic+ts"
           for meth in [*methods, *(x for m in models for x in (m.methods or []))]):
        config["ts"] = "method"  # +ts fitted on each method's own output (a run of the former rule keeps its id)
    run_id = make_run_id(config)
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
    log = _setup_log(db.parent / "logs" / f"{run_id}{suffix}.log")
    all_cases = discover(cohort, cfg.split)
    cases = shard_cases(all_cases, shard)
    shard_pids = {c.patient_id for c in cases} if shard else None
    # the database is opened for each write only (store.writer), so the app can read between two patients
    with store.writer(db) as con:
        store.upsert_run(con, run_id, str(cohort), config, code_version(), str(dev))
        for m in models:
            store.upsert_model(con, run_id, m.name, str(Path(m.path).resolve()), m.card)
        done = store.done_evaluations(con, run_id) | set(cfg.skip or ())
        # leftovers of a killed run (never maps of 'ok' evaluations; a shard only its own patients')
        clean_stale_maps(con, run_id, maps_root, log, patients=shard_pids, keep=cfg.skip)
    splits = read_splits(cohort)
    split_of = {pid: s for s, ids in splits.items() for pid in ids}
    log.info("run %s%s: %d patients, models %s, methods %s, T=%d, device %s", run_id, suffix, len(cases), names,
             list(methods), T, dev)
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
    plan = cfg.plan
    if plan is None:
        plan = prepare_models(models, pairs, db, run_id, cohort, splits, cfg.calibration_split, cfg.ts_fit_mask, cfg.precision,
                              cfg.mc_batch, T, dev, log, echo, label_set=cfg.label_set, seed=cfg.seed)
    else:
        apply_plan(models, plan)
    if cfg.prepare_only:
        return {"run_id": run_id, "ok": 0, "failed": 0, "skipped": 0, "unavailable": unavailable,
                "seconds": round(time.time() - t_start, 1), "db": str(db), "plan": plan, "done": done,
                "patients": len(cases)}
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    status = store.RunStatus(db, run_id, len(cases))
    ctx = _Context(db=db, cohort=str(cohort), split_of=split_of, run_id=run_id, maps_root=maps_root, T=T, seed=cfg.seed,
                   save_maps=cfg.save_maps, patient_meta=cfg.patient_meta or {}, log=log, device=dev, pairs=pairs, done=done,
                   chunks={name: int(e["mc_batch"]) for name, e in plan.items()}, counts=counts, status=status,
                   label_set=cfg.label_set, nsd_tolerance_mm=cfg.nsd_tolerance_mm)
    try:
        _loop(ctx, cases, cfg.progress, cfg.prefetch, cfg.finish_depth)
    finally:
        status.clear()
    with store.writer(db) as con:
        # maps of evaluations that failed after writing some maps
        clean_stale_maps(con, run_id, maps_root, log, patients=shard_pids, keep=cfg.skip)
        if cfg.quality and shard is None:
            try:
                update_quality(con, run_id)
            except Exception as e:  # quality prediction is an add-on: never lose the batch over it
                log.error("quality prediction failed: %s\n%s", e, traceback.format_exc())
                echo(f"quality prediction failed: {e}")
        if shard is None:
            try:  # the app's fast tables; readers fall back to the long tables when these are missing or stale
                d = derived.build(con, run_id)
                log.info("derived tables %s in %s s", d["rows"], d["seconds"])
            except Exception as e:
                log.error("derived tables failed: %s\n%s", e, traceback.format_exc())
                echo(f"derived tables failed (the app reads the long tables instead): {e}")
    summary = {"run_id": run_id, **counts, "unavailable": unavailable, "seconds": round(time.time() - t_start, 1),
               "db": str(db), "plan": plan}
    log.info("summary %s", {k: v for k, v in summary.items() if k != "plan"})
    echo(f"batch {run_id}{suffix}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
         f"(model x method x patient) in {summary['seconds']} s -> {db}")
    return summary


# ------------------------------------------------------------------------------------ the patient loop
@dataclass
class _Context:
    db: Path
    cohort: str
    split_of: dict
    run_id: str
    maps_root: Path
    T: int
    seed: int
    save_maps: bool
    patient_meta: dict
    log: logging.Logger
    device: torch.device
    pairs: list
    done: set
    chunks: dict
    counts: dict
    status: object
    bar: object = None
    label_set: str | None = None
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM


@dataclass
class _Loaded:
    """One patient as the loader thread leaves it: the case, its region masks, and per model set the grid
    plan, the image on the model grid and its preprocessed (1, C, X', Y', Z') tensor (pinned on CUDA), or the
    exception that step raised (that model's evaluations fail, the others go on)."""
    case: object
    truth: np.ndarray | None
    raters: np.ndarray | None
    inputs: dict


def _pending(ctx: _Context, pid: str) -> list:
    return [(m, meth) for m, meth in ctx.pairs if (m.name, meth, pid) not in ctx.done]


def _load_patient(ctx: _Context, files) -> _Loaded | None:
    """Loader-thread work for one patient: load + validate, region masks, model grid, normalisation.
    None when nothing is pending; raises (CaseError, ...) when the patient cannot be used at all."""
    pending = _pending(ctx, files.patient_id)
    if not pending:
        return None
    channels = pending[0][0].card["channels"]
    case = load_case(files, channels, label_set=ctx.label_set)
    for lm, _ in pending:
        if lm.card["channels"] != channels:
            raise CaseError(files.patient_id, "models with different channel orders in one run are not supported yet")
    truth = labels_to_regions(case.seg, case.label_scheme) if case.seg is not None else None
    raters = (np.stack([labels_to_regions(r, case.label_scheme) for r in case.raters])
              if case.raters is not None and truth is not None else None)
    inputs = {}
    for lm in {id(lm): lm for lm, _ in pending}.values():
        try:
            grid = grid_plan(case.affine, case.image.shape, lm.card)
            image = grid.to_model(case.image)
            x = preprocess(image, lm.card)
            if ctx.device.type == "cuda":
                x = x.pin_memory()  # the copy to the GPU (main thread) is then asynchronous
            inputs[id(lm)] = (grid, image, x)
        except Exception as e:  # noqa: BLE001 - this model's evaluations of the patient fail
            inputs[id(lm)] = e
    return _Loaded(case, truth, raters, inputs)


def _loop(ctx: _Context, cases, progress: bool, prefetch: int, finish_depth: int) -> None:
    """The patient loop: the loader thread reads ahead, this thread infers, the finisher thread computes
    metrics, writes maps and commits each patient in order (:mod:`core.batch.prefetch`)."""
    if progress:
        from tqdm import tqdm

        ctx.bar = tqdm(total=len(cases), desc=f"batch {ctx.run_id}", unit="patient")
    finisher = OrderedWorker(lambda job: _finish_patient(ctx, job), depth=finish_depth)
    loader = iter(Prefetcher(cases, lambda f: _load_patient(ctx, f), depth=prefetch))
    try:
        for i, (files, loaded) in enumerate(loader):
            pid = files.patient_id
            pending = _pending(ctx, pid)
            job = {"index": i, "files": files, "pending": pending, "loaded": loaded, "evals": []}
            if pending and isinstance(loaded, _Loaded):
                job["evals"] = _infer_patient(ctx, pid, loaded, pending)
            finisher.submit(job)
    finally:
        loader.close()
        finisher.close()
        if ctx.bar is not None:
            ctx.bar.close()


def _infer_patient(ctx: _Context, pid: str, lp: _Loaded, pending) -> list[dict]:
    """This thread's work: every pending (model, method) of the patient on the device (passes cached per
    model set, so methods share them). Returns per evaluation the Prediction on the model grid or the error."""
    caches, evals = {}, []
    for lm, meth in pending:
        t0 = time.perf_counter()
        try:
            inp = lp.inputs[id(lm)]
            if isinstance(inp, BaseException):
                raise inp
            grid, image, x = inp
            cache = caches.setdefault(id(lm), {})
            if ("x", id(image)) not in cache:
                if not grid.identity:
                    ctx.log.info("%s %s: patient grid %s (RAS %s mm) -> model grid %s (%s mm) and back", pid, lm.name,
                                 grid.patient_shape, grid.ras_spacing, grid.model_shape, grid.model_spacing)
                cache[("x", id(image))] = x.to(ctx.device, non_blocking=True)
            pred = predict(lm, image, meth, T=ctx.T, mc_batch=ctx.chunks.get(lm.name, 1),
                           seed=patient_seed(ctx.seed, lm.name, pid), cache=cache)
            evals.append({"model": lm.name, "method": meth, "pred": pred, "grid": grid,
                          "seconds": time.perf_counter() - t0})
        except Exception as e:  # noqa: BLE001 - recorded as this evaluation's failure
            msg = f"{pid}: {lm.name}/{meth}: {type(e).__name__}: {e}"
            ctx.log.error("failed %s\n%s", msg, traceback.format_exc())
            evals.append({"model": lm.name, "method": meth, "error": msg, "seconds": time.perf_counter() - t0})
    return evals


def _finish_patient(ctx: _Context, job: dict) -> None:
    """Finisher-thread work for one patient, in patient order: back to the patient grid, the metric suite,
    NIfTI maps (written before the transaction, atomically), then ONE transaction with all of its rows."""
    files, pending, loaded = job["files"], job["pending"], job["loaded"]
    pid = files.patient_id
    n_pairs = len(ctx.pairs)
    if not pending:
        ctx.counts["skipped"] += n_pairs
    else:
        if isinstance(loaded, BaseException):  # every failure of this patient is recorded, the batch goes on
            msg = str(loaded) if isinstance(loaded, CaseError) else f"{pid}: {type(loaded).__name__}: {loaded}"
            ctx.log.error("failed %s", msg)
            results, patient_row = [{"model": lm.name, "method": meth, "status": "failed", "seconds": 0.0,
                                     "error": msg} for lm, meth in pending], None
        else:
            results, patient_row = _evaluate(ctx, pid, loaded, job["evals"])
        with store.writer(ctx.db) as con:
            store.write_patient(con, ctx.run_id, pid, results, patient_row)
        for r in results:
            ctx.counts[r["status"]] += 1
        ctx.counts["skipped"] += n_pairs - len(pending)
    ctx.status.update(job["index"] + 1, ctx.counts)
    if ctx.bar is not None:
        ctx.bar.update(1)
        ctx.bar.set_postfix(ctx.counts)


def _evaluate(ctx: _Context, pid: str, lp: _Loaded, evals: list[dict]):
    case, truth, raters = lp.case, lp.truth, lp.raters
    meta = ctx.patient_meta.get(pid)
    meta = {**(meta or {}), **({"n_raters": int(len(case.raters))} if case.raters is not None else {})} or None
    patient_row = {"cohort": ctx.cohort, "source": case.source, "shape": case.image.shape[1:],
                   "spacing": case.spacing, "label_scheme": case.label_scheme, "split": ctx.split_of.get(pid),
                   "has_gt": truth is not None, "meta": meta}
    brain = case.brain_mask
    results = []
    for ev in evals:
        if "error" in ev:
            results.append({"model": ev["model"], "method": ev["method"], "status": "failed",
                            "seconds": ev["seconds"], "error": ev["error"]})
            continue
        t0 = time.perf_counter()
        try:
            pred = prediction_to_patient(ev["pred"], ev["grid"])  # metrics and maps on the patient's own grid
            # the one segmentation: the label map we export, read back as its regions (:mod:`core.io.label_sets`)
            labels = regions_to_labels(pred.prob >= 0.5, case.label_scheme)
            res = evaluate_patient(pred.prob, pred.entropy, pred.mi, truth, brain, spacing=case.spacing,
                                   epkl=pred.epkl, sample_volumes=pred.sample_volumes, raters=raters,
                                   segmentation=labels_to_regions(labels, case.label_scheme),
                                   nsd_tolerance_mm=ctx.nsd_tolerance_mm)
            maps = []
            if ctx.save_maps:
                maps = write_maps(Path(ctx.maps_root) / ctx.run_id / ev["model"] / ev["method"], pid, pred, truth,
                                  case.affine, case.label_scheme, labels=labels)
            seconds = ev["seconds"] + time.perf_counter() - t0
            results.append({"model": ev["model"], "method": ev["method"], "status": "ok", "seconds": seconds,
                            "error": None, "maps": maps, "evaluation": res})
            ctx.log.info("ok %s %s %s %.2fs (chunk %d)", pid, ev["model"], ev["method"], seconds, pred.chunk)
        except Exception as e:  # noqa: BLE001 - recorded as this evaluation's failure
            msg = f"{pid}: {ev['model']}/{ev['method']}: {type(e).__name__}: {e}"
            ctx.log.error("failed %s\n%s", msg, traceback.format_exc())
            results.append({"model": ev["model"], "method": ev["method"], "status": "failed",
                            "seconds": ev["seconds"] + time.perf_counter() - t0, "error": msg})
    return results, patient_row
