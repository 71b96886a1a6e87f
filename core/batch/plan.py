"""The run's plan: what the batch resolves once per model before the first patient.

* the forward precision (:func:`core.inference.precision_check.choose_precision` on one check case);
* the passes per forward call (:func:`core.inference.forward.choose_chunk`), so that every patient and every shard
  draws its MC-dropout masks in the same chunk layout;
* the +ts temperatures, one set per (model, +ts method), fitted on the calibration split on that method's own
  output under the chosen precision (:mod:`core.inference.temperature`).

The plan is stored (``run_plan``, ``temperatures``) and kept by a rerun of the same run; it is plain JSON
types, so the driver of a sharded run (:mod:`core.batch.executors`) hands it to its workers (:func:`apply_plan`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core import store
from core.batch.prefetch import Prefetcher
from core.inference.forward import choose_chunk, deterministic_logits
from core.inference.mc_masks import patient_seed
from core.inference.methods import FLIPS, MethodSpec, parse_method
from core.inference.precision import auto_candidates
from core.inference.precision_check import choose_precision
from core.inference.temperature import fit_region_temperatures, gather_fit_voxels
from core.inference.uncertainty import predict
from core.inference.resample import plan as grid_plan
from core.io.cohort import CaseError, discover, labels_to_regions, load_case



def passes_per_call(method: str, T: int) -> int:
    """Passes of the primary network one call of ``method`` makes (what a chunk can batch).

    Args:
        method: a method name (:mod:`core.inference.methods`).
        T: samples of ``mc_dropout``.

    Returns:
        ``T`` for ``mc_dropout`` (with or without ``+tta``), the 8 flips for a ``tta`` method, else 1.

    Raises:
        ValueError: for an unknown method name.
    """
    spec = parse_method(method)
    if spec.base == "mc_dropout":
        return int(T)
    return len(FLIPS) if spec.tta else 1


def check_case(cohort: Path, splits: dict, cal_split: str, loaded: dict, channels, label_set: str | None = None):
    """The case the precision check and the chunk trial run on.

    The first patient of the calibration split that loads with ground truth, else the first patient of the
    cohort that loads (sorted ids: the same case for every shard).

    Args:
        cohort: BraTS-layout folder.
        splits: split name -> patient ids (``splits.json``).
        cal_split: the calibration split's name.
        loaded: cache of the case per channel order (updated in place, a None result included).
        channels: the model card's channel order.

    Returns:
        a :class:`core.io.cohort.Case`, or None when no patient loads.
    """
    key = tuple(channels)
    if key in loaded:
        return loaded[key]
    cal = set(splits.get(cal_split) or [])
    files = discover(cohort)
    case = None
    for f in [f for f in files if f.patient_id in cal] + [f for f in files if f.patient_id not in cal]:
        try:
            case = load_case(f, channels, require_seg=f.patient_id in cal, label_set=label_set)
            break
        except CaseError:
            continue
    loaded[key] = case
    return case


def prepare_models(models, pairs, db, run_id, cohort, splits, cal_split, ts_fit_mask, precision, mc_batch, T, dev,
                   log, echo, label_set: str | None = None, seed: int = 0) -> dict:
    """Resolve the run's plan per model, set it on the model sets and store it (``run_plan``, ``temperatures``).

    Per model: the precision (:func:`core.inference.precision_check.choose_precision`), the passes per forward
    call (:func:`core.inference.forward.choose_chunk` with ``mc_batch="auto"``) and the +ts temperatures, in
    that order (temperatures are fitted on the logits the run will use). A rerun of the run on the same device
    type (and the same explicit ``mc_batch``, if any) keeps the stored precision and passes per call.

    Args:
        models: the run's model sets (updated in place: ``precision``, ``temperature``).
        pairs: the (model set, method) pairs the run evaluates; a model without one gets no plan entry.
        db: results database file.
        run_id: the run.
        cohort: BraTS-layout folder.
        splits: split name -> patient ids.
        cal_split: the calibration split (check case, temperature fit).
        ts_fit_mask: voxel set of the temperature fit (``brain`` | ``roi``).
        precision: ``auto|fp32|bf16|fp16``.
        mc_batch: passes per forward call, or ``"auto"``.
        T: samples of ``mc_dropout``.
        dev: the torch device.
        log: the run's logger.
        echo: where messages go.
        seed: the run's seed (MC-dropout passes of a ``mc_dropout+ts`` fit).

    Returns:
        ``{model: {"precision": {...}, "mc_batch": int, "chunk_trial": {...} | None,
        "temperature": {method: [R]} | None}}``
        (plain JSON types: the plan travels to the workers of a sharded run).

    Raises:
        ValueError: as :func:`fit_temperatures`, when a +ts method cannot be fitted.
    """
    plan, loaded = {}, {}
    with store.writer(db) as con:
        stored = store.read_run_plan(con, run_id)
    for m in models:
        mine = [meth for mm, meth in pairs if mm is m]
        if not mine:
            continue
        old = stored.get(m.name)
        if old is not None and torch.device(old["precision"]["device"]).type == dev.type and (
                mc_batch == "auto" or int(mc_batch) == old["mc_batch"]):
            # a rerun (resume) keeps its plan: the same precision and MC chunk layout for every patient
            m.precision = old["precision"]["chosen"]
            plan[m.name] = {**old, "temperature": None}
            log.info("plan %s: kept from the database (precision %s, %d pass(es) per forward call)", m.name,
                     m.precision, old["mc_batch"])
            continue
        views = max(passes_per_call(meth, T) for meth in mine)
        needs_check = precision in ("bf16", "fp16") or (precision == "auto" and bool(auto_candidates(dev)))
        needs_trial = mc_batch == "auto" and views > 1
        img = truth = pid = None
        if needs_check or needs_trial:
            case = check_case(cohort, splits, cal_split, loaded, m.card["channels"], label_set)
            if case is not None:
                pid = case.patient_id
                grid = grid_plan(case.affine, case.image.shape, m.card)
                img = grid.to_model(case.image)
                if case.seg is not None:
                    truth = grid.to_model(labels_to_regions(case.seg, case.label_scheme).astype(np.float32)) >= 0.5
        choice = choose_precision(m, img, truth, precision, dev, patient_id=pid)
        m.precision = choice.chosen
        trial = None
        if needs_trial and img is not None:
            trial = choose_chunk(m, img, views, device=dev)
            chunk = trial["chunk"]
        else:
            chunk = 1 if mc_batch == "auto" else max(1, int(mc_batch))
        entry = {"precision": choice.to_dict(), "mc_batch": int(chunk), "chunk_trial": trial, "temperature": None}
        plan[m.name] = entry
        msg = f"{m.name}: precision {choice.chosen} ({choice.reason}), {chunk} pass(es) per forward call"
        log.info("plan %s%s", msg, f" (trial {trial})" if trial else "")
        echo(f"plan {msg}")
    for m in {id(m): m for m, meth in pairs if parse_method(meth).ts}.values():
        ts_methods = sorted({parse_method(meth).name for mm, meth in pairs if mm is m and parse_method(meth).ts})
        m.temperature = fit_temperatures(db, run_id, m, ts_methods, cohort, splits.get(cal_split), cal_split, log, echo,
                                         ts_fit_mask, label_set, T=T, mc_batch=plan[m.name]["mc_batch"], seed=seed)
        plan[m.name]["temperature"] = {meth: [float(t) for t in ts] for meth, ts in m.temperature.items()}
    with store.writer(db) as con:
        store.write_run_plan(con, run_id, plan)
    return plan


def apply_plan(models, plan: dict) -> None:
    """Set a driver's plan (:func:`prepare_models`) on this process's model sets.

    Args:
        models: the model sets (updated in place: ``precision``, and ``temperature`` where the plan has one);
            a model the plan does not name is left as it is.
        plan: the plan, as :func:`prepare_models` returns it.
    """
    for m in models:
        e = plan.get(m.name)
        if e is None:
            continue
        m.precision = e["precision"]["chosen"]
        t = e.get("temperature")
        if isinstance(t, dict):
            m.temperature = {meth: np.asarray(v, np.float32) for meth, v in t.items()}
        elif t is not None:  # a plan of an earlier version: one set for every +ts method
            m.temperature = np.asarray(t, np.float32)


def base_method(method: str) -> str:
    """The method a ``+ts`` method scales: its name without ``+ts`` (``checkpoint_ensemble+tta+ts`` ->
    ``checkpoint_ensemble+tta``)."""
    spec = parse_method(method)
    return MethodSpec(spec.base, tta=spec.tta, ts=False).name


def method_logits(ms, method: str, image: np.ndarray, T: int = 10, mc_batch=1, seed: int | None = 0,
                  cache: dict | None = None) -> np.ndarray:
    """What the temperature of ``method`` is fitted on: the logit of its base's mean probability on one image.

    Args:
        ms: the model set.
        method: a ``+ts`` method name (or its base).
        image: (C, X, Y, Z) float32 on the model grid.
        T: samples of ``mc_dropout``.
        mc_batch: passes per forward call.
        seed: torch seed of the MC-dropout passes.
        cache: per-patient pass cache shared between the methods of one patient.

    Returns:
        (R, X, Y, Z) float32 z = log(p / (1 - p)) of the base's mean p (the network's logits for ``deterministic``).
    """
    base = base_method(method)
    if base == "deterministic":
        return deterministic_logits(ms, image, cache=cache)
    return predict(ms, image, base, T=T, mc_batch=mc_batch, seed=seed, cache=cache, return_logit=True).logit


def fit_temperatures(db, run_id, ms, methods, cohort, cal_ids, cal_split, log, echo, fit_mask="brain",
                     label_set: str | None = None, T: int = 10, mc_batch=1, seed: int = 0) -> dict[str, np.ndarray]:
    """The model's per-region temperatures of each +ts method for this run: read from ``temperatures`` or fitted
    now and stored.

    Each method's temperatures are fitted on that method's own output (:func:`method_logits`: the logit of its
    base's mean probability) over the calibration split, on the patient grid, over ``fit_mask``
    (:mod:`core.inference.temperature`); the methods still to fit share one pass over the split and the passes
    they have in common. A calibration patient that does not load is skipped (logged).

    Args:
        db: results database file.
        run_id: the run.
        ms: the model set (its card's regions and channels).
        methods: the model's ``+ts`` method names (canonical).
        cohort: BraTS-layout folder.
        cal_ids: the calibration split's patient ids (None or empty: no split).
        cal_split: the split's name (in messages).
        log: the run's logger.
        echo: where messages go.
        fit_mask: voxel set of the fit, ``brain`` or ``roi``.
        T: samples of ``mc_dropout``.
        mc_batch: passes per forward call (the plan's).
        seed: torch seed of MC-dropout passes.

    Returns:
        ``{method: (R,) float32}`` in the card's region order; 1.0 where a fit is undefined (NULL / NaN).

    Raises:
        ValueError: when there is no calibration split, or none of its patients loads with ground truth.
    """

    regions = ms.card["regions"]
    out, todo = {}, []
    with store.writer(db) as con:
        for meth in methods:
            stored = store.read_temperatures(con, run_id, ms.name, meth)
            if len(stored) == len(regions):
                out[meth] = np.array([stored[r] if stored[r] is not None else 1.0 for r in regions], np.float32)
            else:
                todo.append(meth)
    if not todo:
        return out
    if not cal_ids:
        raise ValueError(f"+ts methods need a '{cal_split}' split in {cohort}/splits.json to fit temperatures on; "
                         f"none found (set calibration_split or drop the +ts methods)")
    zs, ys, used = {meth: [] for meth in todo}, {meth: [] for meth in todo}, []
    cal = [f for f in discover(cohort) if f.patient_id in set(cal_ids)]
    for files, case in Prefetcher(cal, lambda f: load_case(f, ms.card["channels"], require_seg=True, label_set=label_set), depth=2):
        if isinstance(case, CaseError):
            log.error("temperature fit: skipping %s", case)
            echo(f"temperature fit: skipping {case}")
            continue
        if isinstance(case, Exception):
            raise case
        grid = grid_plan(case.affine, case.image.shape, ms.card)  # model grid (RAS, card spacing) and back
        img, cache = grid.to_model(case.image), {}
        truth = labels_to_regions(case.seg, case.label_scheme)
        for meth in todo:
            z = grid.to_patient(method_logits(ms, meth, img, T=T, mc_batch=mc_batch,
                                             seed=patient_seed(seed, ms.name, files.patient_id), cache=cache))
            zr, yr = gather_fit_voxels(z, truth, case.brain_mask, mask=fit_mask)
            zs[meth].append(zr)
            ys[meth].append(yr)
        used.append(files.patient_id)
    if not used:
        raise ValueError(f"no usable '{cal_split}' patient with ground truth to fit temperatures of {ms.name}")
    for meth in todo:
        fits = fit_region_temperatures(zs[meth], ys[meth])
        with store.writer(db) as con:
            store.write_temperatures(con, run_id, ms.name, meth, regions, fits, used)
        msg = ", ".join(f"{r} T={f['temperature']:.3f} (NLL {f['nll_before']:.4f} -> {f['nll_after']:.4f})"
                        for r, f in zip(regions, fits))
        log.info("temperatures of %s %s on %d %s patients (%s voxels): %s", ms.name, meth, len(used), cal_split,
                 fit_mask, msg)
        echo(f"temperatures of {ms.name} {meth}: {msg}")
        out[meth] = np.array([f["temperature"] if np.isfinite(f["temperature"]) else 1.0 for f in fits], np.float32)
    return out
