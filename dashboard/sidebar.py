"""The shared sidebar (session state + URL query parameters), the page's selection, lazy tabs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from dashboard import reads, review
from dashboard.selection import STRAT_MEASURES, Selection, available_dbs, data_dir, resolve_db, subset_key

from core import store
from core.store import DatabaseBusy  # noqa: F401 - for app.py (pages reach core only through dashboard)
from core.analysis.strata import groups_kept, quantile_groups
from core.store.schema import MASKS


def _qp_default(key: str, options: list, default):
    v = st.query_params.get(key)
    return v if v in options else default


def _init(key: str, value):
    if key not in st.session_state:
        st.session_state[key] = value


def run_in_progress(db_name: str) -> None:
    """Tell the user that a batch holds the database's write lock (DuckDB: one writer, no reader meanwhile).

    Draws a warning in the sidebar and one in the page.

    Args:
        db_name: the database's name as the sidebar shows it.
    """
    msg = (f"A run is in progress: a batch is writing `{db_name}` right now, so it cannot be read until the "
           "batch finishes (results are committed patient by patient). Reload in a moment, or pick another database.")
    st.sidebar.warning("A run is in progress on this database.", icon=":material/hourglass_top:")
    st.warning(msg, icon=":material/hourglass_top:")


class _Strata:
    """The stratification of one (database version, run, model, method, measure): its values, quantile groups,
    their digest and the patients kept per quantile range, computed once and shared by every rerun and session
    (read-only: :func:`_stratification` returns the same object)."""

    def __init__(self, values):
        self.values = values
        self.empty = values.empty
        self.all_patients = values.patient_id.tolist()
        gids = quantile_groups(values) if len(values) else np.zeros(0, np.int64)
        self._gids = np.asarray(gids, np.int64)
        self.pids = tuple(self.all_patients)
        self.gids = tuple(int(g) for g in self._gids)
        self.digest = subset_key(self.pids, self.gids)
        self._kept: dict = {}

    def kept(self, q_range: tuple[int, int]) -> list[str]:
        """The patients inside the quantile range (a new list each call)."""
        if q_range not in self._kept:
            self._kept[q_range] = self.values.patient_id[groups_kept(self._gids, q_range)].tolist() \
                if len(self.values) else []
        return list(self._kept[q_range])


@st.cache_resource(max_entries=64, show_spinner=False)
def _cached_strata(db: str, version: int, run_id: str, model: str, method: str, metric: str, region: str,
                   mask: str) -> _Strata:
    return _Strata(reads.patient_measure(Path(db), run_id, model, method, metric=metric, region=region, mask=mask))


def _stratification(db: Path, run_id: str, model: str, method: str, metric: str, region: str, mask: str) -> _Strata:
    """The :class:`_Strata` of the sidebar's measure, once per database file version."""
    return _cached_strata(str(db), Path(db).stat().st_mtime_ns, run_id, model, method, metric, region, mask)


@st.cache_data(ttl=2, show_spinner=False)
def _databases(folder: str) -> list[str]:
    """:func:`available_dbs` of the data folder, looked up at most every 2 s (a walk of a folder of maps)."""
    return available_dbs()


def sidebar() -> Selection | None:
    """Draw the shared sidebar (database, run, models, method, mask, entropy filter) and return its selection.

    The widgets' values live in session state and in the URL query parameters, so a link opens the same view.

    Returns:
        the page's :class:`dashboard.selection.Selection`; None (after telling the user what to do) when there
        is no data (no database, no run, no evaluation yet) or when a batch holds the database's write lock
        (:class:`core.store.DatabaseBusy`: "a run is in progress").
    """
    try:
        return _sidebar()
    except store.DatabaseBusy:
        run_in_progress(st.session_state.get("db", "the database"))
        return None


def _sidebar() -> Selection | None:
    sb = st.sidebar
    dbs = _databases(str(data_dir()))
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
    runs = reads.list_runs(db)  # DatabaseBusy while a batch writes: handled by sidebar()
    if runs.empty:
        st.info("This database has no runs yet. Run `python -m core demo` or `python -m core run ...`.")
        return None
    run_ids = runs.run_id.tolist()
    _init("run", _qp_default("run", run_ids, run_ids[0]))
    if st.session_state["run"] not in run_ids:
        st.session_state["run"] = run_ids[0]
    run_label = {r: f"{r} ({n} patients)" for r, n in zip(runs.run_id, runs.patients)}
    run_id = sb.selectbox("Run", run_ids, key="run", format_func=run_label.get)
    all_models = reads.run_models(db, run_id).model.tolist()
    methods = reads.run_methods(db, run_id)
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
    strat = _stratification(db, run_id, strat_model, method, metric, region, mmask)
    if strat.empty:  # the stratifying model did not run this method (per-model methods): use one that did
        for other in [m for m in all_models if m != strat_model]:
            strat = _stratification(db, run_id, other, method, metric, region, mmask)
            if not strat.empty:
                sb.warning(f"{strat_model} has no {method} results in this run; the entropy filter uses {other}.")
                strat_model = other
                break
    if strat.empty and metric in ("mean_mi", "mean_epkl"):
        sb.warning(f"{'Mutual information' if metric == 'mean_mi' else 'EPKL'} needs samples; method {method} has "
                   "none. Stratifying by mean entropy.")
        strat = _stratification(db, run_id, strat_model, method, "mean_entropy", region, mmask)
    all_patients = list(strat.all_patients)
    patients = strat.kept(tuple(q_range))
    _init("review_filter", list(review.STATUSES))
    chosen = sb.multiselect("Review status", list(review.STATUSES), key="review_filter",
                            help=f"Keep patients whose latest review decision for {strat_model} (the model above) "
                                 "has one of these statuses (never reviewed: 'to review')")
    review_filtered = False
    if set(chosen) != set(review.STATUSES):
        st_of = review.statuses(db, run_id, strat_model)
        kept = [p for p in patients if st_of.get(p, "to review") in chosen]
        review_filtered = len(kept) != len(patients)
        patients = kept
    sb.caption(f"{len(patients)} of {len(all_patients)} patients in the filter")
    shared = {"db": db_name, "run": run_id, "models": ",".join(models), "method": method, "mask": mask,
              "strat": strat_model, "measure": strat_measure, "q": f"{q_range[0]}-{q_range[1]}"}
    for k, v in shared.items():  # a page's own parameters (?view=, ?patient=) stay in the URL
        if st.query_params.get(k) != v:
            st.query_params[k] = v
    return Selection(db, run_id, models, all_models, method, methods, mask, strat_model, strat_measure,
                     tuple(q_range), patients, all_patients, strat.values, strat.pids, strat.gids, review_filtered,
                     strat.digest)


def current_selection() -> Selection | None:
    """The selection drawn by app.py for this rerun; a page run on its own (AppTest) draws the sidebar itself.

    Returns:
        the selection, or None as :func:`sidebar`.
    """
    if "_selection" in st.session_state:
        return st.session_state["_selection"]
    return sidebar()


def require_selection(models: bool = True, patients: bool = True) -> Selection:
    """The page's selection; stops the page (``st.stop``) with a message when it cannot be drawn.

    Args:
        models: stop when no model is selected.
        patients: stop when nobody is inside the entropy filter.

    Returns:
        the selection (never None: no data stops the page too).
    """
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
    """Lazy tabs whose open tab lives in session state and in the URL (``?view=<label>``: a link opens the same tab).

    The page draws only the open tab (a filter change then recomputes one tab's tables and figures, not the
    whole page's).

    Args:
        labels: the tab labels; the first is open by default (or when the URL names none of them).
        key: the session-state key of the open tab.
        param: the URL query parameter of the open tab.

    Returns:
        the tab containers of ``st.tabs``, in ``labels`` order; each one's ``.open`` is True for the open tab only.
    """
    if st.session_state.get(key) not in labels:
        st.session_state[key] = _qp_default(param, labels, labels[0])
    tabs = st.tabs(labels, key=key, on_change="rerun")
    st.query_params[param] = st.session_state[key]
    return tabs


def keep_widget_state(defaults: dict) -> None:
    """Keep the values of widgets that are not drawn in this rerun (those of closed tabs).

    Streamlit drops the state of a widget absent from a rerun, so each key is written back (or set to its
    default) as the page starts; widgets then take their value from session state (no ``index=``/``default=``
    of their own).

    Args:
        defaults: widget key -> default value; a default of None keeps a value that is there and sets none.
    """
    for k, default in defaults.items():
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]
        elif default is not None:
            st.session_state[k] = default
