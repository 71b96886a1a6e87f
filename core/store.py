"""DuckDB results database: schema, transactional writes, and the read queries the pages use.

Every query takes parameters (``?``); no value is ever pasted into SQL text. Tables (names are the
product's data interface, see the README for every column):

runs, models, patients, evaluations, metrics, calibration_bins, uncertainty_bins, maps, temperatures,
run_plan, quality, quality_summary
"""
from __future__ import annotations

import json
import os
import threading
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
CAL_LIST_COLS = ["n", "sum_prob", "sum_true"]


class DatabaseBusy(RuntimeError):
    """The database file is locked by a writer (a batch is running) and stayed locked while we retried."""


def connect(path: str | Path, read_only: bool = False, retries: int = 20, wait_s: float = 0.25):
    """Open the database; a writer creates the schema. Read-only opens retry while a batch holds the lock."""
    path = Path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"no results database at {path}")
    if not read_only:  # this process's shared readers of the file would refuse a writer (other configuration)
        release_readers(path)
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


# ---- shared read-only connections (the app's cached queries) ----------------------------------------------
READER_IDLE_S = 1.0  # a shared reader unused this long is closed, so a batch in another process can write


class _Reader:
    __slots__ = ("con", "users", "last", "memo")

    def __init__(self, con):
        # memo: answers about the file that cannot change while it is open read-only (no writer can open it),
        # e.g. whether a run's derived tables are current (:func:`_use_derived`)
        self.con, self.users, self.last, self.memo = con, 0, time.monotonic(), {}


_READERS: dict[str, _Reader] = {}
_READERS_CV = threading.Condition()
_CLOSER: list[threading.Thread] = []
_TLS = threading.local()  # the shared reader whose cursor this thread is using (for its memo)


def _reader_key(path) -> str:
    return str(Path(path).resolve())


@contextmanager
def shared_reader(path: str | Path):
    """A read-only cursor on the one connection this process keeps open per database file.

    Opening a multi-GB DuckDB file costs 20-30 ms (catalog read); a cursor on an open connection costs
    nothing, so the many cached queries of one page run share a connection instead of opening the file each.
    The connection stays open only while in use and :data:`READER_IDLE_S` after: DuckDB lets no other
    process write while a reader holds the file, and the batch (:func:`writer`, which retries for a minute)
    writes between two patients. A write connection of this process (:func:`connect` with
    ``read_only=False``) first closes it (:func:`release_readers`). Raises :class:`DatabaseBusy` as
    :func:`connect` when a writer holds the file. Each cursor is for one thread (DuckDB cursors are not shared)."""
    key = _reader_key(path)
    with _READERS_CV:
        r = _READERS.get(key)
        if r is None:
            r = _READERS[key] = _Reader(connect(path, read_only=True))
            _start_closer()
        r.users += 1
        try:
            cur = r.con.cursor()
        except BaseException:
            r.users -= 1
            raise
    outer = getattr(_TLS, "reader", None)
    _TLS.reader = r
    try:
        yield cur
    finally:
        _TLS.reader = outer
        cur.close()
        with _READERS_CV:
            r.users -= 1
            r.last = time.monotonic()
            _READERS_CV.notify_all()


def release_readers(path: str | Path | None = None, timeout: float = 60.0) -> None:
    """Close this process's shared reader of ``path`` (every file's when None), waiting up to ``timeout`` s
    for the queries running on it to finish."""
    keys = None if path is None else {_reader_key(path)}
    deadline = time.monotonic() + timeout
    with _READERS_CV:
        for key in [k for k in _READERS if keys is None or k in keys]:
            r = _READERS[key]
            while r.users > 0 and time.monotonic() < deadline:
                _READERS_CV.wait(0.05)
            if r.users == 0 and _READERS.get(key) is r:
                del _READERS[key]
                r.con.close()


def _start_closer() -> None:
    """One daemon thread that closes shared readers idle for :data:`READER_IDLE_S` (called holding the lock)."""
    if _CLOSER and _CLOSER[0].is_alive():
        return

    def loop():
        while True:
            time.sleep(READER_IDLE_S / 4)
            with _READERS_CV:
                now = time.monotonic()
                for key, r in list(_READERS.items()):
                    if r.users == 0 and now - r.last >= READER_IDLE_S:
                        del _READERS[key]
                        r.con.close()

    t = threading.Thread(target=loop, name="tumourqa-reader-closer", daemon=True)
    _CLOSER[:] = [t]
    t.start()


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
    # a database written by an older version may lack the newer tables: count those that exist
    existing = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    names = [n for n in names if n in existing]
    # table names come from the fixed list above, never from user input
    return pd.DataFrame({"table": names, "rows": [con.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names]})


def _use_derived(con, run_id: str, mask: str | None = None, metrics: list[str] | None = None) -> bool:
    """Whether a read can use the run's derived tables (:mod:`core.derived`): they are up to date, the mask is
    one they hold and every requested metric is a column of ``patient_summary``."""
    from . import derived

    if os.environ.get("TUMOURQA_DERIVED", "1") == "0":  # benchmarks' reference: the long tables only
        return False
    if mask is not None and mask not in derived.MASKS:
        return False
    if metrics is not None and (not metrics or not set(metrics) <= set(derived.WIDE_METRICS)):
        return False
    reader = getattr(_TLS, "reader", None)  # inside shared_reader: the file cannot change while it is open
    if reader is None:
        return derived.valid(con, run_id)
    key = ("derived_valid", run_id)
    if key not in reader.memo:
        reader.memo[key] = derived.valid(con, run_id)
    return reader.memo[key]


def patient_measure(con, run_id: str, model: str, method: str, metric: str = "mean_entropy", region: str = "WT",
                    mask: str = "brain") -> pd.DataFrame:
    """One per-patient value (columns patient_id, value) of one model/method, e.g. mean WT entropy in the brain."""
    from .derived import PRED_COLUMNS, WIDE_METRICS

    col = PRED_COLUMNS.get((metric, mask)) or (metric if metric in WIDE_METRICS and mask in ("brain", "roi") else None)
    if col is not None and _use_derived(con, run_id):
        row_mask = mask if mask in ("brain", "roi") else "brain"
        # col is a column name of patient_summary (from derived's constants), never free text
        return con.execute(f"""
            SELECT patient_id, {col} AS value FROM patient_summary
            WHERE run_id = ? AND model = ? AND method = ? AND region = ? AND mask = ?
            QUALIFY count({col}) OVER () > 0  -- a measure the method does not store (MI without samples): no rows
            ORDER BY patient_id""", [run_id, model, method, region, row_mask]).df()
    return con.execute("""
        SELECT m.patient_id, m.value FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
        WHERE m.run_id = ? AND m.model = ? AND m.method = ? AND m.metric = ? AND m.region = ? AND m.mask = ?
          AND e.status = 'ok'
        ORDER BY m.patient_id""", [run_id, model, method, metric, region, mask]).df()


def _list(x):
    return None if x is None else [str(v) for v in x]


# the patient filter of every subset query: a semi-join on the unnested list (a hash join, so a 10,000-patient
# subset costs one pass, where list_contains would compare every row with every listed id)
_IN_PATIENTS = "(?::VARCHAR[] IS NULL OR {col} IN (SELECT unnest(?::VARCHAR[])))"
# metrics the batch stores for one voxel set only, whatever the page's mask
BRAIN_ONLY = {"dice", "hd95", "volume_gt_ml", "volume_pred_ml", "volume_error_ml", "interrater_dice", "rater_dice_mean",
              "vol_sample_mean_ml", "vol_sample_sd_ml", "vol_q05_ml", "vol_q95_ml", "vol_in_90", "vol_crps_ml"}
PRED_ONLY = {"mean_confidence"}


def patient_metrics(con, run_id: str, patient_ids: list[str] | None = None, metrics=None, mask: str | None = None) -> pd.DataFrame:
    """Long per-patient metric rows (model, method, patient_id, region, mask, metric, value) of ok evaluations."""
    patient_ids, metrics = _list(patient_ids), _list(metrics)
    q = f"""SELECT m.model, m.method, m.patient_id, m.region, m.mask, m.metric, m.value
           FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
           WHERE m.run_id = ? AND e.status = 'ok' AND {_IN_PATIENTS.format(col="m.patient_id")}
             AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], m.metric))
             AND (?::VARCHAR IS NULL OR m.mask = ? OR m.mask = 'pred')"""
    return con.execute(q, [run_id, patient_ids, patient_ids, metrics, metrics, mask, mask]).df()


def summed_calibration_bins(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                            methods: list[str] | None = None) -> pd.DataFrame:
    """Calibration bins summed over a patient subset: model, method, region, bin, n, sum_prob, sum_true
    (``methods``: only those methods' rows)."""
    patient_ids, methods = _list(patient_ids), _list(methods)
    if patient_ids is None and _use_derived(con, run_id, mask):
        return con.execute("""
            SELECT model, method, region, bin, n, sum_prob, sum_true FROM cohort_calibration_bins
            WHERE run_id = ? AND mask = ? AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], method))
            ORDER BY model, method, region, bin""", [run_id, mask, methods, methods]).df()
    return con.execute(f"""
        SELECT model, method, region, bin, sum(n) AS n, sum(sum_prob) AS sum_prob, sum(sum_true) AS sum_true
        FROM calibration_bins
        WHERE run_id = ? AND mask = ? AND {_IN_PATIENTS.format(col="patient_id")}
          AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], method))
        GROUP BY ALL ORDER BY model, method, region, bin""",
                       [run_id, mask, patient_ids, patient_ids, methods, methods]).df()


UNC_COUNT_COLS = ["n_error", "n_correct", "n_fp", "n_fn", "n_tp"]


def summed_uncertainty_bins(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                            measure: str = "entropy", methods: list[str] | None = None,
                            columns: list[str] | None = None) -> pd.DataFrame:
    """Uncertainty histograms summed over a patient subset: model, method, region, bin, n_error, n_correct,
    n_fp, n_fn, n_tp (``methods``: only those methods' rows; ``columns``: only those count columns)."""
    patient_ids, methods = _list(patient_ids), _list(methods)
    cols = [c for c in UNC_COUNT_COLS if columns is None or c in columns]  # identifiers of this module only
    if patient_ids is None and _use_derived(con, run_id, mask):
        return con.execute(f"""
            SELECT model, method, region, bin, {", ".join(cols)} FROM cohort_uncertainty_bins
            WHERE run_id = ? AND mask = ? AND measure = ?
              AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], method))
            ORDER BY model, method, region, bin""", [run_id, mask, measure, methods, methods]).df()
    sums = ", ".join(f"sum({c}) AS {c}" for c in cols)
    return con.execute(f"""
        SELECT model, method, region, bin, {sums}
        FROM uncertainty_bins
        WHERE run_id = ? AND mask = ? AND measure = ? AND {_IN_PATIENTS.format(col="patient_id")}
          AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], method))
        GROUP BY ALL ORDER BY model, method, region, bin""",
                       [run_id, mask, measure, patient_ids, patient_ids, methods, methods]).df()


def grouped_bins(con, run_id: str, kind: str, patient_ids: list[str], group_ids: list[int], mask: str = "brain",
                 measure: str = "entropy", methods: list[str] | None = None, columns: list[str] | None = None) -> dict:
    """Bins summed per patient GROUP in one pass over the table, as numpy arrays.

    Returns dict(combos=DataFrame(model, method, region) indexed by combo number, g (R,) int group id,
    combo (R,) int, bin (R,) int, counts (R, k) float64) with the count columns of ``kind`` ('calibration':
    n, sum_prob, sum_true; 'uncertainty' (of ``measure``): n_error, n_correct, n_fp, n_fn, n_tp). Patients not
    listed are left out; ``methods`` restricts the methods read.

    The app groups patients by where they fall between the quantiles of the sidebar's measure, so every
    position of the quantile filter is a union of groups: summing the groups' rows gives the subset's bins
    exactly, without touching the per-patient rows again (see :mod:`dashboard.state`). ``columns`` keeps only
    those count columns."""
    table, cols, extra, extra_args = {
        "calibration": ("calibration_bins", ["n", "sum_prob", "sum_true"], "", []),
        "uncertainty": ("uncertainty_bins", ["n_error", "n_correct", "n_fp", "n_fn", "n_tp"], " AND t.measure = ?",
                        [measure]),
    }[kind]
    if columns is not None:  # only these count columns (a page that needs n_error / n_correct reads half the lists)
        cols = [c for c in cols if c in columns]
    methods = _list(methods)
    from . import derived

    if (kind == "calibration" or measure in derived.LIST_MEASURES) and _use_derived(con, run_id, mask):
        return _grouped_lists(con, run_id, kind, patient_ids, group_ids, mask, measure, methods, cols)
    combos = con.execute(f"""
        SELECT DISTINCT model, method, region FROM {table} WHERE run_id = ? AND mask = ?
          AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], method)) ORDER BY ALL""",
                         [run_id, mask, methods, methods]).df()
    sums = ", ".join(f"sum(t.{c})::DOUBLE AS {c}" for c in cols)
    res = con.execute(f"""
        WITH grp AS (SELECT unnest(?::VARCHAR[]) AS patient_id, unnest(?::INTEGER[]) AS g),
             cmb AS (SELECT unnest(?::VARCHAR[]) AS model, unnest(?::VARCHAR[]) AS method,
                            unnest(?::VARCHAR[]) AS region, generate_subscripts(?::VARCHAR[], 1) - 1 AS combo)
        SELECT grp.g, cmb.combo, t.bin, {sums}
        FROM {table} t JOIN grp USING (patient_id) JOIN cmb USING (model, method, region)
        WHERE t.run_id = ? AND t.mask = ?{extra}
        GROUP BY ALL""", [_list(patient_ids), [int(g) for g in group_ids], combos.model.tolist(), combos.method.tolist(),
                          combos.region.tolist(), combos.model.tolist(), run_id, mask] + extra_args).fetchnumpy()
    return {"combos": combos, "g": np.asarray(res["g"], np.int64), "combo": np.asarray(res["combo"], np.int64),
            "bin": np.asarray(res["bin"], np.int64), "columns": cols,
            "counts": np.stack([np.asarray(res[c], np.float64) for c in cols], axis=1) if len(res["g"])
            else np.zeros((0, len(cols)))}


def _list_rows(con, run_id: str, kind: str, mask: str, measure: str, methods: list[str] | None, patient_ids: list[str],
               cols: list[str], combos: pd.DataFrame | None = None):
    """Rows of ``patient_calibration`` / ``patient_uncertainty`` (:mod:`core.derived`) of the listed patients as
    (patient index into ``patient_ids`` (R,), combo index into ``combos`` (R,), combos, entry row (E,),
    {bins, <cols>: (E,)}); ``combos`` (model, method, region) defaults to every combo present, sorted."""
    from .derived import list_arrays

    table, extra, extra_args = ("patient_calibration", "", []) if kind == "calibration" else \
        ("patient_uncertainty", " AND t.measure = ?", [measure])
    if combos is None:
        combos = con.execute(f"""
            SELECT DISTINCT model, method, region FROM {table} t WHERE t.run_id = ? AND t.mask = ?{extra}
              AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], t.method)) ORDER BY ALL""",
                             [run_id, mask] + extra_args + [methods, methods]).df()
    pids = _list(patient_ids)
    lists = ", ".join(f"t.{c}" for c in ["bins"] + cols)
    tbl = con.sql(f"""
        WITH pat AS (SELECT unnest(?::VARCHAR[]) AS patient_id, generate_subscripts(?::VARCHAR[], 1) - 1 AS patient),
             cmb AS (SELECT unnest(?::VARCHAR[]) AS model, unnest(?::VARCHAR[]) AS method,
                            unnest(?::VARCHAR[]) AS region, generate_subscripts(?::VARCHAR[], 1) - 1 AS combo)
        SELECT pat.patient, cmb.combo, {lists}
        FROM {table} t JOIN pat USING (patient_id) JOIN cmb USING (model, method, region)
        WHERE t.run_id = ? AND t.mask = ?{extra}""",
                  params=[pids, pids, combos.model.tolist(), combos.method.tolist(), combos.region.tolist(),
                          combos.model.tolist(), run_id, mask] + extra_args).to_arrow_table()
    if not tbl.num_rows:
        z = np.zeros(0, np.int64)
        return z, z, combos, z, {c: np.zeros(0) for c in ["bins"] + cols}
    row, vals = list_arrays(tbl, ["bins"] + cols)
    patient = tbl.column("patient").to_numpy().astype(np.int64)
    combo = tbl.column("combo").to_numpy().astype(np.int64)
    return patient, combo, combos, row, vals


def _grouped_lists(con, run_id, kind, patient_ids, group_ids, mask, measure, methods, cols) -> dict:
    """:func:`grouped_bins` from the derived list tables: the rows are read without a string per bin and
    summed per (group, combo, bin) with numpy."""
    patient, combo, combos, row, vals = _list_rows(con, run_id, kind, mask, measure, methods, patient_ids, cols)
    gid = np.asarray([int(g) for g in group_ids], np.int64)
    if not len(row):
        return {"combos": combos, "g": np.zeros(0, np.int64), "combo": np.zeros(0, np.int64),
                "bin": np.zeros(0, np.int64), "columns": cols, "counts": np.zeros((0, len(cols)))}
    ug, ginv = np.unique(gid[patient], return_inverse=True)
    bins = vals["bins"].astype(np.int64)
    nb = int(bins.max()) + 1
    C = len(combos)
    key = (ginv[row] * C + combo[row]) * nb + bins
    size = len(ug) * C * nb
    present = np.bincount(key, minlength=size) > 0
    idx = np.flatnonzero(present)
    counts = np.stack([np.bincount(key, vals[c].astype(np.float64), minlength=size)[idx] for c in cols], axis=1)
    return {"combos": combos, "g": ug[idx // (C * nb)], "combo": (idx // nb) % C, "bin": idx % nb, "columns": cols,
            "counts": counts}


SUMMARY_METRICS = ["dice", "ece", "auroc_entropy", "mean_entropy"]


def cohort_summary(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain") -> pd.DataFrame:
    """Cohort metrics of a patient subset per model, method and region (:func:`core.summaries.cohort_summary`
    on this subset's per-patient metrics and summed bins).

    Columns: model, method, region, n_patients, dice_mean, dice_median, dice_nan (patients skipped),
    ece_mean (mean of per-patient ECE), ece_dataset / ace_dataset / mce_dataset (from summed bins),
    auroc_entropy_dataset (pooled voxels, from summed bins), auroc_entropy_mean (mean per-patient),
    auroc_nan, mean_entropy (mean of per-patient means in ``mask``).
    """
    from .summaries import cohort_summary as summarise

    wide = metric_wide(con, run_id, SUMMARY_METRICS, mask=mask, patient_ids=patient_ids)
    return summarise(wide, summed_calibration_bins(con, run_id, patient_ids, mask),
                     summed_uncertainty_bins(con, run_id, patient_ids, mask, "entropy"))


def patient_calibration_bins(con, run_id: str, model: str, method: str, region: str, mask: str = "brain",
                             patient_ids: list[str] | None = None) -> pd.DataFrame:
    """Per-patient reliability bins of one model/method/region: patient_id, bin, n, sum_prob, sum_true."""
    patient_ids = _list(patient_ids)
    if _use_derived(con, run_id, mask):
        from .derived import list_arrays

        tbl = con.sql(f"""
            SELECT patient_id, bins, n, sum_prob, sum_true FROM patient_calibration
            WHERE run_id = ? AND model = ? AND method = ? AND region = ? AND mask = ?
              AND {_IN_PATIENTS.format(col="patient_id")} ORDER BY patient_id""",
                      params=[run_id, model, method, region, mask, patient_ids, patient_ids]).to_arrow_table()
        if not tbl.num_rows:
            return pd.DataFrame({"patient_id": pd.Series(dtype=object), "bin": pd.Series(dtype=np.int32),
                                 "n": pd.Series(dtype=np.int64), "sum_prob": pd.Series(dtype=float),
                                 "sum_true": pd.Series(dtype=float)})
        row, v = list_arrays(tbl, ["bins"] + CAL_LIST_COLS)
        pid = np.asarray(tbl.column("patient_id").to_pylist(), dtype=object)
        return pd.DataFrame({"patient_id": pid[row], "bin": v["bins"].astype(np.int32), "n": v["n"].astype(np.int64),
                             "sum_prob": v["sum_prob"], "sum_true": v["sum_true"]})
    return con.execute(f"""
        SELECT patient_id, bin, n, sum_prob, sum_true FROM calibration_bins
        WHERE run_id = ? AND model = ? AND method = ? AND region = ? AND mask = ?
          AND {_IN_PATIENTS.format(col="patient_id")}
        ORDER BY patient_id, bin""", [run_id, model, method, region, mask, patient_ids, patient_ids]).df()


def calibration_dense(con, run_id: str, method: str, region: str, mask: str = "brain",
                      n_bins: int = M.N_CAL_BINS) -> dict[str, dict[str, np.ndarray]]:
    """Per-patient calibration bins of every model of one method/region as dense arrays, in one read:
    {model: {patient_id (P,) sorted, n, sum_prob, sum_true (P, n_bins) float64}} (zeros in empty bins)."""
    if _use_derived(con, run_id, mask):
        from .derived import list_arrays

        tbl = con.sql("""SELECT model, patient_id, bins, n, sum_prob, sum_true FROM patient_calibration
                         WHERE run_id = ? AND method = ? AND region = ? AND mask = ?""",
                      params=[run_id, method, region, mask]).to_arrow_table()
        if tbl.num_rows:
            row, v = list_arrays(tbl, ["bins"] + CAL_LIST_COLS)
            model = np.asarray(tbl.column("model").to_pylist(), dtype=object)[row]
            pid = np.asarray(tbl.column("patient_id").to_pylist(), dtype=object)[row]
            long = {"model": model, "patient_id": pid, "bin": v["bins"], **{c: v[c] for c in CAL_LIST_COLS}}
        else:
            long = None
    else:
        df = con.execute("""SELECT model, patient_id, bin, n, sum_prob, sum_true FROM calibration_bins
                            WHERE run_id = ? AND method = ? AND region = ? AND mask = ?""",
                         [run_id, method, region, mask]).df()
        long = {c: df[c].to_numpy() for c in df.columns} if len(df) else None
    out = {}
    if long is None:
        return out
    models = np.asarray(long["model"], dtype=object)
    for m in sorted(set(models)):
        sel = models == m
        ids, r = np.unique(np.asarray(long["patient_id"], dtype=object)[sel].astype(str), return_inverse=True)
        flat = r * n_bins + np.asarray(long["bin"], np.int64)[sel]
        size = len(ids) * n_bins
        out[m] = {"patient_id": ids.astype(object)}
        for c in CAL_LIST_COLS:
            out[m][c] = np.bincount(flat, np.asarray(long[c], np.float64)[sel], minlength=size).reshape(len(ids), n_bins)
    return out


def calibration_bins_subset(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                            methods: list[str] | None = None) -> pd.DataFrame:
    """Per-patient calibration bins of ok evaluations for a patient subset (and optionally some methods):
    model, method, region, patient_id, bin, n, sum_prob, sum_true. Input of the bootstrap intervals of
    dataset-level ECE (:func:`core.stats.leaderboard`)."""
    patient_ids, methods = _list(patient_ids), _list(methods)
    return con.execute(f"""
        SELECT c.model, c.method, c.region, c.patient_id, c.bin, c.n, c.sum_prob, c.sum_true
        FROM calibration_bins c JOIN evaluations e USING (run_id, model, method, patient_id)
        WHERE c.run_id = ? AND c.mask = ? AND e.status = 'ok'
          AND {_IN_PATIENTS.format(col="c.patient_id")}
          AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], c.method))""",
                       [run_id, mask, patient_ids, patient_ids, methods, methods]).df()


def cohort_leaderboard(con, run_id: str, mask: str, methods: list[str], models: list[str],
                       B: int = 1000) -> pd.DataFrame | None:
    """The whole run's leaderboard rows (derived table ``cohort_leaderboard``, written by the batch) of these
    methods and models, sorted by model, method, region, columns :data:`core.stats.LEADERBOARD_COLUMNS`; None
    when the derived tables are stale or older than that table (the caller bootstraps then)."""
    from . import derived, stats

    if not _use_derived(con, run_id, mask) or "cohort_leaderboard" not in derived._tables(con):
        return None
    cols = ", ".join(stats.LEADERBOARD_COLUMNS)  # fixed identifiers of core.stats, never input
    df = con.execute(f"""SELECT {cols} FROM cohort_leaderboard
                         WHERE run_id = ? AND mask = ? AND B = ? AND seed = 0
                           AND list_contains(?::VARCHAR[], method) AND list_contains(?::VARCHAR[], model)
                         ORDER BY model, method, region""",
                     [run_id, mask, int(B), _list(methods), _list(models)]).df()
    return df if len(df) else None


def calibration_bin_arrays(con, run_id: str, mask: str, combos: pd.DataFrame, patient_ids: list[str]) -> dict:
    """Per-patient calibration bins of the listed (model, method, region) combos and patients as integer-coded
    numpy arrays (the input of the bootstrap ECE in :func:`core.stats.leaderboard`): patient (index into
    ``patient_ids``), combo (index into ``combos``), bin, d = sum_prob - sum_true, n."""
    if _use_derived(con, run_id, mask):
        patient, combo, _, row, v = _list_rows(con, run_id, "calibration", mask, "", None, patient_ids, CAL_LIST_COLS,
                                               combos=combos)
        return {"patient": patient[row], "combo": combo[row], "bin": v["bins"].astype(np.int64),
                "d": v["sum_prob"] - v["sum_true"], "n": v["n"].astype(np.float64)}
    res = con.execute("""
        WITH pat AS (SELECT unnest(?::VARCHAR[]) AS patient_id, generate_subscripts(?::VARCHAR[], 1) - 1 AS patient),
             cmb AS (SELECT unnest(?::VARCHAR[]) AS model, unnest(?::VARCHAR[]) AS method,
                            unnest(?::VARCHAR[]) AS region, generate_subscripts(?::VARCHAR[], 1) - 1 AS combo)
        SELECT pat.patient, cmb.combo, c.bin, c.sum_prob - c.sum_true AS d, c.n::DOUBLE AS n
        FROM calibration_bins c JOIN pat USING (patient_id) JOIN cmb USING (model, method, region)
        WHERE c.run_id = ? AND c.mask = ?""",
                      [_list(patient_ids), _list(patient_ids), combos.model.tolist(), combos.method.tolist(),
                       combos.region.tolist(), combos.model.tolist(), run_id, mask]).fetchnumpy()
    return {k: np.asarray(res[k]) for k in ("patient", "combo", "bin", "d", "n")}


def metric_wide(con, run_id: str, metrics: list[str], mask: str = "brain", patient_ids: list[str] | None = None,
                method: str | None = None, derived: bool = True) -> pd.DataFrame:
    """Per-patient metrics as columns: model, method, patient_id, region, <metric>..., one row per ok
    evaluation and region. Each metric is taken in ``mask``, except those stored for one voxel set only
    (:data:`BRAIN_ONLY`: Dice, HD95, volumes -> 'brain'; :data:`PRED_ONLY` -> 'pred'). NULL (NaN) where a
    metric is undefined. Pivoted in SQL (one conditional aggregate per metric, names passed as parameters)."""
    metrics = [str(m) for m in metrics]
    if derived and _use_derived(con, run_id, mask, metrics):
        from .derived import WIDE_METRICS

        # column names: members of derived.WIDE_METRICS (checked by _use_derived), never free text
        cols = ", ".join(WIDE_METRICS[WIDE_METRICS.index(m)] for m in metrics)
        return con.execute(f"""
            SELECT model, method, patient_id, region, {cols} FROM patient_summary
            WHERE run_id = ? AND mask = ? AND (?::VARCHAR IS NULL OR method = ?)
              AND {_IN_PATIENTS.format(col="patient_id")}
            ORDER BY model, method, patient_id, region""",
                           [run_id, mask, method, method, _list(patient_ids), _list(patient_ids)]).df()
    masks = ["brain" if m in BRAIN_ONLY else "pred" if m in PRED_ONLY else mask for m in metrics]
    cols = ", ".join(f"max(m.value) FILTER (WHERE m.metric = ? AND m.mask = ?) AS c{i}" for i in range(len(metrics)))
    params = [v for pair in zip(metrics, masks) for v in pair]
    patient_ids = _list(patient_ids)
    df = con.execute(f"""
        SELECT m.model, m.method, m.patient_id, m.region{", " + cols if cols else ""}
        FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
        WHERE m.run_id = ? AND e.status = 'ok' AND list_contains(?::VARCHAR[], m.metric)
          AND (?::VARCHAR IS NULL OR m.method = ?) AND {_IN_PATIENTS.format(col="m.patient_id")}
        GROUP BY ALL ORDER BY m.model, m.method, m.patient_id, m.region""",
                     params + [run_id, metrics, method, method, patient_ids, patient_ids]).df()
    return df.rename(columns={f"c{i}": m for i, m in enumerate(metrics)})


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
