"""Quality prediction (paper 001): Dice predicted without ground truth from the uncertainty maps, its
cross-validated R2 and Pearson r per model and method, and the patients flagged for review."""
import streamlit as st

from dashboard import plots, views
from dashboard.sidebar import require_selection
from dashboard.tables import csv_later

st.title("Quality prediction")
sel = require_selection(patients=False)
if views.run_has_quality(sel) is False:
    st.info("No quality prediction in this run: it needs at least 10 patients with ground truth per model and "
            "method (the regressor is fitted and validated on them). Runs without ground truth have none.")
    st.stop()
region = st.radio("Region", views.REGIONS, horizontal=True, key="quality_region",
                  index=views.url_region())
st.caption(f"Method **{sel.method}** · region **{region}** · predicted Dice = out-of-fold prediction of a ridge "
           "regression on per-patient uncertainty features (5-fold cross-validation), so no patient is scored by a "
           "regressor that saw its Dice. Uncertainty score: mean z-score of the region's entropy, MI, EPKL, "
           "1 - confidence and uncertain fraction.")
table, pts, flagged = views.quality(sel, region)
if pts.empty:
    st.info(f"No quality prediction for {sel.method} / {region} and the selected models.")
else:
    st.plotly_chart(plots.predicted_vs_true(pts, sel.colours), key="quality_scatter")
st.markdown("**Cross-validated agreement per model and method**")
st.dataframe(table, hide_index=True, column_config={
    "n_patients": st.column_config.NumberColumn("patients"),
    "r2": st.column_config.NumberColumn("R²", format="%.3f", help="scikit-learn r2_score(Dice, predicted Dice)"),
    "pearson_r": st.column_config.NumberColumn("Pearson r", format="%.3f"),
    "score_spearman": st.column_config.NumberColumn("score vs Dice (Spearman)", format="%.3f",
                                                    help="negative: higher uncertainty score, lower Dice")})
st.download_button("Download summary (CSV)", csv_later(table), file_name=f"quality_{sel.run_id}_{region}.csv",
                   mime="text/csv")
st.markdown("**Patients flagged for review** (predicted Dice in the lowest quarter, or below 0.5)")
if flagged.empty:
    st.info("No flagged patient for this selection.")
else:
    st.dataframe(flagged, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("dice", "predicted_dice", "uncertainty_score")})
    st.download_button("Download flagged patients (CSV)", csv_later(flagged),
                       file_name=f"flagged_{sel.run_id}_{sel.method}_{region}.csv", mime="text/csv")
