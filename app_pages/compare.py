"""Compare models, in five lazy tabs (only the open one is computed and drawn; the URL's ``view`` names it):
Overview (Dice / AUROC / ECE side by side, summary table), Leaderboard (bootstrap intervals), Patients (a
per-patient scatter whose box / lasso selection fills a patient table; a row opens the viewer), Paired test
(Wilcoxon), Paired methods (two methods of one model, e.g. MC dropout vs deterministic or +ts vs none, same test)
and Distributions (per-patient boxes, temperatures)."""
import streamlit as st

from dashboard import memo, plots, views
from dashboard.prefetch import start_prefetch
from dashboard.sidebar import keep_widget_state, page_tabs, require_selection
from dashboard.tables import arrow, csv_later, leaderboard, leaderboard_display

# rows of the patient table under the scatter (sorted by the y axis; the CSV download has every row): a
# 10,000-patient cohort's 40,000 rows with their viewer links are ~6 MB to serialise and hash on every rerun
TABLE_ROWS = 1000
SCATTER_METRICS = {
    "dice": "Dice", "hd95": "HD95 (mm)", "ece": "ECE", "brier": "Brier", "nll": "NLL",
    "auroc_entropy": "AUROC entropy vs error", "mean_entropy": "mean entropy", "mean_mi": "mean MI",
    "volume_error_ml": "volume error (ml)", "uncertain_fraction": "uncertain-voxel fraction",
    "nsd": "NSD", "lesion_pq_dice": "lesion PQ (Dice)", "lesion_rq": "lesion RQ (detection F1)",
    "lesion_sq_dice": "lesion SQ (Dice)", "lesion_tp": "lesions found (TP)", "lesion_fp": "false lesions (FP)",
    "lesion_fn": "missed lesions (FN)",
}
PAIRED_METRICS = {"dice": "Dice", "ece": "ECE", "auroc_entropy": "AUROC entropy vs error", "brier": "Brier",
                  "hd95": "HD95 (mm)", "nsd": "NSD", "lesion_pq_dice": "lesion PQ (Dice)", "lesion_rq": "lesion RQ"}

TABS = ["Overview", "Leaderboard", "Patients", "Paired test", "Paired methods", "Distributions"]

st.title("Compare models")
sel = require_selection(patients=False)
st.caption(f"Method **{sel.method}** · voxel set **{sel.mask}** · {len(sel.patients)} of {len(sel.all_patients)} "
           f"patients (entropy quantiles {sel.q_range[0]}-{sel.q_range[1]} % of {sel.strat_measure}, {sel.strat_model})")
if not sel.patients:
    st.warning("No patient inside the entropy filter: widen the quantile range.")
    st.stop()
keep_widget_state({"scatter_x": "dice", "scatter_y": "ece", "scatter_region": views.REGIONS[0], "paired_metric": "dice",
                   "paired_a": None, "paired_b": None, "lb_methods": None, "pm_model": None, "pm_a": None, "pm_b": None,
                   "pm_plot_metric": "dice"})
TAB_WIDGETS = page_tabs(TABS, key="compare_view")


def summaries(methods: list[str]):
    """(summary of every given method, summary of the sidebar's method) over the selected models; stops the tab
    when the sidebar's method has no ok evaluation."""
    summary_all, summary = views.compare_summaries(sel, methods)
    if summary.empty:
        st.info("No ok evaluation for this selection.")
        st.stop()
    return summary_all, summary



def draw_overview():
    """Dice / AUROC / ECE side by side per region, and the summary table."""
    _, summary = summaries([sel.method])
    fig = memo.get(sel, ("side_by_side",), lambda: plots.side_by_side(
        views.with_intervals(summary, leaderboard(sel, [sel.method])), sel.colours))
    st.plotly_chart(fig, key="side_by_side")
    st.caption("Error bars: 95 % patient-bootstrap intervals (1000 resamples of the patients) of mean Dice and of "
               "dataset ECE; pooled AUROC is shown without an interval.")
    table = memo.get(sel, ("overview_table",), lambda: views.overview_table(summary))
    fmt = {c: st.column_config.NumberColumn(format="%.3f") for c in views.float_columns(table)}
    st.dataframe(table, hide_index=True, column_config={
        **fmt,
        "n_patients": st.column_config.NumberColumn("patients"),
        "auroc_nan": st.column_config.NumberColumn("AUROC NaN",
                                                   help="patients skipped: no error (or no correct) voxel"),
        "auroc_entropy_dataset": st.column_config.NumberColumn("AUROC pooled", format="%.3f"),
        "auroc_entropy_mean": st.column_config.NumberColumn("AUROC mean", format="%.3f"),
        "ece_dataset": st.column_config.NumberColumn("ECE dataset", format="%.4f"),
        "ece_mean": st.column_config.NumberColumn("ECE mean/patient", format="%.4f"),
    })
    st.download_button("Download table (CSV)", csv_later(table),
                       file_name=f"compare_{sel.run_id}_{sel.method}.csv", mime="text/csv")
    st.caption("Dice: mean over patients (BraTS empty rules). AUROC pooled: entropy vs voxel error from the summed "
               "per-patient histograms; AUROC mean: mean of per-patient AUROC (NaN patients skipped). ECE dataset: "
               "20 equal-width bins summed over the patients; ECE mean: mean of per-patient ECE.")


def draw_leaderboard():
    """model x method x region with bootstrap intervals; methods chosen here."""
    st.subheader("Leaderboard: model x method x region")
    kept = [m for m in st.session_state.get("lb_methods") or [] if m in sel.methods]
    st.session_state["lb_methods"] = kept if sel.method in kept else [sel.method] + kept
    lb_methods = st.multiselect("Methods in the leaderboard", sel.methods, key="lb_methods",
                                help="the sidebar's method and any other method of the run; each added method is "
                                     "bootstrapped too") or [sel.method]
    summary_all, _ = summaries(lb_methods)
    lb = leaderboard(sel, lb_methods)
    if lb.empty:
        st.info("No per-patient metrics for this selection.")
    else:
        disp = memo.get(sel, ("leaderboard_display", lb_methods), lambda: leaderboard_display(lb, summary_all))
        st.dataframe(disp, hide_index=True, column_config={
            "AUROC pooled": st.column_config.NumberColumn(format="%.3f"),
            "patients": st.column_config.NumberColumn(help="patients behind each number (inside the entropy filter)"),
            "AUROC NaN skipped": st.column_config.NumberColumn(help="patients without an error (or a correct) voxel")})
        st.download_button("Download leaderboard (CSV, with interval bounds)", csv_later(lb),
                           file_name=f"leaderboard_{sel.run_id}_{sel.mask}.csv", mime="text/csv",
                           key="dl_leaderboard")
        st.caption(f"Sorted by region, then Dice. [95 % CI]: percentile interval over 1000 Poisson patient-bootstrap "
                   f"replicates (seeded per patient). Dice and AUROC: mean over patients; ECE: dataset-level from the "
                   f"resampled patients' summed bins ({sel.mask}).")



def draw_patients():
    """per-patient scatter; a box / lasso selection fills the patient table, a row opens the viewer."""
    st.subheader("Per-patient scatter: select patients with a box or lasso")
    c1, c2, c3 = st.columns(3)
    names = list(SCATTER_METRICS)
    x_metric = c1.selectbox("x axis", names, format_func=SCATTER_METRICS.get, key="scatter_x")
    y_metric = c2.selectbox("y axis", names, format_func=SCATTER_METRICS.get, key="scatter_y")
    s_region = c3.radio("Region", views.REGIONS, horizontal=True, key="scatter_region")
    points = views.scatter_points(sel, list(SCATTER_METRICS), s_region, x_metric, y_metric)
    if points.empty:
        st.info("No patient has both metrics for this region (e.g. HD95 is undefined when a region is empty).")
    else:
        fig = memo.get(sel, ("patient_scatter", s_region, x_metric, y_metric), lambda: plots.patient_scatter(
            points, x_metric, y_metric, SCATTER_METRICS[x_metric], SCATTER_METRICS[y_metric], sel.colours))
        event = st.plotly_chart(fig, key="patient_scatter", on_select="rerun", selection_mode=("box", "lasso"))
        keys = plots.selected_keys(event.selection if event else None, [t.name for t in fig.data])
        ptable = memo.get(sel, ("scatter_table", s_region, x_metric, y_metric, keys), lambda: views.scatter_table(
            sel, points, keys, list(SCATTER_METRICS), y_metric))
        shown_note = (f" The table shows the first {TABLE_ROWS:,} by {SCATTER_METRICS[y_metric]} (highest first); "
                      "the CSV below has them all." if len(ptable) > TABLE_ROWS else "")
        if keys:
            st.caption(f"{len(ptable)} selected point(s). Double-click the chart to clear the selection.{shown_note}")
        else:
            st.caption(f"No selection: all {len(ptable)} points. Drag a box (or pick lasso in the chart's toolbar) to "
                       f"narrow the table; click a row to open that patient in the viewer.{shown_note}")

        def _open_selected_row():
            rows = st.session_state["patient_table"].selection.rows
            if rows:
                r = ptable.iloc[rows[0]]
                st.session_state["viewer_request"] = (r.patient_id, r.model)
                st.session_state["_go_viewer"] = True

        shown = memo.get(sel, ("scatter_table_arrow", s_region, x_metric, y_metric, keys),
                         lambda: arrow(ptable.head(TABLE_ROWS)))
        st.dataframe(shown, hide_index=True, key="patient_table", on_select=_open_selected_row,
                     selection_mode="single-row", column_config={
                         **{c: st.column_config.NumberColumn(SCATTER_METRICS[c], format="%.3f") for c in SCATTER_METRICS
                            if c in ptable},
                         "open": st.column_config.LinkColumn("link", display_text="viewer ↗",
                                                             help="this patient in the viewer, in a new tab")})
        st.download_button("Download patient table (CSV)", csv_later(ptable.drop(columns="open")),
                           file_name=f"patients_{sel.run_id}_{sel.method}_{s_region}.csv", mime="text/csv",
                           key="dl_patients")
        if st.session_state.pop("_go_viewer", False):
            st.switch_page("app_pages/viewer.py")


def draw_paired():
    """paired per-patient differences of two models with the Wilcoxon signed-rank test."""
    st.subheader("Paired comparison of two models (Wilcoxon signed-rank)")
    ran = views.ran_models(sel)
    if len(ran) < 2:
        st.info(f"Needs two selected models that ran {sel.method}; this selection has {len(ran)}.")
    else:
        c1, c2, c3 = st.columns(3)
        if st.session_state.get("paired_a") not in ran:
            st.session_state.pop("paired_a", None)
        a = c1.selectbox("Model A", ran, key="paired_a")
        b_options = [m for m in ran if m != a]
        if st.session_state.get("paired_b") not in b_options:
            st.session_state.pop("paired_b", None)
        b = c2.selectbox("Model B", b_options, key="paired_b")
        paired_metric = c3.selectbox("Metric", list(PAIRED_METRICS), format_func=PAIRED_METRICS.get, key="paired_metric")
        show, diffs = views.paired_view(sel, list(SCATTER_METRICS), paired_metric, a, b)
        if not len(diffs):
            st.info("No per-patient values of this metric.")
        else:
            st.dataframe(show, hide_index=True, column_config={
                "n": st.column_config.NumberColumn("pairs", help="patients with a value for both models"),
                "n_nan": st.column_config.NumberColumn("NaN skipped"),
                "n_zero": st.column_config.NumberColumn("zero differences", help="dropped by the test (Wilcoxon's method)"),
                "mean_diff": st.column_config.NumberColumn("mean A − B", format="%.4f"),
                "diff_lo": st.column_config.NumberColumn("95 % CI low", format="%.4f"),
                "diff_hi": st.column_config.NumberColumn("95 % CI high", format="%.4f"),
                "median_diff": st.column_config.NumberColumn("median A − B", format="%.4f"),
                "statistic": st.column_config.NumberColumn("W", format="%.1f"),
                "p_value": st.column_config.TextColumn("p", help="two-sided Wilcoxon p; < 1e-300 where it underflows"),
                "p_holm": st.column_config.TextColumn("p (Holm, 3 regions)")})
            st.plotly_chart(memo.get(sel, ("paired_plot", paired_metric, a, b), lambda: plots.paired_differences(
                diffs, PAIRED_METRICS[paired_metric], a, b)), key="paired_plot")
            st.download_button("Download paired differences (CSV)", csv_later(diffs.rename(columns={"a": a, "b": b})),
                               file_name=f"paired_{sel.run_id}_{sel.method}_{paired_metric}_{a}_vs_{b}.csv", mime="text/csv",
                               key="dl_paired")
            st.caption(f"Method {sel.method}, voxel set {sel.mask} for calibration metrics. Two-sided Wilcoxon signed-rank "
                       "test on the per-patient differences (scipy, zero differences dropped); interval: Poisson patient "
                       "bootstrap of the mean difference (1000 replicates, the leaderboard's patient weights). Holm adjusts the three regions' p-values for testing three times.")


def draw_paired_methods():
    """paired per-patient differences of two methods of one model, every paired metric, per region."""
    st.subheader("Paired comparison of two methods of one model (Wilcoxon signed-rank)")
    c1, c2, c3 = st.columns(3)
    models = sorted(sel.models)
    if st.session_state.get("pm_model") not in models:
        st.session_state.pop("pm_model", None)
    model = c1.selectbox("Model", models, key="pm_model")
    ran = views.ran_methods(sel, model)
    if len(ran) < 2:
        st.info(f"Needs two methods that {model} ran; it has {len(ran)}.")
        return
    if st.session_state.get("pm_a") not in ran:
        st.session_state["pm_a"] = sel.method if sel.method in ran else ran[0]
    a = c2.selectbox("Method A", ran, key="pm_a")
    b_options = [m for m in ran if m != a]
    if st.session_state.get("pm_b") not in b_options:
        base = a.replace("+ts", "") if a.endswith("+ts") else "deterministic"
        st.session_state["pm_b"] = base if base in b_options else b_options[0]
    b = c3.selectbox("Method B", b_options, key="pm_b")
    show, diffs = views.paired_methods_view(sel, list(SCATTER_METRICS), list(PAIRED_METRICS), model, a, b)
    if not len(diffs):
        st.info("No per-patient values of these methods.")
        return
    st.dataframe(show.assign(metric=show.metric.map(PAIRED_METRICS)), hide_index=True, column_config={
        "metric": st.column_config.TextColumn("metric"),
        "n": st.column_config.NumberColumn("pairs", help="patients with a value for both methods"),
        "n_nan": st.column_config.NumberColumn("NaN skipped"),
        "n_zero": st.column_config.NumberColumn("zero differences", help="dropped by the test (Wilcoxon's method)"),
        "mean_diff": st.column_config.NumberColumn("mean A − B", format="%.4f"),
        "diff_lo": st.column_config.NumberColumn("95 % CI low", format="%.4f"),
        "diff_hi": st.column_config.NumberColumn("95 % CI high", format="%.4f"),
        "median_diff": st.column_config.NumberColumn("median A − B", format="%.4f"),
        "statistic": st.column_config.NumberColumn("W", format="%.1f"),
        "p_value": st.column_config.TextColumn("p", help="two-sided Wilcoxon p; < 1e-300 where it underflows"),
        "p_holm": st.column_config.TextColumn("p (Holm, 3 regions)")}, key="pm_table")
    metrics = [m for m in PAIRED_METRICS if m in set(diffs.metric)]
    if st.session_state.get("pm_plot_metric") not in metrics:
        st.session_state["pm_plot_metric"] = metrics[0]
    plot_metric = st.selectbox("Plot the differences of", metrics, format_func=PAIRED_METRICS.get, key="pm_plot_metric")
    st.plotly_chart(memo.get(sel, ("pm_plot", model, a, b, plot_metric), lambda: plots.paired_differences(
        diffs[diffs.metric == plot_metric], PAIRED_METRICS[plot_metric], a, b)), key="pm_plot")
    st.download_button("Download paired differences (CSV)", csv_later(diffs.rename(columns={"a": a, "b": b})),
                       file_name=f"paired_methods_{sel.run_id}_{model}_{a}_vs_{b}.csv", mime="text/csv", key="dl_pm")
    st.caption(f"Model {model}, method A {a} vs method B {b}, voxel set {sel.mask} for calibration metrics, "
               f"{len(sel.patients)} patients inside the filter, paired by patient. The model comparison's test: two-sided "
               "Wilcoxon signed-rank on the per-patient differences (zero differences dropped), interval from the "
               "Poisson patient bootstrap of the mean difference (1000 replicates); Holm over the three regions of "
               "each metric. TS never changes a segmentation, so Dice differences of +ts vs its base are 0.")


def draw_distributions():
    """per-patient Dice and ECE boxes; the fitted temperatures."""
    st.subheader("Per-patient distributions")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Dice per patient**")
        st.plotly_chart(memo.get(sel, ("dice_box",), lambda: plots.per_patient_box(
            views.metric_values(sel, list(SCATTER_METRICS), "dice"), "Dice", sel.colours, [0, 1.02])), key="dice_box")
    with c2:
        st.markdown(f"**ECE per patient ({sel.mask})**")
        st.plotly_chart(memo.get(sel, ("ece_box",), lambda: plots.per_patient_box(
            views.metric_values(sel, list(SCATTER_METRICS), "ece"), "ECE", sel.colours)), key="ece_box")

    temps = views.temperatures(sel)
    if not temps.empty:
        with st.expander("Temperatures (+ts methods), fitted on the calibration split"):
            st.caption(f"One temperature per model, method and region, fitted by NLL on the calibration split's "
                       f"{views.temperature_fit_set(sel)}, on the logits of the method it serves.")
            st.dataframe(temps, hide_index=True, column_config={
                "temperature": st.column_config.NumberColumn(format="%.3f"),
                "nll_before": st.column_config.NumberColumn("NLL before (nats)", format="%.4f"),
                "nll_after": st.column_config.NumberColumn("NLL after (nats)", format="%.4f")})


for tab, draw in zip(TAB_WIDGETS, (draw_overview, draw_leaderboard, draw_patients, draw_paired, draw_paired_methods,
                                   draw_distributions)):
    if tab.open:  # the others are not computed
        with tab:
            draw()

start_prefetch()  # per-group sums for the first move of the entropy filter, in the background
