"""Patient strata: patients grouped by quantile of their uncertainty, Dice per stratum, the filtered
subgroup's cohort metrics (from bins), and a triage table to export."""
import streamlit as st

from dashboard import memo, plots, views
from dashboard.prefetch import start_prefetch
from dashboard.sidebar import require_selection
from dashboard.tables import csv_later

st.title("Patient strata")
sel = require_selection(patients=False)
n_strata = st.select_slider("Number of strata (quantiles)", [2, 3, 4, 5], value=4, key="n_strata")
view = views.strata_view(sel)  # the strata do not depend on the sidebar's quantile range: built once per view
vals, labels, dice = views.strata_table(view, n_strata, sel)
st.caption(f"Strata of **{sel.strat_measure}** of **{sel.strat_model}** ({sel.method}) over all {len(vals)} patients; "
           f"the sidebar filter keeps {len(sel.patients)} of them (quantiles {sel.q_range[0]}-{sel.q_range[1]} %).")
if len(vals) < n_strata:
    st.info("Not enough patients with a value of this measure for the strata.")
    st.stop()
region = st.radio("Region", views.REGIONS, horizontal=True, key="strata_region")
rows, med = views.strata_region(view, n_strata, region, labels, dice)
st.plotly_chart(memo.get(sel, ("strata_box", n_strata, region), lambda: plots.strata_box(
    rows, labels, sel.colours, f"stratum of {sel.strat_measure} (Q1 = least uncertain)", f"{region} Dice")),
    key="strata_box")
st.markdown(f"**Median {region} Dice per stratum**")
st.dataframe(med.round(3))

st.subheader("Cohort metrics of the filtered subgroup")
if not sel.patients:
    st.warning("No patient inside the entropy filter: widen the quantile range.")
else:
    st.dataframe(views.subgroup_summary(sel), hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                ["dice_mean", "dice_median", "auroc_entropy_dataset", "ece_dataset", "mean_entropy"]})

st.subheader("Triage table")
st.caption("Patients inside the filter, most uncertain first: review from the top.")
tri = memo.get(sel, ("triage", n_strata), lambda: views.triage(sel, view, n_strata, dice))
st.dataframe(tri, hide_index=True, key="triage")
st.download_button("Download triage table (CSV)", csv_later(tri),
                   file_name=f"triage_{sel.run_id}_{sel.strat_model}_{sel.method}.csv", mime="text/csv")

start_prefetch()  # per-group sums for the first move of the entropy filter, in the background
