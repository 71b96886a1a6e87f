"""Transactional writes of the batch: runs, models, one patient's evaluations, temperatures, plan, quality."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.store.connection import transaction
from core.store.schema import COLUMNS, HIST_INSERT, KEY, RESULT_TABLES, STORED_TABLES


# ------------------------------------------------------------------------------------------ writes
def upsert_run(con, run_id: str, cohort: str, config: dict, code_version: str, device: str) -> None:
    """Insert the run's row (created now), or, when the run exists (a rerun), update its device only.

    Args:
        con: a writer connection.
        run_id: the run (a hash of ``config``).
        cohort: the cohort folder.
        config: the run's configuration (stored as sorted JSON).
        code_version: the code's version string.
        device: the torch device name.
    """
    with transaction(con):
        if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is None:
            con.execute("INSERT INTO runs VALUES (?, now(), ?, ?, ?, ?)",
                        [run_id, cohort, json.dumps(config, sort_keys=True), code_version, device])
        else:
            con.execute("UPDATE runs SET device = ? WHERE run_id = ?", [device, run_id])


def upsert_model(con, run_id: str, model: str, checkpoint: str, card: dict) -> None:
    """Replace the run's row of one model (checkpoint path, model card as JSON) in one transaction."""
    with transaction(con):
        con.execute("DELETE FROM models WHERE run_id = ? AND model = ?", [run_id, model])
        con.execute("INSERT INTO models VALUES (?, ?, ?, ?)", [run_id, model, checkpoint, json.dumps(card)])


def done_evaluations(con, run_id: str) -> set[tuple[str, str, str]]:
    """{(model, method, patient_id)} already evaluated with status 'ok' in this run (a rerun skips them)."""
    rows = con.execute("SELECT model, method, patient_id FROM evaluations WHERE run_id = ? AND status = 'ok'",
                       [run_id]).fetchall()
    return {tuple(r) for r in rows}


def write_patient(con, run_id: str, patient_id: str, results: list[dict], patient: dict | None = None) -> None:
    """Write all evaluations of one patient in ONE transaction (replacing earlier rows of the same keys).

    Non-finite metric values are stored as NULL.

    Args:
        con: a writer connection.
        run_id: the run.
        patient_id: the patient.
        results: dicts with model, method, status, seconds, error and, for status 'ok', ``evaluation`` (the
            :class:`core.metrics.suite.PatientEvaluation` of :func:`core.metrics.suite.evaluate_patient`) and
            ``maps`` [(kind, path)].
        patient: the ``patients`` row (keys as the table's columns: cohort, source, shape, spacing (mm),
            label_scheme, split, has_gt, meta) written in the same transaction; None leaves it as it is.
    """
    frames = {t: [] for t in RESULT_TABLES}
    evals = []
    for r in results:
        key = [run_id, r["model"], r["method"], patient_id]
        evals.append(key + [r["status"], float(r.get("seconds") or 0.0), r.get("error")])
        ev = r.get("evaluation")
        for t in RESULT_TABLES:
            rows = r.get("maps") if t == "maps" else (getattr(ev, t) if ev is not None else None)
            rows = rows or []
            if rows:
                df = pd.DataFrame(rows, columns=COLUMNS[t])
                for i, c in enumerate(KEY):
                    df.insert(i, c, key[i])
                frames[t].append(df)
    with transaction(con):
        if patient is not None:
            con.execute("DELETE FROM patients WHERE cohort = ? AND patient_id = ?", [patient["cohort"], patient_id])
            con.execute("INSERT INTO patients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [patient["cohort"], patient_id, patient["source"], json.dumps(list(patient["shape"])),
                         json.dumps([round(float(s), 4) for s in patient["spacing"]]), patient["label_scheme"],
                         patient.get("split"), bool(patient["has_gt"]), json.dumps(patient.get("meta") or {})])
        for r in results:
            params = [run_id, r["model"], r["method"], patient_id]
            for t in ("evaluations",) + RESULT_TABLES:
                con.execute(f"DELETE FROM {STORED_TABLES.get(t, t)} "
                            "WHERE run_id = ? AND model = ? AND method = ? AND patient_id = ?", params)
        for ev in evals:
            con.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, now())", ev)
        for t, dfs in frames.items():
            if dfs:
                df = pd.concat(dfs, ignore_index=True)
                if t == "metrics":
                    df["value"] = df["value"].astype("float64").where(np.isfinite(df["value"].astype("float64")))
                if t == "uncertainty_bins":  # stored without n_error: it must be n_fp + n_fn (schema.UNCERTAINTY_VIEW)
                    bad = df["n_error"].to_numpy() != df["n_fp"].to_numpy() + df["n_fn"].to_numpy()
                    if bad.any():
                        r = df[bad].iloc[0]
                        raise ValueError(f"patient {patient_id}: uncertainty bin {r['bin']} of {r['model']} / "
                                         f"{r['method']} / {r['region']} has n_error != n_fp + n_fn")
                con.register("_frame", df)
                con.execute(HIST_INSERT[t]("_frame") if t in HIST_INSERT else f"INSERT INTO {t} SELECT * FROM _frame")
                con.unregister("_frame")


def write_temperatures(con, run_id: str, model: str, method: str, regions, fits: list[dict],
                       patients: list[str]) -> None:
    """Replace the temperatures of one model's ``+ts`` method: one row per region, in one transaction.

    Args:
        con: a writer connection.
        run_id: the run.
        model: the model.
        method: the ``+ts`` method they were fitted for (on its own output, :mod:`core.inference.temperature`).
        regions: the region names, in the order of ``fits``.
        fits: :func:`core.inference.temperature.fit_region_temperatures` dicts (NaN stored as NULL).
        patients: the calibration patients used (stored sorted, as JSON).
    """
    with transaction(con):
        con.execute("DELETE FROM temperatures WHERE run_id = ? AND model = ? AND method = ?", [run_id, model, method])
        for reg, f in zip(regions, fits):
            con.execute("INSERT INTO temperatures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, model, method, reg, _finite(f["temperature"]), f["n_voxels"], f["n_positive"],
                         _finite(f["nll_before"]), _finite(f["nll_after"]), json.dumps(sorted(patients))])


def write_run_plan(con, run_id: str, plan: dict) -> None:
    """Replace the ``run_plan`` rows of the plan's models, in one transaction.

    One row per model of the run's plan (:func:`core.batch.plan.prepare_models`): the precision asked for and
    chosen with its reason, device and Dice checks (JSON), the passes per forward call and the chunk trial's
    timings (JSON); the temperatures go to :func:`write_temperatures`.

    Args:
        con: a writer connection.
        run_id: the run.
        plan: model -> plan entry.
    """
    with transaction(con):
        for model, e in plan.items():
            p = e["precision"]
            con.execute("DELETE FROM run_plan WHERE run_id = ? AND model = ?", [run_id, model])
            con.execute("INSERT INTO run_plan VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, model, p["requested"], p["chosen"], p["reason"], json.dumps(p["checks"]),
                         p.get("patient_id"), int(e["mc_batch"]), json.dumps(e.get("chunk_trial")), p["device"]])


def _finite(x):
    return float(x) if x is not None and np.isfinite(x) else None


def write_quality(con, run_id: str, per_patient: pd.DataFrame, summary: pd.DataFrame) -> None:
    """Replace the run's quality-prediction rows (:mod:`core.analysis.quality`) in one transaction.

    Args:
        con: a writer connection.
        run_id: the run.
        per_patient: rows of ``quality`` (model, method, patient_id, region, dice, predicted_dice,
            uncertainty_score, flagged); may be empty.
        summary: rows of ``quality_summary`` (model, method, region, n_patients, r2, pearson_r, score_spearman,
            regressor, features as JSON); may be empty.
    """
    with transaction(con):
        for t, df, cols in (("quality", per_patient, ["model", "method", "patient_id", "region", "dice",
                                                      "predicted_dice", "uncertainty_score", "flagged"]),
                            ("quality_summary", summary, ["model", "method", "region", "n_patients", "r2",
                                                          "pearson_r", "score_spearman", "regressor", "features"])):
            con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])
            if len(df):
                frame = df[cols].copy()
                frame.insert(0, "run_id", run_id)
                con.register("_frame", frame)
                con.execute(f"INSERT INTO {t} SELECT * FROM _frame")
                con.unregister("_frame")
