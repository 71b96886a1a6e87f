"""DuckDB results database: schema, transactional writes, and the read queries the pages use.

Every query takes parameters (``?``); no value is ever pasted into SQL text. Tables (names are the
product's data interface, see the README for every column):

runs, models, patients, evaluations, metrics, calibration_bins, uncertainty_bins, maps, temperatures,
run_plan, quality, quality_summary
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from . import metrics as M

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, created_at TIMESTAMP, cohort VARCHAR, config JSON,
    code_version VARCHAR, device VARCHAR);
CREATE TABLE IF NOT EXISTS models (
    run_id VARCHAR, model VARCHAR, checkpoint VARCHAR, card JSON, PRIMARY KEY (run_id, model));
CREATE TABLE IF NOT EXISTS patients (
    cohort VARCHAR, patient_id VARCHAR, source VARCHAR, shape VARCHAR, spacing VARCHAR,
    label_scheme VARCHAR, split VARCHAR, has_gt BOOLEAN, meta JSON, PRIMARY KEY (cohort, patient_id));
CREATE TABLE IF NOT EXISTS evaluations (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, status VARCHAR, seconds DOUBLE,
    error VARCHAR, finished_at TIMESTAMP, PRIMARY KEY (run_id, model, method, patient_id));
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    metric VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS calibration_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    bin INTEGER, n BIGINT, sum_prob DOUBLE, sum_true DOUBLE);
CREATE TABLE IF NOT EXISTS uncertainty_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    measure VARCHAR, bin INTEGER, n_error BIGINT, n_correct BIGINT, n_fp BIGINT, n_fn BIGINT, n_tp BIGINT);
CREATE TABLE IF NOT EXISTS maps (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, kind VARCHAR, path VARCHAR);
CREATE TABLE IF NOT EXISTS temperatures (
    run_id VARCHAR, model VARCHAR, region VARCHAR, temperature DOUBLE, n_voxels BIGINT, n_positive BIGINT,
    nll_before DOUBLE, nll_after DOUBLE, patients JSON, PRIMARY KEY (run_id, model, region));
CREATE TABLE IF NOT EXISTS quality (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR,
    dice DOUBLE, predicted_dice DOUBLE, uncertainty_score DOUBLE, flagged BOOLEAN);
CREATE TABLE IF NOT EXISTS run_plan (
    run_id VARCHAR, model VARCHAR, precision_requested VARCHAR, precision VARCHAR, precision_reason VARCHAR,
    precision_checks JSON, check_patient VARCHAR, mc_batch INTEGER, chunk_trial JSON, device VARCHAR,
    PRIMARY KEY (run_id, model));
CREATE TABLE IF NOT EXISTS quality_summary (
    run_id VARCHAR, model VARCHAR, method VARCHAR, region VARCHAR, n_patients INTEGER, r2 DOUBLE,
    pearson_r DOUBLE, score_spearman DOUBLE, regressor VARCHAR, features JSON);
"""

RESULT_TABLES = ("metrics", "calibration_bins", "uncertainty_bins", "maps")
COLUMNS = {
    "metrics": ["region", "mask", "metric", "value"],
    "calibration_bins": ["region", "mask", "bin", "n", "sum_prob", "sum_true"],
    "uncertainty_bins": ["region", "mask", "measure", "bin", "n_error", "n_correct", "n_fp", "n_fn", "n_tp"],
    "maps": ["kind", "path"],
}
KEY = ["run_id", "model", "method", "patient_id"]


class DatabaseBusy(RuntimeError):
    """The database file is locked by a writer (a batch is running) and stayed locked while we retried."""


def connect(path: str | Path, read_only: bool = False, retries: int = 20, wait_s: float = 0.25):
    """Open the database; a writer creates the schema. Read-only opens retry while a batch holds the lock."""
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no results database at {path}")
    last = None
    for _ in range(max(1, retries)):
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            if not read_only:
                con.execute(SCHEMA)
            return con
        except duckdb.IOException as e:  # lock held by another process
            last = e
            time.sleep(wait_s)
    raise DatabaseBusy(f"{path} is locked by another process (a batch is writing?): {last}")


@contextmanager
def writer(path: str | Path, retries: int = 240, wait_s: float = 0.25):
    """A short-lived write connection: open (waiting up to ``retries`` x ``wait_s`` while a reader or another
    writer holds the file), yield, close. The batch opens one per write, so between two patients nobody holds
    the lock and the app reads the last committed state."""
    con = connect(path, read_only=False, retries=retries, wait_s=wait_s)
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con):
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")


class RunStatus:
    """``<db>.progress.json`` while a batch runs: pid, run_id, patients done / total, counts, start and last
    update (UTC ISO). Written atomically after every patient, removed when the batch ends; the app reads it to
    say that a run is in progress (and how far) while it shows the last committed state."""

    def __init__(self, db: Path, run_id: str, total: int):
        import os

        self.path = Path(db).with_name(Path(db).name + ".progress.json")
        self.data = {"pid": os.getpid(), "run_id": run_id, "done": 0, "total": total, "counts": {},
                     "started": _now(), "updated": _now()}
        self._write()

    def update(self, done: int, counts: dict) -> None:
        self.data.update(done=done, counts=dict(counts), updated=_now())
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def read_run_status(db: str | Path) -> dict | None:
    """The status of a batch writing ``db`` right now, or None (no status file, or its process is gone)."""
    import os

    p = Path(db).with_name(Path(db).name + ".progress.json")
    try:
        data = json.loads(p.read_text())
        os.kill(int(data["pid"]), 0)  # raises when the process no longer exists (a killed batch)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ writes
def upsert_run(con, run_id: str, cohort: str, config: dict, code_version: str, device: str) -> None:
    with transaction(con):
        if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone() is None:
            con.execute("INSERT INTO runs VALUES (?, now(), ?, ?, ?, ?)",
                        [run_id, cohort, json.dumps(config, sort_keys=True), code_version, device])
        else:
            con.execute("UPDATE runs SET device = ? WHERE run_id = ?", [device, run_id])


def upsert_model(con, run_id: str, model: str, checkpoint: str, card: dict) -> None:
    with transaction(con):
        con.execute("DELETE FROM models WHERE run_id = ? AND model = ?", [run_id, model])
        con.execute("INSERT INTO models VALUES (?, ?, ?, ?)", [run_id, model, checkpoint, json.dumps(card)])


def done_evaluations(con, run_id: str) -> set[tuple[str, str, str]]:
    """{(model, method, patient_id)} already evaluated with status 'ok' in this run."""
    rows = con.execute("SELECT model, method, patient_id FROM evaluations WHERE run_id = ? AND status = 'ok'",
                       [run_id]).fetchall()
    return {tuple(r) for r in rows}


def write_patient(con, run_id: str, patient_id: str, results: list[dict], patient: dict | None = None) -> None:
    """Write all evaluations of one patient in ONE transaction (replacing earlier rows of the same keys).

    ``patient``: the ``patients`` row (keys as the table's columns) written in the same transaction.

    ``results``: dicts with model, method, status, seconds, error and, for status 'ok', the lists
    ``metrics``, ``calibration_bins``, ``uncertainty_bins`` (tuples as :func:`core.metrics.evaluate_patient`
    returns them) and ``maps`` [(kind, path)].
    """
    frames = {t: [] for t in RESULT_TABLES}
    evals = []
    for r in results:
        key = [run_id, r["model"], r["method"], patient_id]
        evals.append(key + [r["status"], float(r.get("seconds") or 0.0), r.get("error")])
        for t in RESULT_TABLES:
            rows = r.get(t) or []
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
                con.execute(f"DELETE FROM {t} WHERE run_id = ? AND model = ? AND method = ? AND patient_id = ?", params)
        for ev in evals:
            con.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, now())", ev)
        for t, dfs in frames.items():
            if dfs:
                df = pd.concat(dfs, ignore_index=True)
                if t == "metrics":
                    df["value"] = df["value"].astype("float64").where(np.isfinite(df["value"].astype("float64")))
                con.register("_frame", df)
                con.execute(f"INSERT INTO {t} SELECT * FROM _frame")
                con.unregister("_frame")


def write_temperatures(con, run_id: str, model: str, regions, fits: list[dict], patients: list[str]) -> None:
    """One row per region of the fitted temperatures (:func:`core.temperature.fit_region_temperatures`)."""
    with transaction(con):
        con.execute("DELETE FROM temperatures WHERE run_id = ? AND model = ?", [run_id, model])
        for reg, f in zip(regions, fits):
            con.execute("INSERT INTO temperatures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, model, reg, _finite(f["temperature"]), f["n_voxels"], f["n_positive"],
                         _finite(f["nll_before"]), _finite(f["nll_after"]), json.dumps(sorted(patients))])


def write_run_plan(con, run_id: str, plan: dict) -> None:
    """One row per model of the run's plan (:func:`core.batch.prepare_models`): the precision asked for and
    chosen with its Dice checks (JSON), the passes per forward call and the chunk trial's timings (JSON)."""
    with transaction(con):
        for model, e in plan.items():
            p = e["precision"]
            con.execute("DELETE FROM run_plan WHERE run_id = ? AND model = ?", [run_id, model])
            con.execute("INSERT INTO run_plan VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, model, p["requested"], p["chosen"], p["reason"], json.dumps(p["checks"]),
                         p.get("patient_id"), int(e["mc_batch"]), json.dumps(e.get("chunk_trial")), p["device"]])


def read_run_plan(con, run_id: str) -> dict:
    """The stored plan entries of a run, ``{model: {"precision": {...}, "mc_batch", "chunk_trial"}}`` (the shape
    :func:`write_run_plan` takes, without temperatures)."""
    rows = con.execute("""SELECT model, precision_requested, precision, precision_reason, precision_checks,
                                 check_patient, mc_batch, chunk_trial, device
                          FROM run_plan WHERE run_id = ?""", [run_id]).fetchall()
    return {m: {"precision": {"requested": req, "chosen": ch, "reason": why, "checks": json.loads(checks or "[]"),
                              "patient_id": pid, "device": dev},
                "mc_batch": int(mb), "chunk_trial": json.loads(trial) if trial else None}
            for m, req, ch, why, checks, pid, mb, trial, dev in rows}


def run_plan(con, run_id: str) -> pd.DataFrame:
    return con.execute("""SELECT model, precision_requested, precision, precision_reason, precision_checks,
                                 check_patient, mc_batch, device
                          FROM run_plan WHERE run_id = ? ORDER BY model""", [run_id]).df()


def _finite(x):
    return float(x) if x is not None and np.isfinite(x) else None


def read_temperatures(con, run_id: str, model: str) -> dict[str, float | None]:
    rows = con.execute("SELECT region, temperature FROM temperatures WHERE run_id = ? AND model = ?",
                       [run_id, model]).fetchall()
    return {r: t for r, t in rows}


def run_temperatures(con, run_id: str) -> pd.DataFrame:
    return con.execute("""SELECT model, region, temperature, n_voxels, n_positive, nll_before, nll_after
                          FROM temperatures WHERE run_id = ? ORDER BY model, region""", [run_id]).df()


def write_quality(con, run_id: str, per_patient: pd.DataFrame, summary: pd.DataFrame) -> None:
    """Replace the run's quality-prediction rows (:mod:`core.quality`) in one transaction."""
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


# ------------------------------------------------------------------------------------------- reads
def list_runs(con) -> pd.DataFrame:
    return con.execute("""
        SELECT r.run_id, r.created_at, r.cohort, r.device, r.code_version,
               count(*) FILTER (WHERE e.status = 'ok') AS ok,
               count(*) FILTER (WHERE e.status = 'failed') AS failed,
               count(DISTINCT e.patient_id) AS patients
        FROM runs r LEFT JOIN evaluations e USING (run_id)
        GROUP BY ALL ORDER BY r.created_at DESC""").df()


def run_models(con, run_id: str) -> pd.DataFrame:
    return con.execute("SELECT model, checkpoint, card FROM models WHERE run_id = ? ORDER BY model", [run_id]).df()


def run_methods(con, run_id: str) -> list[str]:
    rows = con.execute("SELECT DISTINCT method FROM evaluations WHERE run_id = ? ORDER BY method", [run_id]).fetchall()
    return [r[0] for r in rows]


def evaluation_status(con, run_id: str) -> pd.DataFrame:
    return con.execute("""
        SELECT model, method, count(*) FILTER (WHERE status = 'ok') AS ok,
               count(*) FILTER (WHERE status = 'failed') AS failed, round(avg(seconds), 3) AS mean_seconds
        FROM evaluations WHERE run_id = ? GROUP BY ALL ORDER BY model, method""", [run_id]).df()


def failures(con, run_id: str) -> pd.DataFrame:
    return con.execute("""SELECT patient_id, model, method, error FROM evaluations
                          WHERE run_id = ? AND status = 'failed' ORDER BY patient_id, model, method""", [run_id]).df()


def cohort_patients(con, run_id: str) -> pd.DataFrame:
    return con.execute("""
        SELECT p.* FROM patients p JOIN runs r ON p.cohort = r.cohort
        WHERE r.run_id = ? AND p.patient_id IN (SELECT patient_id FROM evaluations WHERE run_id = ?)
        ORDER BY p.patient_id""", [run_id, run_id]).df()


def quality_summary(con, run_id: str) -> pd.DataFrame:
    """Cross-validated quality prediction per model, method and region (:mod:`core.quality`)."""
    return con.execute("""SELECT model, method, region, n_patients, r2, pearson_r, score_spearman, regressor, features
                          FROM quality_summary WHERE run_id = ? ORDER BY model, method, region""", [run_id]).df()


def quality_patients(con, run_id: str, method: str, region: str) -> pd.DataFrame:
    """Per-patient predicted vs true Dice and the aggregated uncertainty score of one method and region."""
    return con.execute("""SELECT model, patient_id, dice, predicted_dice, uncertainty_score, flagged FROM quality
                          WHERE run_id = ? AND method = ? AND region = ? ORDER BY model, patient_id""",
                       [run_id, method, region]).df()


def table_counts(con) -> pd.DataFrame:
    names = ["runs", "models", "patients", "evaluations", "metrics", "calibration_bins", "uncertainty_bins", "maps",
             "temperatures", "run_plan", "quality", "quality_summary"]
    # table names come from the fixed list above, never from user input
    return pd.DataFrame({"table": names, "rows": [con.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names]})


def patient_measure(con, run_id: str, model: str, method: str, metric: str = "mean_entropy", region: str = "WT",
                    mask: str = "brain") -> pd.DataFrame:
    """One per-patient value (columns patient_id, value) of one model/method, e.g. mean WT entropy in the brain."""
    return con.execute("""
        SELECT m.patient_id, m.value FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
        WHERE m.run_id = ? AND m.model = ? AND m.method = ? AND m.metric = ? AND m.region = ? AND m.mask = ?
          AND e.status = 'ok'
        ORDER BY m.patient_id""", [run_id, model, method, metric, region, mask]).df()


def _list(x):
    return None if x is None else [str(v) for v in x]


def patient_metrics(con, run_id: str, patient_ids: list[str] | None = None, metrics=None, mask: str | None = None) -> pd.DataFrame:
    """Long per-patient metric rows (model, method, patient_id, region, mask, metric, value) of ok evaluations."""
    patient_ids, metrics = _list(patient_ids), _list(metrics)
    q = """SELECT m.model, m.method, m.patient_id, m.region, m.mask, m.metric, m.value
           FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
           WHERE m.run_id = ? AND e.status = 'ok'
             AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], m.patient_id))
             AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], m.metric))
             AND (?::VARCHAR IS NULL OR m.mask = ? OR m.mask = 'pred')"""
    return con.execute(q, [run_id, patient_ids, patient_ids, metrics, metrics, mask, mask]).df()


def summed_calibration_bins(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain") -> pd.DataFrame:
    """Calibration bins summed over a patient subset: model, method, region, bin, n, sum_prob, sum_true."""
    patient_ids = _list(patient_ids)
    return con.execute("""
        SELECT model, method, region, bin, sum(n) AS n, sum(sum_prob) AS sum_prob, sum(sum_true) AS sum_true
        FROM calibration_bins
        WHERE run_id = ? AND mask = ? AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], patient_id))
        GROUP BY ALL ORDER BY model, method, region, bin""", [run_id, mask, patient_ids, patient_ids]).df()


def summed_uncertainty_bins(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                            measure: str = "entropy") -> pd.DataFrame:
    """Uncertainty histograms summed over a patient subset: model, method, region, bin, n_error, n_correct,
    n_fp, n_fn, n_tp."""
    patient_ids = _list(patient_ids)
    return con.execute("""
        SELECT model, method, region, bin, sum(n_error) AS n_error, sum(n_correct) AS n_correct,
               sum(n_fp) AS n_fp, sum(n_fn) AS n_fn, sum(n_tp) AS n_tp
        FROM uncertainty_bins
        WHERE run_id = ? AND mask = ? AND measure = ?
          AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], patient_id))
        GROUP BY ALL ORDER BY model, method, region, bin""", [run_id, mask, measure, patient_ids, patient_ids]).df()


def cohort_summary(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain") -> pd.DataFrame:
    """Cohort metrics of a patient subset per model, method and region.

    Columns: model, method, region, n_patients, dice_mean, dice_median, dice_nan (patients skipped),
    ece_mean (mean of per-patient ECE), ece_dataset / ace_dataset / mce_dataset (from summed bins),
    auroc_entropy_dataset (pooled voxels, from summed bins), auroc_entropy_mean (mean per-patient),
    mean_entropy (mean of per-patient means in ``mask``).
    """
    patient_ids = _list(patient_ids)
    per = con.execute("""
        SELECT m.model, m.method, m.region,
               count(DISTINCT m.patient_id) AS n_patients,
               avg(value) FILTER (WHERE metric = 'dice') AS dice_mean,
               median(value) FILTER (WHERE metric = 'dice') AS dice_median,
               count(*) FILTER (WHERE metric = 'dice' AND value IS NULL) AS dice_nan,
               avg(value) FILTER (WHERE metric = 'ece' AND mask = ?) AS ece_mean,
               avg(value) FILTER (WHERE metric = 'auroc_entropy' AND mask = ?) AS auroc_entropy_mean,
               count(*) FILTER (WHERE metric = 'auroc_entropy' AND mask = ? AND value IS NULL) AS auroc_nan,
               avg(value) FILTER (WHERE metric = 'mean_entropy' AND mask = ?) AS mean_entropy
        FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
        WHERE m.run_id = ? AND e.status = 'ok'
          AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], m.patient_id))
        GROUP BY ALL ORDER BY m.model, m.method, m.region""",
                      [mask, mask, mask, mask, run_id, patient_ids, patient_ids]).df()
    if per.empty:
        return per
    cal = summed_calibration_bins(con, run_id, patient_ids, mask)
    unc = summed_uncertainty_bins(con, run_id, patient_ids, mask, "entropy")
    extra = []
    for (model, method, region), _ in per.groupby(["model", "method", "region"]):
        c = cal[(cal.model == model) & (cal.method == method) & (cal.region == region)]
        nb = int(c.bin.max()) + 1 if len(c) else M.N_CAL_BINS
        n, sp, st = (np.zeros(max(nb, M.N_CAL_BINS)) for _ in range(3))
        n[c.bin.to_numpy()] = c.n.to_numpy()
        sp[c.bin.to_numpy()] = c.sum_prob.to_numpy()
        st[c.bin.to_numpy()] = c.sum_true.to_numpy()
        calm = M.calibration_from_bins(n, sp, st)
        d = dense_uncertainty_bins(unc[(unc.model == model) & (unc.method == method) & (unc.region == region)])
        extra.append({"model": model, "method": method, "region": region, "ece_dataset": calm["ece"],
                      "ace_dataset": calm["ace"], "mce_dataset": calm["mce"],
                      "auroc_entropy_dataset": M.auroc_from_bins(d["n_error"], d["n_correct"])})
    return per.merge(pd.DataFrame(extra), on=["model", "method", "region"], how="left")


def patient_calibration_bins(con, run_id: str, model: str, method: str, region: str, mask: str = "brain",
                             patient_ids: list[str] | None = None) -> pd.DataFrame:
    """Per-patient reliability bins of one model/method/region: patient_id, bin, n, sum_prob, sum_true."""
    patient_ids = _list(patient_ids)
    return con.execute("""
        SELECT patient_id, bin, n, sum_prob, sum_true FROM calibration_bins
        WHERE run_id = ? AND model = ? AND method = ? AND region = ? AND mask = ?
          AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], patient_id))
        ORDER BY patient_id, bin""", [run_id, model, method, region, mask, patient_ids, patient_ids]).df()


def metric_wide(con, run_id: str, metrics: list[str], mask: str = "brain", patient_ids: list[str] | None = None) -> pd.DataFrame:
    """Per-patient metrics as columns: model, method, patient_id, region, <metric>... ('pred'/'boundary' masks
    are included under their own column names, e.g. mean_entropy@pred)."""
    df = patient_metrics(con, run_id, patient_ids, metrics=metrics)
    if df.empty:
        return df
    keep = (df["mask"] == mask) | (df["mask"].isin(["pred", "boundary"])) | (df.metric.isin(["dice", "hd95"]) & (df["mask"] == "brain"))
    df = df[keep].copy()
    df["col"] = np.where(df["mask"].isin(["pred", "boundary"]), df.metric + "@" + df["mask"], df.metric)
    return df.pivot_table(index=["model", "method", "patient_id", "region"], columns="col", values="value",
                          aggfunc="first", dropna=False).reset_index()


def dense_uncertainty_bins(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Sparse summed bin rows of ONE model/method/region -> dense arrays (length N_UNC_BINS) n_fp, n_fn, n_tp, n_tn."""
    out = {k: np.zeros(M.N_UNC_BINS) for k in ("n_error", "n_correct", "n_fp", "n_fn", "n_tp")}
    b = df.bin.to_numpy()
    for k in out:
        out[k][b] = df[k].to_numpy()
    out["n_tn"] = out["n_correct"] - out["n_tp"]
    return out


def patient_maps(con, run_id: str, patient_id: str) -> pd.DataFrame:
    """NIfTI map files of one patient: model, method, kind, path."""
    return con.execute("""SELECT model, method, kind, path FROM maps WHERE run_id = ? AND patient_id = ?
                          ORDER BY model, method, kind""", [run_id, patient_id]).df()


def patient_source(con, run_id: str, patient_id: str) -> str | None:
    """The patient's image folder as recorded by the batch."""
    row = con.execute("""SELECT p.source FROM patients p JOIN runs r ON p.cohort = r.cohort
                         WHERE r.run_id = ? AND p.patient_id = ?""", [run_id, patient_id]).fetchone()
    return row[0] if row else None
