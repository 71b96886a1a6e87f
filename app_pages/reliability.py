"""Reliability: dataset-level reliability diagrams over the spread of per-patient curves, the dataset
reliability histogram (paper 004), per-patient ECE, over/under-confident shares (paper 002), worst patients."""
import streamlit as st

from dashboard import memo, plots, views
from dashboard.sidebar import require_selection
from dashboard.tables import csv_later

st.title("Reliability")
sel = require_selection()
region = st.radio("Region", views.REGIONS, horizontal=True, key="rel_region",
                  index=views.url_region())
st.caption(f"Method **{sel.method}** · region **{region}** · voxel set **{sel.mask}** · {len(sel.patients)} patients · "
           f"{views.N_CAL_BINS} equal-width bins of the region probability")

curves, bands, hists = views.reliability_curves(sel, region)
if not curves:
    st.info("No calibration bins for this selection (a run without ground truth has none).")
    st.stop()

st.plotly_chart(memo.get(sel, ("reliability", region), lambda: plots.reliability_diagram(
    curves, bands, sel.colours, f"Reliability diagram, {region}, {sel.mask} (dataset curve over patients' 10-90 % band)")),
    key="reliability")
st.subheader("Dataset reliability histograms")
st.caption("Per confidence bin (column), the distribution of the patients' accuracy in that bin; columns sum to 1 "
           "(paper 004). A well-calibrated model keeps the mass on the diagonal for every patient, not only on average.")
cols = st.columns(len(hists))
for c, (model, h) in zip(cols, hists.items()):
    with c:
        st.plotly_chart(memo.get(sel, ("rel_hist", region, model), lambda: plots.reliability_histogram(
            h, views.N_CAL_BINS, model)), key=f"hist_{model}")

wide = views.calibration_patients(sel, region)
st.subheader("Per-patient calibration")
c1, c2 = st.columns(2)
with c1:
    st.plotly_chart(memo.get(sel, ("ece_hist", region), lambda: plots.histogram(
        wide, "ece", sel.colours, f"ECE per patient ({sel.mask})")), key="ece_hist")
with c2:
    tab = memo.get(sel, ("confidence_shares", region), lambda: views.confidence_shares(wide))
    st.markdown("**Share of patients over- / under-confident**: per confidence bin, confidence vs accuracy of the "
                "predicted label (paper 002, Fig. 1); over-confidence = sum_k n_k/N max(0, conf_k - acc_k), "
                "under-confidence the other sign, their sum the ECE. Within tolerance: both <= "
                f"{views.GAP_TOL}; else the larger names the patient.")
    st.dataframe(tab, key="gap_share")
st.subheader("Worst-calibrated patients")
st.dataframe(views.worst_calibrated(wide), hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in views.CALIBRATION_METRICS})
st.download_button("Download per-patient calibration (CSV)", csv_later(wide),
                   file_name=f"calibration_{sel.run_id}_{sel.method}_{region}_{sel.mask}.csv", mime="text/csv")
with st.expander("Definitions"):
    st.markdown(
        "- **ECE** = sum_k n_k/N |acc_k - conf_k| over 20 equal-width bins of the region probability p "
        "(bin k holds k/20 <= p < (k+1)/20; p = 1 in the last bin).\n"
        "- **ACE** = mean of |acc_k - conf_k| over the non-empty bins; **MCE** = their maximum.\n"
        "- **Over- / under-confidence**: in each bin, confidence and accuracy of the predicted label (p >= 0.5: "
        "tumour, confidence p; below: background, confidence 1 - p); over = sum_k n_k/N max(0, confidence_k - "
        "accuracy_k), under = sum_k n_k/N max(0, accuracy_k - confidence_k); over + under = ECE.\n"
        "- **cal_gap** = mean p - mean y: over- (> 0) or under- (< 0) *segmentation* in probability, not confidence.\n"
        "- **Brier** = mean (p - y)^2; **NLL** = mean -ln(probability of the true label).\n"
        "- **Dataset** curves sum the patients' bins (pooled voxels); the band is the 10-90 % range of the "
        "patients' own accuracy per bin.\n"
        "- **brain**: non-zero input voxels; **roi**: ground truth and prediction dilated by 3 voxels.")
