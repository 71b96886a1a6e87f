"""Review budget (paper 003): errors captured and uncertainty-error overlap when a reviewer checks the most
uncertain voxels, from the patients' summed uncertainty bins."""
import streamlit as st

from dashboard import memo, plots, views
from dashboard.prefetch import start_prefetch
from dashboard.sidebar import require_selection
from dashboard.tables import csv_later

st.title("Review budget")
sel = require_selection()
c1, c2 = st.columns(2)
region = c1.radio("Region", views.REGIONS, horizontal=True, key="budget_region")
max_budget = c2.select_slider("Budget axis up to (% of voxels)", [5, 10, 20, 50], value=5, key="budget_max")
methods = st.multiselect("Methods", sel.methods, default=[sel.method], key="budget_methods",
                         help="the sidebar's method by default; add others to compare their curves")
methods = methods or [sel.method]
st.caption(f"Region **{region}** · voxel set **{sel.mask}** · {len(sel.patients)} patients · methods "
           f"{', '.join(methods)}. The reviewer checks the given share of the voxel set, most uncertain (entropy) "
           "first; pooled over patients.")
curves, table = views.budget(sel, region, methods, max_budget)
if table.empty:
    st.info("No uncertainty bins for this selection (a run without ground truth has none).")
    st.stop()
for col, label in (("captured", "share of all errors captured"), ("ueo", "uncertainty-error overlap (Dice)")):
    st.plotly_chart(memo.get(sel, ("budget_curves", region, tuple(methods), max_budget, col), lambda: plots.budget_curves(
        curves, col, label, sel.colours)), key=f"budget_{col}")
st.dataframe(table, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f")
                                                    for c in views.float_columns(table)})
st.download_button("Download (CSV)", csv_later(table), file_name=f"budget_{sel.run_id}_{region}.csv", mime="text/csv")
st.caption("AUC 0-5 %: area under the curve over budgets 0.1-5 % (from (0, 0)), divided by 5 %. FP vs TP: among "
           "predicted-tumour voxels; FN vs TN: among predicted-background voxels (paper 003).")

st.subheader("Uncertainty-error overlap at one cohort threshold (paper 002)")
ueo_summary, ueo_patients = views.cohort_ueo(sel, region, methods)
if ueo_summary.empty:
    st.info("No uncertainty bins for this selection.")
else:
    for rec in ueo_summary.to_dict("records"):
        st.markdown(views.ueo_label(rec))
    st.dataframe(ueo_summary, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in views.float_columns(ueo_summary)
        if not c.startswith("t (")} | {c: st.column_config.NumberColumn(format="%.2f") for c in ("t (U-E)", "t (BnF)")},
        key="ueo_cohort_table")
    st.download_button("Download per-patient U-E (CSV)", csv_later(ueo_patients),
                       file_name=f"ueo_{sel.run_id}_{region}.csv", mime="text/csv", key="dl_ueo")
    st.caption(f"One threshold per model and method, chosen on these {len(sel.patients)} patients ({sel.mask}, "
               "entropy): U-E (Dice of {entropy >= t} and the error voxels) at the t in 0.05, 0.10, ..., 0.95 with "
               "the highest mean over patients, as paper 002 selects one threshold per method; BnF (share of patients "
               "whose Dice rises when the uncertain predicted voxels are removed) at its own best t. The oracle "
               "column gives each patient its own best t (the stored ueo_best): an optimistic upper bound, not a "
               "result. Pooled: from the summed counts at the cohort t.")

start_prefetch()  # per-group sums for the first move of the entropy filter, in the background
