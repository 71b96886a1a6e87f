"""Patient strata: patients grouped by quantile of their uncertainty, Dice per stratum, the filtered
subgroup's cohort metrics (from bins), and a triage table to export."""
import streamlit as st

from core import summaries
from dashboard import plots
from dashboard.state import STRAT_MEASURES, patient_table, require_selection, start_prefetch, subset_summary
from dashboard.tables import csv_later

st.title("Patient strata")
sel = require_selection(patients=False)
n_strata = st.select_slider("Number of strata (quantiles)", [2, 3, 4, 5], value=4, key="n_strata")
vals, labels = summaries.strata(sel.measure_values, n_strata)
st.caption(f"Strata of **{sel.strat_measure}** of **{sel.strat_model}** ({sel.method}) over all {len(vals)} patients; "
           f"the sidebar filter keeps {len(sel.patients)} of them (quantiles {sel.q_range[0]}-{sel.q_range[1]} %).")
if len(vals) < n_strata:
    st.info("Not enough patients with a value of this measure for the strata.")
    st.stop()
dice = patient_table(sel, ["dice", "ece", "hd95"], method=sel.method, subset=False)
dice = dice[dice.model.isin(sel.models)].merge(vals[["patient_id", "stratum", "value"]],
                                                                              on="patient_id")
region = st.radio("Region", ["WT", "TC", "ET"], horizontal=True, key="strata_region")
d = dice[dice.region == region]
fig = plots.strata_box(d, labels, sel.colours, f"stratum of {sel.strat_measure} (Q1 = least uncertain)", f"{region} Dice")
st.plotly_chart(fig, key="strata_box")
med = d.groupby(["model", "stratum"]).dice.median().unstack().reindex(columns=labels)
st.markdown(f"**Median {region} Dice per stratum**")
st.dataframe(med.round(3))

st.subheader("Cohort metrics of the filtered subgroup")
if not sel.patients:
    st.warning("No patient inside the entropy filter: widen the quantile range.")
else:
    summ = subset_summary(sel, methods=[sel.method])
    summ = summ[(summ.method == sel.method) & summ.model.isin(sel.models)]
    st.dataframe(summ[["model", "region", "n_patients", "dice_mean", "dice_median", "auroc_entropy_dataset", "ece_dataset",
                       "mean_entropy"]], hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                ["dice_mean", "dice_median", "auroc_entropy_dataset", "ece_dataset", "mean_entropy"]})

st.subheader("Triage table")
st.caption("Patients inside the filter, most uncertain first: review from the top.")
tri = dice[dice.patient_id.isin(sel.patients) & (dice.model == sel.strat_model)]
tri = tri.pivot_table(index=["patient_id", "stratum", "value"], columns="region", values="dice").reset_index()
tri = tri.rename(columns={"value": STRAT_MEASURES[sel.strat_measure][0], **{r: f"dice_{r}" for r in ["WT", "TC", "ET"]}})
tri = tri.sort_values(tri.columns[2], ascending=False)
st.dataframe(tri, hide_index=True, key="triage")
st.download_button("Download triage table (CSV)", csv_later(tri),
                   file_name=f"triage_{sel.run_id}_{sel.strat_model}_{sel.method}.csv", mime="text/csv")

start_prefetch()  # per-group sums for the first move of the entropy filter, in the background
