"""Patient strata: patients grouped by quantile of their uncertainty, Dice per stratum, the filtered
subgroup's cohort metrics (from bins), and a triage table to export."""
import streamlit as st

from core import summaries
from dashboard import plots
from dashboard.state import (STRAT_MEASURES, in_filter, patient_table, require_selection, start_prefetch,
                             subset_summary)
from dashboard.tables import csv_later

st.title("Patient strata")
sel = require_selection(patients=False)
n_strata = st.select_slider("Number of strata (quantiles)", [2, 3, 4, 5], value=4, key="n_strata")
# the strata, their Dice boxes and medians do not depend on the sidebar's quantile range: built once per view
view = (str(sel.db), sel.db.stat().st_mtime, sel.run_id, sel.method, tuple(sel.models), sel.strat_model,
        sel.strat_measure, sel.groups_key, n_strata)


@st.cache_resource(max_entries=8, show_spinner=False)
def strata_table(view: tuple, _sel):
    """(strata of every patient, labels, per-patient Dice / ECE / HD95 of the selected models with their stratum)."""
    vals, labels = summaries.strata(_sel.measure_values, view[-1])
    dice = patient_table(_sel, ["dice", "ece", "hd95"], method=_sel.method, subset=False)
    dice = dice[dice.model.isin(_sel.models)].merge(vals[["patient_id", "stratum", "value"]], on="patient_id")
    return vals, labels, dice


@st.cache_resource(max_entries=24, show_spinner=False)
def strata_region(view: tuple, region: str, _sel, _labels, _dice):
    """(Dice box per stratum and model, median Dice per model x stratum) of one region."""
    d = _dice[_dice.region == region]
    fig = plots.strata_box(d, _labels, _sel.colours, f"stratum of {_sel.strat_measure} (Q1 = least uncertain)",
                           f"{region} Dice")
    return fig, d.groupby(["model", "stratum"]).dice.median().unstack().reindex(columns=_labels)


vals, labels, dice = strata_table(view, sel)
st.caption(f"Strata of **{sel.strat_measure}** of **{sel.strat_model}** ({sel.method}) over all {len(vals)} patients; "
           f"the sidebar filter keeps {len(sel.patients)} of them (quantiles {sel.q_range[0]}-{sel.q_range[1]} %).")
if len(vals) < n_strata:
    st.info("Not enough patients with a value of this measure for the strata.")
    st.stop()
region = st.radio("Region", ["WT", "TC", "ET"], horizontal=True, key="strata_region")
fig, med = strata_region(view, region, sel, labels, dice)
st.plotly_chart(fig, key="strata_box")
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


@st.cache_resource(max_entries=8, show_spinner=False)
def triage_all(view: tuple, _sel, _dice):
    """One row per patient of the stratifying model (every patient), most uncertain first."""
    tri = _dice[_dice.model == _sel.strat_model]
    tri = tri.pivot_table(index=["patient_id", "stratum", "value"], columns="region", values="dice").reset_index()
    tri = tri.rename(columns={"value": STRAT_MEASURES[_sel.strat_measure][0],
                              **{r: f"dice_{r}" for r in ["WT", "TC", "ET"]}})
    return tri.sort_values(tri.columns[2], ascending=False)


tri = triage_all(view, sel, dice)
tri = tri[in_filter(sel, tri.patient_id)]
st.dataframe(tri, hide_index=True, key="triage")
st.download_button("Download triage table (CSV)", csv_later(tri),
                   file_name=f"triage_{sel.run_id}_{sel.strat_model}_{sel.method}.csv", mime="text/csv")

start_prefetch()  # per-group sums for the first move of the entropy filter, in the background
