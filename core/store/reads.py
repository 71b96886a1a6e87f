"""The read queries of the pages and the statistics (parameters only; identifiers from :mod:`core.store.schema`)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from core.analysis import stats
from core.analysis import summaries
from core.analysis import ueo
from core.metrics.binning import dense_bins, sum_by_bin
from core.metrics.calibration import N_CAL_BINS
from core.metrics.uncertainty import N_UNC_BINS
from core.store.connection import _TLS
from core.store.freshness import list_arrays, table_names, valid
from core.store.schema import LEGACY_TS_METHOD, UEO_PATIENT_COLUMNS, UEO_SUMMARY_COLUMNS, VIEWS
from core.store.schema import BRAIN_ONLY, CAL_LIST_COLS, LIST_MEASURES, MASKS, PRED_COLUMNS, PRED_ONLY, SUMMARY_METRICS, UNC_COUNT_COLS, WIDE_METRICS



def read_run_plan(con, run_id: str) -> dict:
    """The stored plan entries of a run, ``{model: {"precision": {...}, "mc_batch", "chunk_trial"}}``.

    The shape :func:`core.store.write_run_plan` takes, without temperatures (:func:`read_temperatures`);
    empty when the run has no plan.
    """
    rows = con.execute("""SELECT model, precision_requested, precision, precision_reason, precision_checks,
                                 check_patient, mc_batch, chunk_trial, device
                          FROM run_plan WHERE run_id = ?""", [run_id]).fetchall()
    return {m: {"precision": {"requested": req, "chosen": ch, "reason": why, "checks": json.loads(checks or "[]"),
                              "patient_id": pid, "device": dev},
                "mc_batch": int(mb), "chunk_trial": json.loads(trial) if trial else None}
            for m, req, ch, why, checks, pid, mb, trial, dev in rows}


def run_plan(con, run_id: str) -> pd.DataFrame:
    """The run's plan as a table: model, precision_requested, precision, precision_reason, precision_checks
    (JSON), check_patient, mc_batch, device; one row per model, sorted."""
    return con.execute("""SELECT model, precision_requested, precision, precision_reason, precision_checks,
                                 check_patient, mc_batch, device
                          FROM run_plan WHERE run_id = ? ORDER BY model""", [run_id]).df()


def _temperature_method(con) -> str:
    """The SQL of the temperatures' method: the column, or (a database not yet opened by a writer of this
    version) the one method its rows were fitted for."""
    cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'temperatures' AND table_schema = current_schema()").fetchall()}
    return "method" if "method" in cols else f"'{LEGACY_TS_METHOD}'"


def read_temperatures(con, run_id: str, model: str, method: str) -> dict[str, float | None]:
    """Region -> stored temperature of one model's ``+ts`` method (None: the fit was undefined); empty when none
    was fitted for that method."""
    rows = con.execute(f"SELECT region, temperature FROM temperatures WHERE run_id = ? AND model = ? "
                       f"AND {_temperature_method(con)} = ?", [run_id, model, method]).fetchall()
    return {r: t for r, t in rows}


def run_temperatures(con, run_id: str) -> pd.DataFrame:
    """The run's fitted temperatures: model, method (the ``+ts`` method they were fitted for, on its own
    output), region, temperature (NaN: undefined fit), n_voxels, n_positive, nll_before, nll_after (nats, mean over
    the fitting voxels at T = 1 and at the fitted T); sorted by model, method and region, empty when the run
    fitted none."""
    return con.execute(f"""SELECT model, {_temperature_method(con)} AS method, region, temperature, n_voxels,
                                  n_positive, nll_before, nll_after
                           FROM temperatures WHERE run_id = ? ORDER BY model, method, region""", [run_id]).df()


# ------------------------------------------------------------------------------------------- reads
def list_runs(con) -> pd.DataFrame:
    """Every run: run_id, created_at, cohort, device, code_version, ok and failed (evaluation counts), patients
    (distinct evaluated patients); newest first."""
    return con.execute("""
        SELECT r.run_id, r.created_at, r.cohort, r.device, r.code_version,
               count(*) FILTER (WHERE e.status = 'ok') AS ok,
               count(*) FILTER (WHERE e.status = 'failed') AS failed,
               count(DISTINCT e.patient_id) AS patients
        FROM runs r LEFT JOIN evaluations e USING (run_id)
        GROUP BY ALL ORDER BY r.created_at DESC""").df()


def run_config(con, run_id: str) -> dict:
    """The run's study configuration as written at its start (``runs.config`` JSON); ``{}`` for an unknown run."""
    row = con.execute("SELECT config FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


def run_models(con, run_id: str) -> pd.DataFrame:
    """The run's models: model, checkpoint (path), card (JSON text); sorted by model."""
    return con.execute("SELECT model, checkpoint, card FROM models WHERE run_id = ? ORDER BY model", [run_id]).df()


def run_methods(con, run_id: str) -> list[str]:
    """The methods with at least one evaluation (ok or failed) in the run, sorted."""
    rows = con.execute("SELECT DISTINCT method FROM evaluations WHERE run_id = ? ORDER BY method", [run_id]).fetchall()
    return [r[0] for r in rows]


def evaluation_status(con, run_id: str) -> pd.DataFrame:
    """Per model and method of the run: ok and failed evaluation counts and mean_seconds (per evaluation)."""
    return con.execute("""
        SELECT model, method, count(*) FILTER (WHERE status = 'ok') AS ok,
               count(*) FILTER (WHERE status = 'failed') AS failed, round(avg(seconds), 3) AS mean_seconds
        FROM evaluations WHERE run_id = ? GROUP BY ALL ORDER BY model, method""", [run_id]).df()


def failures(con, run_id: str) -> pd.DataFrame:
    """The run's failed evaluations: patient_id, model, method, error (message); sorted by patient, model, method."""
    return con.execute("""SELECT patient_id, model, method, error FROM evaluations
                          WHERE run_id = ? AND status = 'failed' ORDER BY patient_id, model, method""", [run_id]).df()


def cohort_patients(con, run_id: str) -> pd.DataFrame:
    """The ``patients`` rows (every column) of the run's cohort that the run evaluated, sorted by patient id, with
    ``kind``: the demo's case kind from ``meta`` (empty string for other cohorts)."""
    return con.execute("""
        SELECT p.*, coalesce(json_extract_string(p.meta, '$.kind'), '') AS kind
        FROM patients p JOIN runs r ON p.cohort = r.cohort
        WHERE r.run_id = ? AND p.patient_id IN (SELECT patient_id FROM evaluations WHERE run_id = ?)
        ORDER BY p.patient_id""", [run_id, run_id]).df()


def quality_summary(con, run_id: str) -> pd.DataFrame:
    """Cross-validated quality prediction per model, method and region (:mod:`core.analysis.quality`)."""
    return con.execute("""SELECT model, method, region, n_patients, r2, pearson_r, score_spearman, regressor, features
                          FROM quality_summary WHERE run_id = ? ORDER BY model, method, region""", [run_id]).df()


def quality_patients(con, run_id: str, method: str, region: str) -> pd.DataFrame:
    """Per-patient predicted vs true Dice and the aggregated uncertainty score of one method and region."""
    return con.execute("""SELECT model, patient_id, dice, predicted_dice, uncertainty_score, flagged FROM quality
                          WHERE run_id = ? AND method = ? AND region = ? ORDER BY model, patient_id""",
                       [run_id, method, region]).df()


def table_counts(con) -> pd.DataFrame:
    """Row counts (columns table, rows) of the database's long tables; tables an older database lacks are left out."""
    names = ["runs", "models", "patients", "evaluations", "metrics", "calibration_bins", "uncertainty_bins", "maps",
             "temperatures", "run_plan", "quality", "quality_summary"]
    # a database written by an older version may lack the newer tables: count those that exist
    existing = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    views = {VIEWS[t]: t for t in VIEWS if t in existing}  # the bin views: their bins counted in the lists
    existing |= set(views)
    names = [n for n in names if n in existing]
    # table names come from the fixed list above and core.store.schema, never from user input
    count = {n: f"SELECT coalesce(sum(len(bins)), 0) FROM {views[n]}" if n in views else f"SELECT count(*) FROM {n}"
             for n in names}
    return pd.DataFrame({"table": names, "rows": [int(con.execute(count[n]).fetchone()[0]) for n in names]})


def _has_lists(con, kind: str) -> bool:
    """Whether the database stores ``kind``'s bins ('calibration' / 'uncertainty') as lists (``calibration_hist`` /
    ``uncertainty_hist``), read through Arrow without a string per bin; a database of the older one-row-per-bin
    layout (or the benchmarks' reference, ``TUMOURQA_DERIVED=0``) is read through SQL sums."""
    if os.environ.get("TUMOURQA_DERIVED", "1") == "0":
        return False
    return f"{kind}_hist" in table_names(con)


def _use_derived(con, run_id: str, mask: str | None = None, metrics: list[str] | None = None) -> bool:
    """Whether a read can use the run's derived tables (:mod:`core.store.derived`): they are up to date, the mask is
    one they hold and every requested metric is a column of ``patient_summary``."""

    if os.environ.get("TUMOURQA_DERIVED", "1") == "0":  # benchmarks' reference: the long tables only
        return False
    if mask is not None and mask not in MASKS:
        return False
    if metrics is not None and (not metrics or not set(metrics) <= set(WIDE_METRICS)):
        return False
    reader = getattr(_TLS, "reader", None)  # inside shared_reader: the file cannot change while it is open
    if reader is None:
        return valid(con, run_id)
    key = ("derived_valid", run_id)
    if key not in reader.memo:
        reader.memo[key] = valid(con, run_id)
    return reader.memo[key]


def patient_measure(con, run_id: str, model: str, method: str, metric: str = "mean_entropy", region: str = "WT",
                    mask: str = "brain") -> pd.DataFrame:
    """One per-patient value of one model/method, e.g. mean WT entropy in the brain.

    Read from ``patient_summary`` when the derived tables are current, else from ``metrics`` (ok evaluations).

    Args:
        con: a connection.
        run_id, model, method: the evaluations.
        metric: the stored metric name.
        region: 'WT', 'TC' or 'ET'.
        mask: the voxel set the metric is stored in ('brain', 'roi' or 'pred').

    Returns:
        patient_id, value (NaN / NULL where undefined), sorted by patient id; no rows when no patient has a value:
        the method does not store the measure (e.g. MI without samples), or it is undefined for every patient (e.g.
        a mean over the predicted region of a model that predicts nothing). Both paths agree on this (the derived
        table keeps an undefined value as NULL, the long table as NaN).
    """

    col = PRED_COLUMNS.get((metric, mask)) or (metric if metric in WIDE_METRICS and mask in ("brain", "roi") else None)
    if col is not None and _use_derived(con, run_id):
        row_mask = mask if mask in ("brain", "roi") else "brain"
        # col is a column name of patient_summary (from derived's constants), never free text
        return con.execute(f"""
            SELECT patient_id, {col} AS value FROM patient_summary
            WHERE run_id = ? AND model = ? AND method = ? AND region = ? AND mask = ?
            QUALIFY count({col}) FILTER (WHERE NOT isnan({col})) OVER () > 0  -- no patient with a value: no rows
            ORDER BY patient_id""", [run_id, model, method, region, row_mask]).df()
    return con.execute("""
        SELECT m.patient_id, m.value FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
        WHERE m.run_id = ? AND m.model = ? AND m.method = ? AND m.metric = ? AND m.region = ? AND m.mask = ?
          AND e.status = 'ok'
        QUALIFY count(m.value) FILTER (WHERE NOT isnan(m.value)) OVER () > 0  -- as above: no patient with a value
        ORDER BY m.patient_id""", [run_id, model, method, metric, region, mask]).df()


def _list(x):
    return None if x is None else [str(v) for v in x]


# the patient filter of every subset query: a semi-join on the unnested list (a hash join, so a 10,000-patient
# subset costs one pass, where list_contains would compare every row with every listed id)
_IN_PATIENTS = "(?::VARCHAR[] IS NULL OR {col} IN (SELECT unnest(?::VARCHAR[])))"


def patient_metrics(con, run_id: str, patient_ids: list[str] | None = None, metrics=None, mask: str | None = None) -> pd.DataFrame:
    """Long per-patient metric rows of ok evaluations.

    Args:
        con: a connection.
        run_id: the run.
        patient_ids: only these patients (None: all).
        metrics: only these metric names (None: all).
        mask: only rows of this voxel set and of 'pred' (None: every mask).

    Returns:
        model, method, patient_id, region, mask, metric, value (NaN where undefined), in no particular order.
    """
    patient_ids, metrics = _list(patient_ids), _list(metrics)
    q = f"""SELECT m.model, m.method, m.patient_id, m.region, m.mask, m.metric, m.value
           FROM metrics m JOIN evaluations e USING (run_id, model, method, patient_id)
           WHERE m.run_id = ? AND e.status = 'ok' AND {_IN_PATIENTS.format(col="m.patient_id")}
             AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], m.metric))
             AND (?::VARCHAR IS NULL OR m.mask = ? OR m.mask = 'pred')"""
    return con.execute(q, [run_id, patient_ids, patient_ids, metrics, metrics, mask, mask]).df()


def summed_calibration_bins(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                            methods: list[str] | None = None) -> pd.DataFrame:
    """Calibration bins summed over a patient subset.

    The whole run (no ``patient_ids``) reads the cohort totals of the derived tables when they are current.

    Args:
        con: a connection.
        run_id: the run.
        patient_ids: the subset (None: every patient of the run).
        mask: the voxel set.
        methods: only those methods' rows (None: all).

    Returns:
        model, method, region, bin, n, sum_prob, sum_true (one row per non-empty bin), sorted by model,
        method, region, bin.
    """
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


def summed_uncertainty_bins(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                            measure: str = "entropy", methods: list[str] | None = None,
                            columns: list[str] | None = None) -> pd.DataFrame:
    """Uncertainty histograms summed over a patient subset.

    The whole run (no ``patient_ids``) reads the cohort totals of the derived tables when they are current.

    Args:
        con: a connection.
        run_id: the run.
        patient_ids: the subset (None: every patient of the run).
        mask: the voxel set.
        measure: the uncertainty measure of the histograms (e.g. 'entropy').
        methods: only those methods' rows (None: all).
        columns: only those count columns (None: all of n_error, n_correct, n_fp, n_fn, n_tp).

    Returns:
        model, method, region, bin and the count columns (voxels), sorted by model, method, region, bin.
    """
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


def threshold_cubes(con, run_id: str, mask: str = "brain", methods: list[str] | None = None,
                    models: list[str] | None = None, measure: str = "entropy") -> dict:
    """Every patient's uncertainty counts per threshold group (:func:`core.analysis.ueo.threshold_groups`: the 20
    intervals between t = 0.05, ..., 0.95), one dense cube per (model, method, region), in one pass.

    Read from ``uncertainty_hist`` (the stored lists, through Arrow, summed with numpy); a database of the
    one-row-per-bin layout is summed in SQL.

    Args:
        con: a connection.
        run_id: the run.
        mask: the voxel set.
        methods: only those methods (None: all).
        models: only those models (None: all).
        measure: the uncertainty of the bins (``entropy``).

    Returns:
        {(model, method, region): (patient ids (P,) sorted object array, counts (P, T + 1, 5) float64 in the order
        of :data:`core.analysis.ueo.COUNTS`)}; a patient appears where it has a histogram.
    """
    methods, models = _list(methods), _list(models)
    T = len(ueo.threshold_bins())
    where = """run_id = ? AND mask = ? AND measure = ?
               AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], method))
               AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], model))"""
    params = [run_id, mask, measure, methods, methods, models, models]
    if "uncertainty_hist" in table_names(con):
        tbl = con.sql(f"""SELECT model, method, region, patient_id, bins, n_correct, n_fp, n_fn, n_tp
                          FROM uncertainty_hist WHERE {where}""", params=params).to_arrow_table()
        keys = tbl.select(["model", "method", "region", "patient_id"]).to_pandas()
        row, v = list_arrays(tbl, ["bins", "n_correct", "n_fp", "n_fn", "n_tp"])
        lut = ueo.threshold_groups(np.arange(N_UNC_BINS))  # bin -> threshold group, looked up (not searched)
        flat = row * (T + 1) + lut[np.asarray(v["bins"], np.int64)]
        size = len(keys) * (T + 1)
        per = {c: np.bincount(flat, np.asarray(v[c], np.float64), minlength=size) for c in ("n_correct", "n_fp", "n_fn", "n_tp")}
        grouped = np.stack([per["n_fp"] + per["n_fn"], per["n_correct"], per["n_fp"], per["n_fn"], per["n_tp"]],
                           axis=-1).reshape(len(keys), T + 1, 5)
    else:  # legacy layout: one row per bin
        group = " + ".join(f"(bin >= {int(b)})::INTEGER" for b in ueo.threshold_bins())  # constants, not input
        rows = con.execute(f"""
            SELECT model, method, region, patient_id, {group} AS "group",
                   {", ".join(f"sum(coalesce({c}, 0))::DOUBLE AS {c}" for c in ueo.COUNTS)}
            FROM uncertainty_bins WHERE {where} GROUP BY ALL""", params).df()
        keys = rows[["model", "method", "region", "patient_id"]].drop_duplicates().reset_index(drop=True)
        code = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(rows[keys.columns]))
        grouped = dense_bins(code, rows["group"].to_numpy(np.int64), rows[list(ueo.COUNTS)].to_numpy(np.float64),
                             len(keys), T + 1)
    out, shared = {}, []
    for combo, idx in keys.groupby(["model", "method", "region"], sort=True).indices.items():
        pids = keys.patient_id.to_numpy(object)[idx]
        order = np.argsort(pids, kind="stable")
        pids = pids[order]
        # combos with the same patients share one id array (a subset's rows are then looked up once for all)
        same = next((q for q in shared if len(q) == len(pids) and (q == pids).all()), None)
        if same is None:
            shared.append(pids)
        else:
            pids = same
        out[tuple(combo)] = (pids, grouped[idx[order]])
    return out


def cohort_threshold_ueo(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                         methods: list[str] | None = None, models: list[str] | None = None,
                         measure: str = "entropy") -> tuple[pd.DataFrame, pd.DataFrame]:
    """U-E overlap and BnF at one threshold per (model, method, region), chosen on the patients given
    (:mod:`core.analysis.ueo`: the threshold of the highest mean per-patient U-E, and BnF's own), beside the
    per-patient oracle (``ueo_best``), from :func:`threshold_cubes`.

    Args:
        con: a connection.
        run_id: the run.
        patient_ids: the cohort the threshold is chosen on and averaged over (None: every patient of the run).
        mask: the voxel set.
        methods: only those methods (None: all).
        models: only those models (None: all).
        measure: the uncertainty of the bins (``entropy``).

    Returns:
        (summary, patients) of :func:`core.analysis.ueo.cohort_threshold_from_cubes`.
    """
    if patient_ids is None and _use_derived(con, run_id, mask) and "cohort_ueo_summary" in table_names(con):
        stored = []
        for table, cols in (("cohort_ueo_summary", UEO_SUMMARY_COLUMNS), ("cohort_ueo_patients", UEO_PATIENT_COLUMNS)):
            stored.append(con.execute(f"""
                SELECT {", ".join(cols)} FROM {table}
                WHERE run_id = ? AND mask = ? AND measure = ?
                  AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], method))
                  AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], model))
                ORDER BY model, method, region{", patient_id" if "patient_id" in cols else ""}""",
                [run_id, mask, measure, _list(methods), _list(methods), _list(models), _list(models)]).df())
        if len(stored[0]):
            return stored[0], stored[1]
    return ueo.cohort_threshold_from_cubes(threshold_cubes(con, run_id, mask, methods, models, measure), patient_ids)


def grouped_bins(con, run_id: str, kind: str, patient_ids: list[str], group_ids: list[int], mask: str = "brain",
                 measure: str = "entropy", methods: list[str] | None = None, columns: list[str] | None = None) -> dict:
    """Bins summed per patient GROUP in one pass over the table, as numpy arrays.

    The app groups patients by where they fall between the quantiles of the sidebar's measure, so every
    position of the quantile filter is a union of groups: summing the groups' rows gives the subset's bins
    exactly, without touching the per-patient rows again (see :mod:`dashboard.subsets`).

    Args:
        con: a connection.
        run_id: the run.
        kind: 'calibration' (counts n, sum_prob, sum_true) or 'uncertainty' (counts n_error, n_correct, n_fp,
            n_fn, n_tp of ``measure``).
        patient_ids: (P,) the grouped patients; patients not listed are left out.
        group_ids: (P,) the group id of each.
        mask: the voxel set.
        measure: the uncertainty measure (``kind`` 'uncertainty').
        methods: only these methods (None: all).
        columns: keep only those count columns (None: all of ``kind``'s).

    Returns:
        dict(combos=DataFrame(model, method, region) indexed by combo number, g (R,) int64 group id, combo (R,)
        int64, bin (R,) int64, columns (the k count column names), counts (R, k) float64): one row per
        (group, combo, bin) with entries; R = 0 when nothing matches.
    """
    table, cols, extra, extra_args = {
        "calibration": ("calibration_bins", ["n", "sum_prob", "sum_true"], "", []),
        "uncertainty": ("uncertainty_bins", ["n_error", "n_correct", "n_fp", "n_fn", "n_tp"], " AND t.measure = ?",
                        [measure]),
    }[kind]
    if columns is not None:  # only these count columns (a page that needs n_error / n_correct reads half the lists)
        cols = [c for c in cols if c in columns]
    methods = _list(methods)

    if _has_lists(con, kind):
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
    """Rows of ``calibration_hist`` / ``uncertainty_hist`` (the stored bins, one row per (evaluation, region, mask[,
    measure]) with its bins as lists) of the listed patients as (patient index into ``patient_ids`` (R,), combo index into
    ``combos`` (R,), combos, entry row (E,), {bins, <cols>: (E,)}); ``combos`` (model, method, region) defaults
    to every combo present, sorted. The entries of a row are in no particular bin order; ``n_error`` of the
    histograms is n_fp + n_fn (not stored)."""

    table, extra, extra_args = ("calibration_hist", "", []) if kind == "calibration" else \
        ("uncertainty_hist", " AND t.measure = ?", [measure])
    want = cols
    if kind == "uncertainty" and "n_error" in cols:
        cols = [c for c in cols if c != "n_error"] + [c for c in ("n_fp", "n_fn") if c not in cols]
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
        return z, z, combos, z, {c: np.zeros(0) for c in ["bins"] + want}
    row, vals = list_arrays(tbl, ["bins"] + cols)
    if "n_error" in want and kind == "uncertainty":
        vals["n_error"] = np.asarray(vals["n_fp"], np.int64) + np.asarray(vals["n_fn"], np.int64)
    vals = {c: vals[c] for c in ["bins"] + want}
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
    C = len(combos)
    r, b, counts = sum_by_bin(ginv[row] * C + combo[row], bins, np.stack([vals[c] for c in cols], axis=1),
                              len(ug) * C, int(bins.max()) + 1)
    return {"combos": combos, "g": ug[r // C], "combo": r % C, "bin": b, "columns": cols, "counts": counts}


def cohort_summary(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain") -> pd.DataFrame:
    """Cohort metrics of a patient subset per model, method and region.

    :func:`core.analysis.summaries.cohort_summary` on this subset's per-patient metrics and summed bins.

    Args:
        con: a connection.
        run_id: the run.
        patient_ids: the subset (None: every patient of the run).
        mask: the voxel set.

    Returns:
        model, method, region, n_patients, dice_mean, dice_median, dice_nan (patients skipped), ece_mean (mean
        of per-patient ECE), ece_dataset / ace_dataset / mce_dataset (from summed bins), auroc_entropy_dataset
        (pooled voxels, from summed bins), auroc_entropy_mean (mean per-patient), auroc_nan, mean_entropy
        (mean of per-patient means in ``mask``).
    """

    wide = metric_wide(con, run_id, SUMMARY_METRICS, mask=mask, patient_ids=patient_ids)
    return summaries.cohort_summary(wide, summed_calibration_bins(con, run_id, patient_ids, mask),
                     summed_uncertainty_bins(con, run_id, patient_ids, mask, "entropy"))


def patient_calibration_bins(con, run_id: str, model: str, method: str, region: str, mask: str = "brain",
                             patient_ids: list[str] | None = None) -> pd.DataFrame:
    """Per-patient reliability bins of one model/method/region.

    Args:
        con: a connection.
        run_id, model, method: the evaluations.
        region: 'WT', 'TC' or 'ET'.
        mask: the voxel set.
        patient_ids: only these patients (None: all).

    Returns:
        patient_id, bin, n, sum_prob, sum_true (one row per non-empty bin), sorted by patient (and bin).
    """
    patient_ids = _list(patient_ids)
    if _has_lists(con, "calibration"):
        tbl = con.sql(f"""
            SELECT patient_id, bins, n, sum_prob, sum_true FROM calibration_hist
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
                      n_bins: int = N_CAL_BINS) -> dict[str, dict[str, np.ndarray]]:
    """Per-patient calibration bins of every model of one method/region as dense arrays, in one read.

    Args:
        con: a connection.
        run_id, method: the evaluations.
        region: 'WT', 'TC' or 'ET'.
        mask: the voxel set.
        n_bins: bins per patient.

    Returns:
        {model: {patient_id (P,) sorted, n, sum_prob, sum_true (P, n_bins) float64}} (zeros in empty bins);
        models without bins are absent (empty dict when none has any).
    """
    if _has_lists(con, "calibration"):
        tbl = con.sql("""SELECT model, patient_id, bins, n, sum_prob, sum_true FROM calibration_hist
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
        dense = dense_bins(r, np.asarray(long["bin"], np.int64)[sel],
                           np.stack([np.asarray(long[c], np.float64)[sel] for c in CAL_LIST_COLS], axis=1), len(ids), n_bins)
        out[m] = {"patient_id": ids.astype(object), **{c: dense[..., j] for j, c in enumerate(CAL_LIST_COLS)}}
    return out


def calibration_bins_subset(con, run_id: str, patient_ids: list[str] | None = None, mask: str = "brain",
                            methods: list[str] | None = None) -> pd.DataFrame:
    """Per-patient calibration bins of ok evaluations for a patient subset (and optionally some methods).

    Input of the bootstrap intervals of dataset-level ECE (:func:`core.analysis.stats.leaderboard`).

    Args:
        con: a connection.
        run_id: the run.
        patient_ids: the subset (None: all).
        mask: the voxel set.
        methods: only these methods (None: all).

    Returns:
        model, method, region, patient_id, bin, n, sum_prob, sum_true, in no particular order.
    """
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
    """The whole run's stored leaderboard rows (derived table ``cohort_leaderboard``, written by the batch).

    Args:
        con: a connection.
        run_id: the run.
        mask: the voxel set.
        methods: the methods to keep.
        models: the models to keep.
        B: bootstrap replicates the rows must have been computed with (seed 0).

    Returns:
        rows of these methods and models sorted by model, method, region, columns
        :data:`core.analysis.stats.LEADERBOARD_COLUMNS`; None when the derived tables are stale or older than
        that table, or hold no such row (the caller bootstraps then).
    """

    if not _use_derived(con, run_id, mask) or "cohort_leaderboard" not in table_names(con):
        return None
    cols = ", ".join(stats.LEADERBOARD_COLUMNS)  # fixed identifiers of core.stats, never input
    df = con.execute(f"""SELECT {cols} FROM cohort_leaderboard
                         WHERE run_id = ? AND mask = ? AND B = ? AND seed = 0
                           AND list_contains(?::VARCHAR[], method) AND list_contains(?::VARCHAR[], model)
                         ORDER BY model, method, region""",
                     [run_id, mask, int(B), _list(methods), _list(models)]).df()
    return df if len(df) else None


def calibration_bin_arrays(con, run_id: str, mask: str, combos: pd.DataFrame, patient_ids: list[str]) -> dict:
    """Per-patient calibration bins of the listed combos and patients as integer-coded numpy arrays.

    The input of the bootstrap ECE in :func:`core.analysis.stats.leaderboard`.

    Args:
        con: a connection.
        run_id: the run.
        mask: the voxel set.
        combos: DataFrame(model, method, region), one row per combo.
        patient_ids: the patients (the bins of others are left out).

    Returns:
        dict of (E,) arrays, one entry per stored bin: patient (index into ``patient_ids``), combo (index into
        ``combos``), bin, d = sum_prob - sum_true, n (voxels, float64).
    """
    if _has_lists(con, "calibration"):
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
    """Per-patient metrics as columns, one row per ok evaluation and region.

    Each metric is taken in ``mask``, except those stored for one voxel set only (:data:`BRAIN_ONLY`: Dice,
    HD95, volumes -> 'brain'; :data:`PRED_ONLY` -> 'pred'). Read from ``patient_summary`` when the derived
    tables are current and hold every metric, else pivoted in SQL (one conditional aggregate per metric, names
    passed as parameters).

    Args:
        con: a connection.
        run_id: the run.
        metrics: the metric names (the columns, in this order).
        mask: the voxel set.
        patient_ids: only these patients (None: all).
        method: only this method (None: all).
        derived: allow the derived tables (False: always the long ``metrics`` table).

    Returns:
        model, method, patient_id, region, <metric>...; NULL (NaN) where a metric is undefined; sorted by
        model, method, patient_id, region.
    """
    metrics = [str(m) for m in metrics]
    if derived and _use_derived(con, run_id, mask, metrics):
        # column names: members of WIDE_METRICS (checked by _use_derived), never free text
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


def patient_maps(con, run_id: str, patient_id: str) -> pd.DataFrame:
    """NIfTI map files of one patient: model, method, kind, path (absolute); sorted by model, method, kind."""
    return con.execute("""SELECT model, method, kind, path FROM maps WHERE run_id = ? AND patient_id = ?
                          ORDER BY model, method, kind""", [run_id, patient_id]).df()


def patient_source(con, run_id: str, patient_id: str) -> str | None:
    """The patient's image folder as recorded by the batch, or None when the run's cohort has no such patient."""
    row = con.execute("""SELECT p.source FROM patients p JOIN runs r ON p.cohort = r.cohort
                         WHERE r.run_id = ? AND p.patient_id = ?""", [run_id, patient_id]).fetchone()
    return row[0] if row else None


def review_budget_ranking(con, run_id: str, model: str, method: str, region: str = "WT", budget: float = 0.01,
                          patient_ids: list[str] | None = None, mask: str = "brain",
                          measure: str = "entropy") -> tuple[pd.DataFrame, dict]:
    """Patients of one (model, method, region) ranked by their share of a cohort review budget
    (:mod:`core.analysis.review_budget`): the pooled uncertainty histogram of ``patient_ids`` gives the cohort
    threshold, one per-patient SQL sum each patient's voxels above it.

    Args:
        con: a connection.
        run_id: the run.
        model: the model.
        method: the method.
        region: WT, TC or ET.
        budget: the share of the cohort's voxels (of ``mask``) reviewed, in (0, 1].
        patient_ids: the cohort (None: every patient of the run).
        mask: the voxel set.
        measure: the uncertainty of the bins (``entropy``, ``mi``, ``epkl``).

    Returns:
        (ranking :data:`core.analysis.review_budget.RANK_COLUMNS`, info {cut_bin, cut_fraction, budget_voxels,
        threshold: the uncertainty at the cut bin's lower edge}).
    """
    from core.analysis.review_budget import budget_cut, rank_patients
    from core.metrics.uncertainty import UNC_EDGES

    patient_ids = _list(patient_ids)
    where = f"""run_id = ? AND model = ? AND method = ? AND region = ? AND mask = ? AND measure = ?
                AND {_IN_PATIENTS.format(col="patient_id")}"""
    params = [run_id, model, method, region, mask, measure, patient_ids, patient_ids]
    pooled = con.execute(f"""SELECT bin, sum(coalesce(n_error, 0) + coalesce(n_correct, 0)) AS n
                             FROM uncertainty_bins WHERE {where} GROUP BY bin""", params).fetchnumpy()
    counts = np.zeros(len(UNC_EDGES) - 1, np.float64)
    if len(pooled["bin"]):
        np.add.at(counts, np.asarray(pooled["bin"], np.int64), np.asarray(pooled["n"], np.float64))
    cut, frac = budget_cut(counts, budget)
    per = con.execute(f"""
        SELECT patient_id,
               sum(CASE WHEN bin > ? THEN coalesce(n_error, 0) + coalesce(n_correct, 0) ELSE 0 END) AS n_above,
               sum(CASE WHEN bin > ? THEN n_error ELSE 0 END) AS e_above,
               sum(CASE WHEN bin = ? THEN coalesce(n_error, 0) + coalesce(n_correct, 0) ELSE 0 END) AS n_cut,
               sum(CASE WHEN bin = ? THEN n_error ELSE 0 END) AS e_cut,
               sum(coalesce(n_error, 0) + coalesce(n_correct, 0)) AS n_total,
               sum(n_error) AS e_total
        FROM uncertainty_bins WHERE {where} GROUP BY patient_id""", [cut, cut, cut, cut] + params).df()
    budget_voxels = budget * counts.sum()
    info = {"cut_bin": cut, "cut_fraction": frac, "budget_voxels": budget_voxels,
            "threshold": float(UNC_EDGES[cut])}
    return rank_patients(per, frac, budget_voxels), info
