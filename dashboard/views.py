"""What each page shows, as data: the filtering, reshaping and sorting the pages need, so that a page holds
widgets and plots only. Every function takes the sidebar's :class:`dashboard.selection.Selection` (and the
page's own widget values) and returns frames / arrays ready to draw.
"""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from core.analysis import summaries
from core.analysis.stats import format_p_columns
from core.analysis.strata import strata
from core.analysis.ueo import cohort_threshold_from_cubes as ueo_from_cubes
from core.analysis.summaries import GAP_TOL, confidence_shares, reliability_arrays  # noqa: F401 - for the pages
from core.metrics.calibration import N_CAL_BINS  # noqa: F401 - re-exported for the pages
from core.store.schema import MASKS, REGIONS  # noqa: F401 - re-exported for the pages
from dashboard import memo, reads, tables
from dashboard.prefetch import queue_prefetch
from dashboard import viewer as V
from dashboard.selection import STRAT_MEASURES, Selection, data_dir, in_filter
from dashboard.subsets import patient_table, subset_bins, subset_summary

KEYS = ["model", "method", "region"]


# ------------------------------------------------------------------------------------------------ home
def run_row(sel: Selection) -> pd.Series:
    """The selected run's row of :func:`core.store.list_runs` (patients, ok, failed, device, cohort, ...)."""
    return reads.list_runs(sel.db).set_index("run_id").loc[sel.run_id]


def cohort_patients(sel: Selection) -> pd.DataFrame:
    """The run's patients with the demo's case kind from their metadata (empty string for other cohorts; read in SQL,
    cached per database version)."""
    return reads.cohort_patients(sel.db, sel.run_id)


def model_cards(sel: Selection) -> list[tuple[str, str, dict]]:
    """(model, checkpoint, card dict) of every model of the run."""
    return [(m.model, m.checkpoint, json.loads(m.card)) for m in reads.run_models(sel.db, sel.run_id).itertuples()]


def findings(lb: pd.DataFrame, flagged: pd.DataFrame, method: str) -> dict:
    """What the database says, in numbers: the Home page's first view (pure pandas).

    Args:
        lb: leaderboard rows (:func:`dashboard.tables.leaderboard`: model, method, region, dice(_lo, _hi),
            ece_dataset(_lo, _hi), n_patients).
        flagged: per-patient quality rows with model, patient_id, region, flagged (any regions).
        method: the method whose rows are ranked.

    Returns:
        dict with ``best_dice`` and ``best_ece``: one row per region (region, model, value, lo, hi, runner_up,
        runner_value, separated: the best interval does not overlap the runner-up's), ``worst``: the region whose
        mean dataset ECE over the models is the highest (region, mean_ece, model, value, lo, hi: its worst model)
        or None, ``flagged``: distinct flagged patients, ``flagged_by_region``: region -> distinct flagged
        patients, ``n_patients``: the most patients behind a leaderboard row.
    """
    rows = lb[lb.method == method] if len(lb) else lb
    out = {"best_dice": pd.DataFrame(), "best_ece": pd.DataFrame(), "worst": None, "flagged": 0,
           "flagged_by_region": {}, "n_patients": int(rows.n_patients.max()) if len(rows) else 0}

    def best(metric: str, higher: bool) -> pd.DataFrame:
        recs = []
        for region in [r for r in REGIONS if r in set(rows.region)]:
            g = rows[(rows.region == region) & rows[metric].notna()].sort_values(metric, ascending=not higher)
            if g.empty:
                continue
            top = g.iloc[0]
            rec = {"region": region, "model": top.model, "value": float(top[metric]), "lo": float(top[f"{metric}_lo"]),
                   "hi": float(top[f"{metric}_hi"]), "runner_up": None, "runner_value": float("nan"),
                   "separated": False}
            if len(g) > 1:
                ru = g.iloc[1]
                rec.update(runner_up=ru.model, runner_value=float(ru[metric]),
                           separated=bool(top[f"{metric}_lo"] > ru[f"{metric}_hi"]) if higher
                           else bool(top[f"{metric}_hi"] < ru[f"{metric}_lo"]))
            recs.append(rec)
        return pd.DataFrame(recs)

    if len(rows):
        out["best_dice"] = best("dice", True)
        out["best_ece"] = best("ece_dataset", False)
        ece = rows.dropna(subset=["ece_dataset"])
        if len(ece):
            region = ece.groupby("region").ece_dataset.mean().idxmax()
            w = ece[ece.region == region].sort_values("ece_dataset").iloc[-1]
            out["worst"] = {"region": region, "mean_ece": float(ece[ece.region == region].ece_dataset.mean()),
                            "model": w.model, "value": float(w.ece_dataset), "lo": float(w.ece_dataset_lo),
                            "hi": float(w.ece_dataset_hi)}
    if len(flagged):
        f = flagged[flagged.flagged.astype(bool)]
        out["flagged"] = int(f.patient_id.nunique())
        out["flagged_by_region"] = {r: int(g.patient_id.nunique()) for r, g in f.groupby("region")}
    return out


@memo.per_selection
def home_findings(sel: Selection) -> dict:
    """:func:`findings` of the selection: the leaderboard of the sidebar's method over the filtered patients
    (the Compare page's numbers) and the quality flags of that method (selected models, every region)."""
    lb = tables.leaderboard(sel, [sel.method])
    q = [reads.quality_patients(sel.db, sel.run_id, sel.method, r).assign(region=r) for r in REGIONS]
    q = pd.concat(q, ignore_index=True)
    return findings(lb, q[q.model.isin(sel.models)] if len(q) else q, sel.method)


def page_params(sel: Selection, **extra) -> dict[str, str]:
    """The sidebar's URL parameters of the selection plus a page's own (``view=``, ``region=``): the query of a
    link that opens another page on the same view."""
    return {"db": str(sel.db.relative_to(data_dir())) if sel.db.is_relative_to(data_dir()) else sel.db.name,
            "run": sel.run_id, "models": ",".join(sel.models), "method": sel.method, "mask": sel.mask,
            "strat": sel.strat_model, "measure": sel.strat_measure, "q": f"{sel.q_range[0]}-{sel.q_range[1]}",
            **{k: str(v) for k, v in extra.items()}}


def page_link(page: str, label: str, icon: str, query_params: dict[str, str]) -> None:
    """``st.page_link`` to ``page`` (a path such as ``app_pages/compare.py``) with ``query_params``.

    When the page runs on its own (``streamlit run app_pages/home.py``, or ``AppTest.from_file`` of one page), no
    ``st.navigation`` knows the other pages and ``st.page_link`` raises; the link then falls back to a plain
    markdown link to the page's URL path (``/compare?db=...``), which is the same address under ``app.py``.
    """
    from streamlit.errors import StreamlitPageNotFoundError

    try:
        st.page_link(page, label=label, icon=icon, query_params=query_params)
    except StreamlitPageNotFoundError:
        st.markdown(f"{icon} [{label}](/{Path(page).stem}?{urlencode(query_params)})")


def url_region() -> int:
    """Index in :data:`REGIONS` of the URL's ``?region=`` (a Home link), 0 when absent or unknown."""
    r = st.query_params.get("region")
    return REGIONS.index(r) if r in REGIONS else 0


def report_html(sel: Selection) -> str:
    """The study report of the selected run and method (:func:`core.report.build_report`, whole cohort)."""
    return reads.study_report(sel.db, sel.run_id, sel.method, sel.mask)


# --------------------------------------------------------------------------------------------- compare
def ran_models(sel: Selection) -> list[str]:
    """Selected models with at least one ok evaluation of the sidebar's method (sorted)."""
    status = reads.evaluation_status(sel.db, sel.run_id)
    return sorted(set(status[(status.method == sel.method) & (status.ok > 0)].model) & set(sel.models))


@memo.per_selection
def compare_summaries(sel: Selection, methods: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Compare page's cohort summaries of the selected models over the filtered patients.

    Args:
        sel: the selection.
        methods: the methods of the first summary.

    Returns:
        (summary of ``methods``, its rows of the sidebar's method only), columns as
        :func:`dashboard.subsets.subset_summary`.
    """
    summary_all = subset_summary(sel, methods=methods)
    summary_all = summary_all[summary_all.model.isin(sel.models)]
    return summary_all, summary_all[summary_all.method == sel.method]


def with_intervals(summary: pd.DataFrame, lb: pd.DataFrame) -> pd.DataFrame:
    """The summary with the leaderboard's Dice and dataset-ECE interval bounds (for error bars).

    Args:
        summary: cohort summary rows (model, method, region, ...).
        lb: the leaderboard (:func:`dashboard.tables.leaderboard`), possibly empty.

    Returns:
        ``summary`` left-joined on (model, method, region) with the bound columns ``lb`` has (dice_lo, dice_hi,
        ece_dataset_lo, ece_dataset_hi; NaN where a row has none); ``summary`` itself when ``lb`` is empty.
    """
    ci_cols = KEYS + ["dice_lo", "dice_hi", "ece_dataset_lo", "ece_dataset_hi"]
    return summary.merge(lb[[c for c in ci_cols if c in lb]], on=KEYS, how="left") if len(lb) else summary


OVERVIEW_COLUMNS = ["model", "region", "n_patients", "dice_mean", "dice_median", "auroc_entropy_dataset",
                    "auroc_entropy_mean", "auroc_nan", "ece_dataset", "ece_mean", "ace_dataset", "mce_dataset",
                    "mean_entropy"]


def overview_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The Overview tab's table: one row per model and region, sorted by region then model."""
    return summary[OVERVIEW_COLUMNS].sort_values(["region", "model"])


def float_columns(df: pd.DataFrame) -> list[str]:
    """Names of the float columns of a frame (formatted with a fixed number of digits)."""
    return [c for c in df.columns if df[c].dtype.kind == "f"]


@memo.per_selection
def scatter_points(sel: Selection, metrics: list[str], region: str, x: str, y: str) -> pd.DataFrame:
    """Per-patient rows of the selected models and method in one region with both ``x`` and ``y`` defined.

    Args:
        sel: the selection (filtered patients).
        metrics: the per-patient table's metric columns (with ``x`` and ``y``).
        region: 'WT', 'TC' or 'ET'.
        x, y: the metric columns of the scatter's axes.

    Returns:
        model, method, patient_id, region, <metrics>...; no rows (same columns) when ``x`` or ``y`` is not a
        column, or when no row has both.
    """
    wide = patient_table(sel, metrics, method=sel.method)
    points = wide[wide.model.isin(sel.models) & (wide.region == region)]
    if points.empty or x not in points or y not in points:
        return points.iloc[:0]
    return points.dropna(subset=[x, y])


def scatter_table(sel: Selection, points: pd.DataFrame, keys: list[tuple[str, str]], metrics: list[str],
                  sort_by: str) -> pd.DataFrame:
    """The patient table under the scatter, with an ``open`` link to each patient in the viewer.

    Args:
        sel: the selection (run, method, mask of the links).
        points: the scatter's rows (:func:`scatter_points`).
        keys: the selected (patient_id, model) points (:func:`dashboard.plots.selected_keys`); empty: all rows.
        metrics: the metric columns to show (those ``points`` lacks are left out).
        sort_by: the column to sort by, descending (ties by patient id).

    Returns:
        patient_id, model, <metrics>..., open (a relative ``./viewer?...`` link).
    """
    table = points.set_index(["patient_id", "model"])
    if keys:
        table = table.loc[[k for k in keys if k in table.index]]
    table = table.reset_index()
    cols = ["patient_id", "model"] + [c for c in metrics if c in table]
    table = table[cols].sort_values([sort_by, "patient_id"], ascending=[False, True]).reset_index(drop=True)
    base = "./viewer?" + urlencode({"db": str(st.query_params.get("db", "")), "run": sel.run_id,
                                    "method": sel.method, "mask": sel.mask})
    table["open"] = tables.viewer_links(base, table.patient_id, table.model)
    return table


PAIRED_COLUMNS = ["region", "n", "n_nan", "n_zero", "mean_diff", "diff_lo", "diff_hi", "median_diff", "statistic",
                  "p_value", "p_holm"]


@memo.per_selection
def paired_view(sel: Selection, metrics: list[str], metric: str, a: str, b: str):
    """(test table per region, per-patient differences) of model ``a`` vs ``b`` (:func:`dashboard.tables.paired`).

    Args:
        sel: the selection.
        metrics: the cached per-patient table's columns (with ``metric``).
        metric: the compared metric.
        a, b: the two models.

    Returns:
        (test rows with the :data:`PAIRED_COLUMNS`, p-values as text (``"< 1e-300"`` where they underflow,
        :func:`core.analysis.stats.format_p`; all columns when there is no pair), diffs with region,
        patient_id, a, b, diff = a - b).
    """
    test, diffs = tables.paired(sel, metrics, metric, a, b)
    return (format_p_columns(test[PAIRED_COLUMNS]) if len(diffs) else test), diffs


def ran_methods(sel: Selection, model: str) -> list[str]:
    """Methods of the run with at least one ok evaluation of ``model`` (in the run's method order)."""
    status = reads.evaluation_status(sel.db, sel.run_id)
    ok = set(status[(status.model == model) & (status.ok > 0)].method)
    return [m for m in sel.methods if m in ok]


@memo.per_selection
def paired_methods_view(sel: Selection, metrics: list[str], compared: list[str], model: str, a: str, b: str):
    """(test table per metric and region, per-patient differences) of method ``a`` vs ``b`` of ``model``
    (:func:`dashboard.tables.paired_methods`) on each metric of ``compared``; ``metrics``: the cached
    per-patient table's columns.

    Returns:
        (rows with ``metric`` and the :data:`PAIRED_COLUMNS`, diffs with metric, region, patient_id, a, b, diff).
    """
    test, diffs = tables.paired_methods(sel, metrics, compared, model, a, b)
    return (format_p_columns(test[["metric"] + PAIRED_COLUMNS]) if len(diffs) else test), diffs


@memo.per_selection
def metric_values(sel: Selection, metrics: list[str], metric: str) -> pd.DataFrame:
    """(model, patient_id, region, value) of one metric, selected models and method, filtered patients.

    Args:
        sel: the selection.
        metrics: the cached per-patient table's columns (with ``metric``).
        metric: the metric whose column becomes ``value`` (NaN where undefined).
    """
    wide = patient_table(sel, metrics, method=sel.method)
    wide = wide[wide.model.isin(sel.models)]
    return wide[["model", "patient_id", "region", metric]].rename(columns={metric: "value"})


def temperature_fit_set(sel: Selection) -> str:
    """Words for the voxels the run's temperatures were fitted on (its config's ``ts_fit_mask``)."""
    mask = reads.run_config(sel.db, sel.run_id).get("ts_fit_mask", "brain")
    return "brain voxels (any input channel non-zero)" if mask == "brain" else "ROI voxels (truth or prediction, dilated 3 voxels)"


@memo.per_selection
def temperatures(sel: Selection) -> pd.DataFrame:
    """The fitted +ts temperatures of the selected models (empty when the run fitted none)."""
    temps = reads.run_temperatures(sel.db, sel.run_id)
    return temps[temps.model.isin(sel.models)] if len(temps) else temps


# ----------------------------------------------------------------------------------------- reliability
@memo.per_selection
def reliability_curves(sel: Selection, region: str) -> tuple[dict, dict, dict]:
    """Per selected model: dataset curve, patients' 10-90 % band and dataset reliability histogram.

    Computed over the filtered patients (:func:`core.analysis.summaries.reliability_arrays`) from the dense
    per-patient bins of the sidebar's method and mask.

    Args:
        sel: the selection.
        region: 'WT', 'TC' or 'ET'.

    Returns:
        (curves, bands, hists), each model -> value: DataFrame(conf, acc, n) per non-empty bin,
        DataFrame(centre, lo, hi) per bin with at least two patients, and the (n_bins, n_bins) share matrix
        (rows = accuracy bins). Models without bins, or without a filtered patient, are left out.
    """
    curves, bands, hists = {}, {}, {}
    dense = reads.calibration_dense(sel.db, sel.run_id, sel.method, region, mask=sel.mask)
    for model in sel.models:
        if model not in dense:
            continue
        d = dense[model]
        keep = in_filter(sel, d["patient_id"])
        if keep.any():
            curves[model], bands[model], hists[model] = summaries.reliability_arrays(
                d["n"][keep], d["sum_prob"][keep], d["sum_true"][keep])
    return curves, bands, hists


CALIBRATION_METRICS = ["ece", "ace", "mce", "overconfidence", "underconfidence", "cal_gap", "brier", "nll", "dice"]


@memo.per_selection
def calibration_patients(sel: Selection, region: str) -> pd.DataFrame:
    """Per-patient calibration metrics of one region (selected models and method, filtered patients).

    Args:
        sel: the selection.
        region: 'WT', 'TC' or 'ET'.

    Returns:
        model, method, patient_id, region and the :data:`CALIBRATION_METRICS` columns (NaN where undefined).
    """
    wide = patient_table(sel, CALIBRATION_METRICS, method=sel.method)
    return wide[wide.model.isin(sel.models) & (wide.region == region)]


def worst_calibrated(wide: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """The ``n`` patient rows with the largest ECE.

    Args:
        wide: per-patient rows with model, patient_id and the :data:`CALIBRATION_METRICS` columns
            (:func:`calibration_patients`).
        n: rows kept.

    Returns:
        model, patient_id, <CALIBRATION_METRICS>..., largest ECE first (NaN ECE last).
    """
    return wide.sort_values("ece", ascending=False).head(n)[["model", "patient_id"] + CALIBRATION_METRICS]


# ---------------------------------------------------------------------------------------------- strata
def strata_view(sel: Selection) -> tuple:
    """The cache key of the strata of one view (they do not depend on the sidebar's quantile range)."""
    return (str(sel.db), sel.db.stat().st_mtime, sel.run_id, sel.method, tuple(sel.models), sel.strat_model,
            sel.strat_measure, sel.groups_key)


@st.cache_resource(max_entries=8, show_spinner=False)
def strata_table(view: tuple, n_strata: int, _sel: Selection):
    """The strata of every patient of the run (not only the filtered ones), cached per view and ``n_strata``.

    Args:
        view: the cache key of the view (:func:`strata_view`).
        n_strata: equal-size quantile strata of the stratification measure (:func:`core.analysis.strata.strata`).
        _sel: the selection the key stands for (not hashed).

    Returns:
        (vals: patient_id, value, stratum of every patient with a value (NaN dropped); labels: 'Q1' (lowest) ..
        'Qn'; dice: per-patient Dice / ECE / HD95 of the selected models with their stratum and value).
    """
    vals, labels = strata(_sel.measure_values, n_strata)
    dice = patient_table(_sel, ["dice", "ece", "hd95"], method=_sel.method, subset=False)
    dice = dice[dice.model.isin(_sel.models)].merge(vals[["patient_id", "stratum", "value"]], on="patient_id")
    return vals, labels, dice


@st.cache_resource(max_entries=24, show_spinner=False)
def strata_region(view: tuple, n_strata: int, region: str, _labels, _dice) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of one region, median Dice per model x stratum) of :func:`strata_table`, cached.

    Args:
        view: the cache key of the view (:func:`strata_view`).
        n_strata: the number of strata.
        region: 'WT', 'TC' or 'ET'.
        _labels: the strata labels (the columns of the medians, in order).
        _dice: the per-patient rows of :func:`strata_table`.

    Returns:
        (the region's rows of ``_dice``, DataFrame of median Dice indexed by model with one column per stratum).
    """
    d = _dice[_dice.region == region]
    return d, d.groupby(["model", "stratum"]).dice.median().unstack().reindex(columns=_labels)


@memo.per_selection
def subgroup_summary(sel: Selection) -> pd.DataFrame:
    """Cohort metrics of the filtered patients, the sidebar's method and the selected models."""
    summ = subset_summary(sel, methods=[sel.method])
    summ = summ[(summ.method == sel.method) & summ.model.isin(sel.models)]
    return summ[["model", "region", "n_patients", "dice_mean", "dice_median", "auroc_entropy_dataset", "ece_dataset",
                 "mean_entropy"]]


@st.cache_resource(max_entries=8, show_spinner=False)
def _triage_all(view: tuple, n_strata: int, strat_model: str, strat_measure: str, _dice) -> pd.DataFrame:
    tri = _dice[_dice.model == strat_model]
    tri = tri.pivot_table(index=["patient_id", "stratum", "value"], columns="region", values="dice").reset_index()
    tri = tri.rename(columns={"value": STRAT_MEASURES[strat_measure][0], **{r: f"dice_{r}" for r in REGIONS}})
    return tri.sort_values(tri.columns[2], ascending=False)


def triage(sel: Selection, view: tuple, n_strata: int, dice: pd.DataFrame) -> pd.DataFrame:
    """One row per filtered patient of the stratifying model, most uncertain first, with its Dice per region.

    Args:
        sel: the selection (stratifying model and measure, filter).
        view: the cache key of the view (:func:`strata_view`).
        n_strata: the number of strata.
        dice: the per-patient rows of :func:`strata_table`.

    Returns:
        patient_id, stratum, <the measure's metric, e.g. mean_entropy>, dice_WT, dice_TC, dice_ET, sorted by
        the measure, descending.
    """
    tri = _triage_all(view, n_strata, sel.strat_model, sel.strat_measure, dice)
    return tri[in_filter(sel, tri.patient_id)]


# ---------------------------------------------------------------------------------------------- budget
@memo.per_selection
def budget(sel: Selection, region: str, methods: list[str], max_budget_pct: float):
    """(curves, table) of the review budget (:func:`core.analysis.summaries.budget_table`), selected models.

    Computed from the filtered patients' summed entropy bins on 100 budgets evenly spaced up to
    ``max_budget_pct`` % of the voxel set.

    Args:
        sel: the selection (mask, filter).
        region: 'WT', 'TC' or 'ET'.
        methods: the methods to compare.
        max_budget_pct: the largest budget, in % of the voxel set.

    Returns:
        (curves: model, method, budget (%), captured, ueo; table: per model and method the AUCs, AUROCs and
        counts); two empty frames when there are no bins.
    """
    summed = subset_bins(sel, "uncertainty", measure="entropy", methods=methods, region=region)
    summed = summed[(summed.region == region) & summed.model.isin(sel.models)]
    budgets = [max_budget_pct / 100 * (i + 1) / 100 for i in range(100)]
    return summaries.budget_table(summed, budgets)


@memo.per_selection
def cohort_ueo(sel: Selection, region: str, methods: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """U-E overlap and BnF at one threshold per model and method, chosen on the filtered patients
    (:func:`core.store.cohort_threshold_ueo`, paper 002), beside the per-patient oracle.

    Args:
        sel: the selection (mask, filter, models).
        region: 'WT', 'TC' or 'ET'.
        methods: the methods shown.

    Returns:
        (summary: model, method, patients, t (U-E), U-E mean at t, U-E pooled at t, oracle U-E mean, t (BnF), BnF
        at t, BnF patients; per-patient rows: model, method, patient_id, ueo_at_t, ueo_oracle); empty frames
        without uncertainty bins.
    """
    methods, models = sorted(methods), sorted(sel.models)
    if len(sel.patients) == len(sel.all_patients):  # the batch's stored whole-cohort result; the cubes for a
        summary, patients = reads.cohort_threshold_ueo(sel.db, sel.run_id, None, sel.mask, methods=methods, models=models)
        queue_prefetch(reads.threshold_cubes.cached,  # filter move are read in the background meanwhile
                       (str(sel.db), sel.db.stat().st_mtime, (sel.run_id,),
                        (("mask", sel.mask), ("methods", tuple(methods)), ("models", tuple(models)))), n_private=0)
    else:  # every patient's threshold-group counts, read once per database version, then indexed
        cubes = reads.threshold_cubes(sel.db, sel.run_id, mask=sel.mask, methods=methods, models=models)
        summary, patients = ueo_from_cubes({k: v for k, v in cubes.items() if k[2] == region}, sel.patients)
    summary = summary[summary.region == region].drop(columns="region")
    patients = patients[patients.region == region].drop(columns="region")
    summary = summary.rename(columns={
        "n_patients": "patients", "t_ueo": "t (U-E)", "ueo_mean_at_t": "U-E mean at cohort t",
        "ueo_pooled_at_t": "U-E pooled at cohort t", "ueo_oracle_mean": "U-E mean, per-patient best t (oracle)",
        "t_bnf": "t (BnF)", "bnf_at_t": "BnF at cohort t", "n_bnf": "BnF patients"})
    return summary.reset_index(drop=True), patients.reset_index(drop=True)


def ueo_label(rec: dict) -> str:
    """One line of :func:`cohort_ueo`'s summary row: the cohort-threshold U-E and BnF, the oracle beside them."""
    head = f"**{rec['model']} · {rec['method']}**"
    if rec["t (U-E)"] != rec["t (U-E)"]:  # NaN: no patient with a value
        return f"{head}: no patient with a U-E value"
    bnf = (f"BnF at cohort threshold t={rec['t (BnF)']:.2f}: {rec['BnF at cohort t']:.3f}"
           if rec["t (BnF)"] == rec["t (BnF)"] else "BnF undefined (nothing predicted)")
    return (f"{head}: UEO at cohort threshold t={rec['t (U-E)']:.2f}: {rec['U-E mean at cohort t']:.3f} (mean of "
            f"{rec['patients']} patients; per-patient oracle, each its own best t: "
            f"{rec['U-E mean, per-patient best t (oracle)']:.3f}) · {bnf}")


# --------------------------------------------------------------------------------------------- quality
def run_has_quality(sel: Selection) -> bool:
    """Whether the run has a quality prediction (it needs 10 patients with ground truth per model and method)."""
    return not reads.quality_summary(sel.db, sel.run_id).empty


@memo.per_selection
def quality(sel: Selection, region: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The quality prediction of one region: summary, per-patient predictions and flagged patients.

    Args:
        sel: the selection (the patients' rows are of the sidebar's method).
        region: 'WT', 'TC' or 'ET'.

    Returns:
        (cross-validated summary per model and method without the features / regressor columns, per-patient
        predicted vs true Dice, flagged patients, lowest predicted Dice first), selected models only; the
        summary is empty when the run has no quality prediction.
    """
    summary = reads.quality_summary(sel.db, sel.run_id)
    pts = reads.quality_patients(sel.db, sel.run_id, sel.method, region)
    pts = pts[pts.model.isin(sel.models)]
    table = summary[summary.model.isin(sel.models) & (summary.region == region)].drop(columns=["features", "regressor"])
    return table, pts, pts[pts.flagged].sort_values("predicted_dice")


# ---------------------------------------------------------------------------------------------- viewer
def viewer_models(sel: Selection) -> list[str]:
    """Selected models that ran the sidebar's method (all selected models when none did)."""
    ran = set(ran_models(sel))
    return [m for m in sel.models if m in ran] or sel.models


def viewer_maps(sel: Selection, patient_id: str) -> pd.DataFrame:
    """The patient's NIfTI maps (model, method, kind, path) of the sidebar's method.

    Args:
        sel: the selection.
        patient_id: the patient.
    """
    maps = reads.patient_maps(sel.db, sel.run_id, patient_id)
    return maps[maps.method == sel.method]


def map_volume(maps: pd.DataFrame, model: str, kind: str):
    """The map ``kind`` of ``model`` as an (X, Y, Z[, 3]) float32 array (cached), or None when it is missing.

    Args:
        maps: the patient's maps (:func:`viewer_maps`).
        model: the model.
        kind: 'prob', 'entropy', 'mi', 'error' ((X, Y, Z, 3), one channel per region) or 'pred' ((X, Y, Z)).

    Returns:
        the array, or None when there is no such row or its file does not exist.
    """
    row = maps[(maps.model == model) & (maps.kind == kind)]
    if row.empty or not Path(row.path.iloc[0]).exists():
        return None
    p = row.path.iloc[0]
    return V.load_map(p, Path(p).stat().st_mtime)


def jump_slice(kind: str, maps: pd.DataFrame, model: str, regions, r: int, axis: str) -> int:
    """The slice along ``axis`` with the most tumour (ground truth, else prediction), uncertainty or error.

    Args:
        kind: 'tumour' (ground truth, else the prediction p >= 0.5), 'uncertainty' (the entropy map) or any
            other value for the error map.
        maps: the patient's maps (:func:`viewer_maps`); the map ``kind`` needs must exist.
        model: the model whose maps are used.
        regions: (3, X, Y, Z) bool ground truth, or None.
        r: the region index (0 WT, 1 TC, 2 ET).
        axis: 'axial', 'coronal' or 'sagittal'.

    Returns:
        the slice index (the middle slice when the volume is empty, :func:`dashboard.viewer.best_slice`).
    """
    if kind == "tumour":
        vol = regions[r] if regions is not None else (map_volume(maps, model, "prob")[..., r] >= 0.5)
    elif kind == "uncertainty":
        vol = map_volume(maps, model, "entropy")[..., r]
    else:
        vol = map_volume(maps, model, "error")[..., r] > 0
    return V.best_slice(vol.astype("float32"), axis)


def overlay(kind: str, maps: pd.DataFrame, model: str, regions, r: int, axis: str, index: int):
    """(weights, colour) of one overlay on one displayed slice, for :func:`dashboard.viewer.compose`.

    Args:
        kind: 'ground truth', 'prediction' (p >= 0.5), 'entropy', 'mutual information' (both scaled by the
            region's maximum over the volume) or 'error (FP / FN)'.
        maps: the patient's maps (:func:`viewer_maps`).
        model: the model whose maps are used.
        regions: (3, X, Y, Z) bool ground truth, or None.
        r: the region index (0 WT, 1 TC, 2 ET).
        axis: 'axial', 'coronal' or 'sagittal'.
        index: the slice along ``axis``.

    Returns:
        (weights (H, W) float in [0, 1], colour: an (r, g, b) in [0, 1] or a callable weights -> (H, W, 3));
        (None, None) when the map (or the ground truth) is missing or ``kind`` is unknown.
    """
    if kind == "ground truth" and regions is not None:
        return V.take(regions[r].astype("float32"), axis, index), (0.1, 0.9, 0.2)
    if kind == "prediction":
        prob = map_volume(maps, model, "prob")
        return (None, None) if prob is None else (V.take((prob[..., r] >= 0.5).astype("float32"), axis, index),
                                                  (1.0, 0.2, 0.2))
    if kind in ("entropy", "mutual information"):
        vol = map_volume(maps, model, "entropy" if kind == "entropy" else "mi")
        if vol is not None:
            vmax = max(float(vol[..., r].max()), 1e-6)
            return V.take(vol[..., r], axis, index) / vmax, V.heat
    if kind == "error (FP / FN)":
        err = map_volume(maps, model, "error")
        if err is not None:
            e = V.take(err[..., r], axis, index)
            return (e > 0).astype("float32"), (lambda _x, e=e: V.error_colours(e))
    return None, None


def patient_metric_table(sel: Selection, patient_id: str, models: list[str]) -> pd.DataFrame:
    """One patient's metrics: rows (metric, mask), columns '<model> <region>' (empty when there are none).

    Args:
        sel: the selection (run, method, mask: the rows of ``sel.mask`` and of 'pred').
        patient_id: the patient.
        models: the models shown.

    Returns:
        metric, mask, '<model> <region>'... (NaN where undefined); the empty long frame when there are none.
    """
    long = reads.patient_metrics(sel.db, sel.run_id, [patient_id], mask=sel.mask)
    long = long[long.model.isin(models) & (long.method == sel.method)]
    if long.empty:
        return long
    wide = long.pivot_table(index=["metric", "mask"], columns=["model", "region"], values="value", aggfunc="first")
    wide.columns = [f"{m} {r}" for m, r in wide.columns]
    return wide.reset_index()


def map_downloads(maps: pd.DataFrame, models: list[str]) -> list[tuple[str, str, Path]]:
    """(model, kind, path) of the patient's existing NIfTI map files of the shown models.

    Args:
        maps: the patient's maps (:func:`viewer_maps`).
        models: the models shown.

    Returns:
        one entry per map row whose file exists and ends in ``.nii.gz``, in the rows' order.
    """
    out = []
    for row in maps[maps.model.isin(models)].itertuples():
        p = Path(row.path)
        if p.is_file() and p.name.endswith(".nii.gz"):
            out.append((row.model, row.kind, p))
    return out
