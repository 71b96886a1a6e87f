"""Compare models: Dice, AUROC and ECE per region side by side, on the patients inside the entropy filter."""
import streamlit as st

from dashboard import plots
from dashboard.state import query, require_selection

st.title("Compare models")
sel = require_selection(patients=False)
st.caption(f"Method **{sel.method}** · voxel set **{sel.mask}** · {len(sel.patients)} of {len(sel.all_patients)} "
           f"patients (entropy quantiles {sel.q_range[0]}-{sel.q_range[1]} % of {sel.strat_measure}, {sel.strat_model})")
if not sel.patients:
    st.warning("No patient inside the entropy filter: widen the quantile range.")
    st.stop()

summary = query(sel.db, "cohort_summary", sel.run_id, sel.patients, mask=sel.mask)
summary = summary[(summary.method == sel.method) & summary.model.isin(sel.models)]
if summary.empty:
    st.info("No ok evaluation for this selection.")
    st.stop()

st.plotly_chart(plots.side_by_side(summary, sel.colours), key="side_by_side")

table = summary[["model", "region", "n_patients", "dice_mean", "dice_median", "auroc_entropy_dataset",
                 "auroc_entropy_mean", "auroc_nan", "ece_dataset", "ece_mean", "ace_dataset", "mce_dataset",
                 "mean_entropy"]].sort_values(["region", "model"])
fmt = {c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if table[c].dtype.kind == "f"}
st.dataframe(table, hide_index=True, column_config={
    **fmt,
    "n_patients": st.column_config.NumberColumn("patients"),
    "auroc_nan": st.column_config.NumberColumn("AUROC NaN", help="patients skipped: no error (or no correct) voxel"),
    "auroc_entropy_dataset": st.column_config.NumberColumn("AUROC pooled", format="%.3f"),
    "auroc_entropy_mean": st.column_config.NumberColumn("AUROC mean", format="%.3f"),
    "ece_dataset": st.column_config.NumberColumn("ECE dataset", format="%.4f"),
    "ece_mean": st.column_config.NumberColumn("ECE mean/patient", format="%.4f"),
})
st.download_button("Download table (CSV)", table.to_csv(index=False), file_name=f"compare_{sel.run_id}_{sel.method}.csv",
                   mime="text/csv")
st.caption("Dice: mean over patients (BraTS empty rules). AUROC pooled: entropy vs voxel error from the summed "
           "per-patient histograms; AUROC mean: mean of per-patient AUROC (NaN patients skipped). ECE dataset: 20 "
           "equal-width bins summed over the patients; ECE mean: mean of per-patient ECE.")

st.subheader("Per-patient distributions")
long = query(sel.db, "patient_metrics", sel.run_id, sel.patients, metrics=["dice", "ece"], mask=sel.mask)
long = long[(long.method == sel.method) & long.model.isin(sel.models)]
c1, c2 = st.columns(2)
with c1:
    st.markdown("**Dice per patient**")
    st.plotly_chart(plots.per_patient_box(long[long.metric == "dice"], "Dice", sel.colours, [0, 1.02]), key="dice_box")
with c2:
    st.markdown(f"**ECE per patient ({sel.mask})**")
    st.plotly_chart(plots.per_patient_box(long[(long.metric == "ece") & (long["mask"] == sel.mask)], "ECE", sel.colours),
                    key="ece_box")

st.subheader("All methods of the run")
everything = query(sel.db, "cohort_summary", sel.run_id, sel.patients, mask=sel.mask)
everything = everything[everything.model.isin(sel.models)]
methods_table = everything[["model", "method", "region", "n_patients", "dice_mean", "auroc_entropy_dataset", "ece_dataset",
                            "ace_dataset", "mce_dataset", "mean_entropy"]].sort_values(["region", "model", "method"])
st.dataframe(methods_table, hide_index=True, column_config={
    **{c: st.column_config.NumberColumn(format="%.3f") for c in methods_table.columns if methods_table[c].dtype.kind == "f"},
    "ece_dataset": st.column_config.NumberColumn(f"ECE dataset ({sel.mask})", format="%.4f"),
    "n_patients": st.column_config.NumberColumn("patients")})
st.download_button("Download methods table (CSV)", methods_table.to_csv(index=False),
                   file_name=f"methods_{sel.run_id}_{sel.mask}.csv", mime="text/csv")
st.caption("Methods: deterministic, mc_dropout (T samples), tta (8 flips), ensemble (deep ensemble), "
           "checkpoint_ensemble (snapshots of one run), auxiliary (error network, paper 002); +tta runs every pass on "
           "the 8 flips, +ts divides logits by the temperature fitted on the calibration split.")
temps = query(sel.db, "run_temperatures", sel.run_id)
if not temps.empty:
    with st.expander("Temperatures (+ts methods), fitted on the calibration split"):
        st.dataframe(temps[temps.model.isin(sel.models)], hide_index=True, column_config={
            "temperature": st.column_config.NumberColumn(format="%.3f"),
            "nll_before": st.column_config.NumberColumn("NLL before (nats)", format="%.4f"),
            "nll_after": st.column_config.NumberColumn("NLL after (nats)", format="%.4f")})
