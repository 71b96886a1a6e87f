"""Shared sidebar state (session state + URL query parameters) and cached read-only queries.

The app holds a DuckDB file open only while it reads it: the cached queries of a page run share one read-only
connection (:func:`core.store.shared_reader`), closed one second after its last use, so a batch can take
the write lock between two reruns. Cache
keys include the file's modification time, so a finished write shows up on the next rerun.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import store

ROOT = Path(__file__).resolve().parent.parent
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
REGIONS = ["WT", "TC", "ET"]
MASKS = ["brain", "roi"]
STRAT_MEASURES = {
    "mean entropy (WT, brain)": ("mean_entropy", "WT", "brain"),
    "mean entropy (WT, predicted region)": ("mean_entropy", "WT", "pred"),
    "mean MI (WT, brain)": ("mean_mi", "WT", "brain"),
    "mean EPKL (WT, brain)": ("mean_epkl", "WT", "brain"),
}


def data_dir() -> Path:
    """The folder the app may read databases from (env ``TUMOURQA_DATA``, default ``data/``)."""
    return Path(os.environ.get("TUMOURQA_DATA", ROOT / "data")).resolve()


def available_dbs() -> list[str]:
    d = data_dir()
    if not d.is_dir():
        return []
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.duckdb") if p.is_file())


def resolve_db(name: str) -> Path:
    """A database name relative to :func:`data_dir`; refuses anything that resolves outside it."""
    d = data_dir()
    p = (d / name).resolve()
    if d != p and d not in p.parents:
        raise ValueError(f"database path {name!r} is outside the data folder")
    return p


@st.cache_data(max_entries=512, show_spinner=False)
def _query(db: str, mtime: float, fn: str, args: tuple, kwargs: tuple):
    with store.shared_reader(db) as con:
        return getattr(store, fn)(con, *args, **dict(kwargs))


def query(db: Path, fn: str, *args, **kwargs):
    """Run ``core.store.<fn>(con, *args, **kwargs)`` on a read-only connection, cached per file version."""
    args = tuple(tuple(a) if isinstance(a, list) else a for a in args)
    kw = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    return _query(str(db), db.stat().st_mtime, fn, args, kw)


def model_colours(models: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(models))}


@dataclass
class Selection:
    db: Path
    run_id: str
    models: list[str]
    all_models: list[str]
    method: str
    methods: list[str]
    mask: str
    strat_model: str
    strat_measure: str
    q_range: tuple[int, int]
    patients: list[str] = field(default_factory=list)  # patients inside the entropy filter
    all_patients: list[str] = field(default_factory=list)
    measure_values: pd.DataFrame | None = None  # patient_id, value of the stratification measure
    group_pids: tuple = ()  # every patient with a stratification value, and its quantile group (quantile_groups)
    group_ids: tuple = ()

    @property
    def groups_key(self) -> str:
        """A short digest of (group_pids, group_ids): the cache key of the per-group rollups (hashing 10,000
        patient ids as a cache argument on every rerun costs more than the digest)."""
        return subset_key(self.group_pids, self.group_ids)

    @property
    def colours(self) -> dict[str, str]:
        return model_colours(self.all_models)


def _qp_default(key: str, options: list, default):
    v = st.query_params.get(key)
    return v if v in options else default


def _init(key: str, value):
    if key not in st.session_state:
        st.session_state[key] = value


def run_in_progress(db_name: str) -> None:
    """Tell the user that a batch holds the database's write lock (DuckDB: one writer, no reader meanwhile)."""
    msg = (f"A run is in progress: a batch is writing `{db_name}` right now, so it cannot be read until the "
           "batch finishes (results are committed patient by patient). Reload in a moment, or pick another database.")
    st.sidebar.warning("A run is in progress on this database.", icon=":material/hourglass_top:")
    st.warning(msg, icon=":material/hourglass_top:")


def sidebar() -> Selection | None:
    """Draw the shared sidebar; returns None (after telling the user what to do) when there is no data or
    when a batch holds the database's write lock (:class:`core.store.DatabaseBusy`: "a run is in progress")."""
    try:
        return _sidebar()
    except store.DatabaseBusy:
        run_in_progress(st.session_state.get("db", "the database"))
        return None


def _sidebar() -> Selection | None:
    sb = st.sidebar
    dbs = available_dbs()
    if not dbs:
        st.info(
            f"No results database in `{data_dir()}` yet. Build the demo with `python -m core demo` "
            "(or run the batch on your cohort: `python -m core run --cohort DIR --models CKPT.pt --db data/results.duckdb`)."
        )
        return None
    default_db = "results.duckdb" if "results.duckdb" in dbs else dbs[0]
    _init("db", _qp_default("db", dbs, default_db))
    if st.session_state["db"] not in dbs:
        st.session_state["db"] = default_db
    db_name = sb.selectbox("Database", dbs, key="db", help=f"Results databases in {data_dir()}")
    db = resolve_db(db_name)
    status = store.read_run_status(db)
    if status:
        sb.info(f"A run is in progress on this database ({status['run_id']}: {status['done']} of {status['total']} "
                f"patients, last update {status['updated'][11:19]} UTC). Showing the last committed state; "
                "rerun the page to see newer patients.", icon=":material/hourglass_top:")
    runs = query(db, "list_runs")  # DatabaseBusy while a batch writes: handled by sidebar()
    if runs.empty:
        st.info("This database has no runs yet. Run `python -m core demo` or `python -m core run ...`.")
        return None
    run_ids = runs.run_id.tolist()
    _init("run", _qp_default("run", run_ids, run_ids[0]))
    if st.session_state["run"] not in run_ids:
        st.session_state["run"] = run_ids[0]
    run_id = sb.selectbox("Run", run_ids, key="run",
                          format_func=lambda r: f"{r} ({runs.set_index('run_id').loc[r, 'patients']} patients)")
    all_models = query(db, "run_models", run_id).model.tolist()
    methods = query(db, "run_methods", run_id)
    if not all_models or not methods:
        st.info("This run has no evaluations yet (a batch may still be starting).")
        return None
    qp_models = [m for m in st.query_params.get("models", "").split(",") if m in all_models]
    _init("models", qp_models or all_models)
    kept = [m for m in st.session_state["models"] if m in all_models]
    if st.session_state["models"] and not kept:  # models of another run: start from all of this run's
        kept = all_models
    st.session_state["models"] = kept
    models = sb.multiselect("Models", all_models, key="models")
    default_method = "mc_dropout" if "mc_dropout" in methods else methods[0]
    _init("method", _qp_default("method", methods, default_method))
    if st.session_state["method"] not in methods:
        st.session_state["method"] = default_method
    method = sb.selectbox("Method", methods, key="method")
    _init("mask", _qp_default("mask", MASKS, "brain"))
    mask = sb.radio("Voxel set (mask)", MASKS, key="mask", horizontal=True,
                    help="brain: non-zero input voxels; roi: union of ground truth and prediction dilated by 3 voxels")
    sb.markdown("**Entropy filter**")
    _init("strat_model", _qp_default("strat", all_models, all_models[0]))
    if st.session_state["strat_model"] not in all_models:
        st.session_state["strat_model"] = all_models[0]
    strat_model = sb.selectbox("Stratify by the uncertainty of", all_models, key="strat_model")
    measures = list(STRAT_MEASURES)
    _init("strat_measure", _qp_default("measure", measures, measures[0]))
    strat_measure = sb.selectbox("Measure", measures, key="strat_measure")
    q = st.query_params.get("q", "0-100").split("-")
    try:
        q0 = (max(0, min(100, int(q[0]))), max(0, min(100, int(q[1]))))
    except (ValueError, IndexError):
        q0 = (0, 100)
    _init("q_range", q0 if q0[0] <= q0[1] else (0, 100))
    q_range = sb.slider("Entropy quantile range (%)", 0, 100, key="q_range", step=5,
                        help="Keep patients whose measure lies between these quantiles of the cohort")
    metric, region, mmask = STRAT_MEASURES[strat_measure]
    values = query(db, "patient_measure", run_id, strat_model, method, metric=metric, region=region, mask=mmask)
    if values.empty:  # the stratifying model did not run this method (per-model methods): use one that did
        for other in [m for m in all_models if m != strat_model]:
            values = query(db, "patient_measure", run_id, other, method, metric=metric, region=region, mask=mmask)
            if not values.empty:
                sb.warning(f"{strat_model} has no {method} results in this run; the entropy filter uses {other}.")
                strat_model = other
                break
    if values.empty and metric in ("mean_mi", "mean_epkl"):
        sb.warning(f"{'Mutual information' if metric == 'mean_mi' else 'EPKL'} needs samples; method {method} has "
                   "none. Stratifying by mean entropy.")
        values = query(db, "patient_measure", run_id, strat_model, method, metric="mean_entropy", region=region, mask=mmask)
    all_patients = values.patient_id.tolist()
    gids = quantile_groups(values) if len(values) else np.zeros(0, np.int64)
    patients = values.patient_id[groups_kept(gids, q_range)].tolist() if len(values) else []
    sb.caption(f"{len(patients)} of {len(all_patients)} patients in the filter")
    shared = {"db": db_name, "run": run_id, "models": ",".join(models), "method": method, "mask": mask,
              "strat": strat_model, "measure": strat_measure, "q": f"{q_range[0]}-{q_range[1]}"}
    for k, v in shared.items():  # a page's own parameters (?view=, ?patient=) stay in the URL
        if st.query_params.get(k) != v:
            st.query_params[k] = v
    return Selection(db, run_id, models, all_models, method, methods, mask, strat_model, strat_measure,
                     tuple(q_range), patients, all_patients, values, tuple(all_patients), tuple(int(g) for g in gids))


def current_selection() -> Selection | None:
    """The selection drawn by app.py for this rerun; a page run on its own (AppTest) draws the sidebar itself."""
    if "_selection" in st.session_state:
        return st.session_state["_selection"]
    return sidebar()


def in_filter(sel: "Selection", patient_ids) -> np.ndarray:
    """Boolean per id of ``patient_ids``: inside the entropy filter (all True when nobody is filtered out).
    Looked up in the stratification's cached id index (built once per stratification, not per call)."""
    ids = np.asarray(patient_ids, dtype=object)
    if len(sel.patients) == len(sel.all_patients):
        return np.ones(len(ids), bool)
    index, gids = _group_index(sel.groups_key, sel.group_pids, sel.group_ids)
    pos = index.get_indexer(ids)
    return groups_kept(np.where(pos >= 0, gids[np.maximum(pos, 0)] if len(gids) else -2, -2), sel.q_range)


_GROUP_INDEX: dict = {}


def _group_index(groups_key: str, pids: tuple, gids: tuple) -> tuple[pd.Index, np.ndarray]:
    """(pd.Index of the stratification's patient ids, their group ids), kept for the last few stratifications."""
    hit = _GROUP_INDEX.get(groups_key)
    if hit is None:
        if len(_GROUP_INDEX) > 8:
            _GROUP_INDEX.clear()
        hit = _GROUP_INDEX[groups_key] = (pd.Index(list(pids)), np.asarray(gids, np.int64))
    return hit


def require_selection(models: bool = True, patients: bool = True) -> Selection:
    """The page's selection; stops the page with a message when there is no data, no model selected, or
    (``patients``) nobody inside the entropy filter."""
    sel = current_selection()
    if sel is None:
        st.stop()
    if models and not sel.models:
        st.info("Select at least one model in the sidebar.")
        st.stop()
    if patients and not sel.patients:
        st.warning("No patient inside the entropy filter: widen the quantile range.")
        st.stop()
    return sel


def page_tabs(labels: list[str], key: str, param: str = "view"):
    """Lazy tabs whose open tab lives in session state and in the URL (``?view=<label>``, so a link opens the
    same tab): each returned container's ``.open`` is True for the open tab only, and the page draws only
    that one (a filter change then recomputes one tab's tables and figures, not the whole page's)."""
    if st.session_state.get(key) not in labels:
        st.session_state[key] = _qp_default(param, labels, labels[0])
    tabs = st.tabs(labels, key=key, on_change="rerun")
    st.query_params[param] = st.session_state[key]
    return tabs


def keep_widget_state(defaults: dict) -> None:
    """Keep the values of widgets that are not drawn in this rerun (those of closed tabs): Streamlit drops the
    state of a widget absent from a rerun, so each key is written back (or set to its default) as the page
    starts; widgets then take their value from session state (no ``index=``/``default=`` of their own). A default
    of None keeps a value that is there and sets none."""
    for k, default in defaults.items():
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]
        elif default is not None:
            st.session_state[k] = default


QUANTILE_STEP = 5  # the sidebar's quantile slider moves in 5 % steps
EDGES = np.arange(0, 101, QUANTILE_STEP)


def quantile_groups(values: pd.DataFrame) -> np.ndarray:
    """Group id per patient (row of ``values``: patient_id, value) such that every quantile range the sidebar
    can set ([lo, hi] in 5 % steps) keeps a union of whole groups.

    With q_k the (k x 5) % quantile of the finite values (linear interpolation), a patient with value v has
    a = max{k: q_k <= v} and b = min{k: q_k >= v} and is kept by [lo, hi] iff q_lo <= v <= q_hi, i.e. iff
    lo/5 <= a and b <= hi/5. Group id = 32 a + b; NaN values get -1 (kept only by the whole range 0-100).
    """
    v = values.value.to_numpy(dtype=float)
    g = np.full(len(v), -1, dtype=np.int64)
    finite = np.isfinite(v)
    if finite.any():
        q = np.quantile(v[finite], EDGES / 100.0)
        a = np.searchsorted(q, v[finite], side="right") - 1
        b = np.searchsorted(q, v[finite], side="left")
        g[finite] = 32 * a + b
    return g


def groups_kept(group_ids, q_range) -> np.ndarray:
    """Boolean per group id: inside the quantile range (see :func:`quantile_groups`)."""
    g = np.asarray(group_ids, dtype=np.int64)
    lo, hi = q_range
    if (lo, hi) == (0, 100):
        return np.ones(g.shape, bool)
    a, b = g // 32, g % 32
    return (g >= 0) & (lo // QUANTILE_STEP <= a) & (b <= hi // QUANTILE_STEP)


def filter_by_quantile(values: pd.DataFrame, q_range) -> list[str]:
    """Patients whose value lies within [quantile(lo), quantile(hi)] (inclusive, linear interpolation), for lo and
    hi multiples of 5. Patients with a missing value are kept only when the range is the whole cohort (0-100)."""
    if values.empty:
        return []
    keep = groups_kept(quantile_groups(values), q_range)
    return values.patient_id[keep].tolist()


def subset_key(*parts) -> str:
    """SHA-1 of sequences of patient ids / numbers, for cache keys of large patient subsets."""
    h = hashlib.sha1()
    for part in parts:
        h.update("\x1f".join(map(str, part)).encode())
        h.update(b"\x1e")
    return h.hexdigest()


# cache_resource, not cache_data: these values are large (per-group bins of every combo, per-patient tables)
# and only read; cache_data would pickle them on every miss and unpickle a copy on every rerun
@st.cache_resource(max_entries=32, show_spinner=False)
def _rollup(db: str, mtime: float, run_id: str, kind: str, mask: str, measure: str, methods: tuple | None,
            columns: tuple | None, groups_key: str, _pids: tuple, _gids: tuple) -> dict:
    with store.shared_reader(db) as con:
        out = store.grouped_bins(con, run_id, kind, list(_pids), list(_gids), mask=mask, measure=measure,
                                 methods=None if methods is None else list(methods),
                                 columns=None if columns is None else list(columns))
        for v in out.values():
            if isinstance(v, np.ndarray):
                v.flags.writeable = False  # shared by every session (cache_resource)
        return out


_PREFETCHED: dict[tuple, threading.Thread] = {}
_QUEUED: list[tuple] = []


def queue_prefetch(fn, args: tuple, n_private: int = 2) -> None:
    """Queue ``fn(*args)`` (a cached function) to run in the background once this page is drawn
    (:func:`start_prefetch`); the last ``n_private`` arguments are the large ones that the cache key leaves out
    (underscore-named), whose digest is among the others."""
    _QUEUED.append((fn, args, n_private))
    del _QUEUED[:-16]  # a page that stopped early never started its queue: keep the newest only


def start_prefetch() -> None:
    """Start the work queued by :func:`subset_bins` and :func:`dashboard.tables.leaderboard` during this page run
    (call at the END of a page, so that the background work does not compete with drawing it)."""
    while _QUEUED:
        _prefetch(*_QUEUED.pop(0))


def _prefetch(fn, args: tuple, n_private: int) -> None:
    """Compute ``fn(*args)`` in a background thread (none while one for the same key still runs; a finished
    key is a cache hit, or recomputed if it was evicted): a page opened on the whole cohort shows the batch's
    totals at once, and the per-group sums that the first move of the quantile filter needs (a pass over every
    patient's bins) are made while the user reads the page. The foreground call with the same arguments waits
    for this one through Streamlit's per-key compute lock and then reads the cache, so nothing is computed
    twice; an error here is left to the foreground call to report."""
    key = (fn.__qualname__,) + args[:len(args) - n_private]
    if len(args[-1]) == 0 or (key in _PREFETCHED and _PREFETCHED[key].is_alive()):
        return  # (a finished key starts again: a cache hit returns at once, an evicted entry is recomputed)
    if len(_PREFETCHED) > 64:
        _PREFETCHED.clear()

    def work():
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the foreground call recomputes and shows the error
            pass

    t = threading.Thread(target=work, name="tumourqa-prefetch", daemon=True)
    try:
        from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

        add_script_run_ctx(t, get_script_run_ctx())
    except ImportError:  # pragma: no cover - older Streamlit
        pass
    _PREFETCHED[key] = t
    t.start()


def subset_bins(sel: Selection, kind: str, mask: str | None = None, measure: str = "entropy",
                methods: list[str] | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """The filtered patients' bins, summed (columns as :func:`core.store.summed_calibration_bins` /
    :func:`core.store.summed_uncertainty_bins`), for ``methods`` (default: every method of the run).

    The whole range (0-100 %) reads the cohort totals (every patient of the run). Other ranges are computed from
    per-group sums read once per stratification (:func:`core.store.grouped_bins`, cached), so moving the quantile
    filter adds up a few dozen groups' rows (numpy) instead of rereading every patient."""
    mask = mask or sel.mask
    args = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, kind, mask, measure,
            None if methods is None else tuple(sorted(methods)), None if columns is None else tuple(columns),
            sel.groups_key, sel.group_pids, sel.group_ids)
    if tuple(sel.q_range) == (0, 100):  # everyone: the cohort totals (written by the batch, see core.derived)
        meths = None if methods is None else sorted(methods)
        if kind == "calibration":
            df = query(sel.db, "summed_calibration_bins", sel.run_id, None, mask, methods=meths)
        else:
            df = query(sel.db, "summed_uncertainty_bins", sel.run_id, None, mask, measure, methods=meths,
                       columns=None if columns is None else list(columns))
        queue_prefetch(_rollup, args)  # what the first move of the filter will need: computed after the page is drawn
        return df
    roll = _rollup(*args)
    combos, cols = roll["combos"], roll["columns"]
    if not len(roll["g"]):
        return pd.DataFrame(columns=["model", "method", "region", "bin"] + cols)
    keep = groups_kept(roll["g"], sel.q_range)
    nb = int(roll["bin"].max()) + 1
    flat = roll["combo"][keep] * nb + roll["bin"][keep]
    size = len(combos) * nb
    sums = np.stack([np.bincount(flat, roll["counts"][keep, j], minlength=size) for j in range(len(cols))], axis=1)
    present = np.bincount(flat, minlength=size) > 0
    idx = np.flatnonzero(present)
    c, b = idx // nb, idx % nb
    out = pd.DataFrame({"model": combos.model.to_numpy()[c], "method": combos.method.to_numpy()[c],
                        "region": combos.region.to_numpy()[c], "bin": b.astype(np.int32)})
    for j, col in enumerate(cols):
        out[col] = sums[idx, j]
    return out


@st.cache_resource(max_entries=64, show_spinner=False)
def _patient_table(db: str, mtime: float, run_id: str, metrics: tuple, mask: str, method: str | None):
    with store.shared_reader(db) as con:
        return store.metric_wide(con, run_id, list(metrics), mask=mask, method=method)


@st.cache_resource(max_entries=64, show_spinner=False)
def _row_groups(key: tuple, groups_key: str, _df: pd.DataFrame, _pids: tuple, _gids: tuple) -> np.ndarray:
    """Quantile group id (:func:`quantile_groups`) per row of a cached per-patient table; -2 for a patient
    without a value of the stratifying measure (kept, like every patient, only by the whole range 0-100)."""
    pos = pd.Index(list(_pids)).get_indexer(_df.patient_id.to_numpy(object))
    gids = np.asarray(_gids, np.int64)
    out = np.where(pos >= 0, gids[np.maximum(pos, 0)] if len(gids) else -2, -2)
    out.flags.writeable = False
    return out


def _rows_kept(sel: Selection, key: tuple, df: pd.DataFrame) -> np.ndarray:
    """(R,) bool: the rows of the cached table ``df`` (cache key ``key``) whose patient is inside the filter."""
    return groups_kept(_row_groups(key, sel.groups_key, df, sel.group_pids, sel.group_ids), sel.q_range)


def patient_table(sel: Selection, metrics: list[str], mask: str | None = None, method: str | None = None,
                  subset: bool = True) -> pd.DataFrame:
    """Per-patient metrics (:func:`core.store.metric_wide`) of every patient of the run, read once per
    (metrics, mask, method) and cached; ``subset`` keeps the patients inside the entropy filter (a boolean mask
    of the rows' cached quantile groups, not a lookup of thousands of patient ids)."""
    key = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, tuple(metrics), mask or sel.mask, method)
    df = _patient_table(*key)
    if subset:
        df = _subset_rows(sel, key, df)
    return df


def _subset_rows(sel: Selection, key: tuple, df: pd.DataFrame) -> pd.DataFrame:
    if len(sel.patients) != len(sel.all_patients):
        return df[_rows_kept(sel, key, df)]
    queue_prefetch(_row_groups, (key, sel.groups_key, df, sel.group_pids, sel.group_ids), n_private=3)
    return df


@st.cache_resource(max_entries=32, show_spinner=False)
def _summary_parts(key: tuple, _df: pd.DataFrame) -> dict:
    from core import summaries

    return summaries.summary_parts(_df)


def subset_summary(sel: Selection, mask: str | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """Cohort metrics of the filtered patients per model, method and region (:func:`core.summaries.cohort_summary`,
    the same numbers as :func:`core.store.cohort_summary` on ``sel.patients``), for ``methods`` (default all)."""
    from core import summaries

    mask = mask or sel.mask
    # one method: read only its rows (a quarter of a 4-method run's); several: all, the others dropped at the end
    key = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, tuple(store.SUMMARY_METRICS), mask,
           methods[0] if methods and len(methods) == 1 else None)
    wide = _patient_table(*key)
    keep = None
    if len(sel.patients) != len(sel.all_patients):
        keep = _rows_kept(sel, key, wide)
    else:  # the first move of the filter needs the rows' groups: found in the background meanwhile
        queue_prefetch(_row_groups, (key, sel.groups_key, wide, sel.group_pids, sel.group_ids), n_private=3)
    out = summaries.cohort_summary(wide, subset_bins(sel, "calibration", mask, methods=methods),
                                   subset_bins(sel, "uncertainty", mask, methods=methods,
                                               columns=["n_error", "n_correct"]),
                                   parts=_summary_parts(key, wide), keep=keep)
    return out if methods is None else out[out.method.isin(methods)].reset_index(drop=True)
