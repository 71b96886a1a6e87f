"""Home: what is in the database (cohort, runs, models, evaluations, failures)."""
import streamlit as st

from dashboard import reads, views
from dashboard.sidebar import current_selection

st.title("Tumour segmentation QA: uncertainty and calibration")
st.caption("Dice alone hides silent failures: compare models on Dice, uncertainty-error AUROC and sub-region "
           "calibration (WT / TC / ET), then find the patients whose segmentation needs a human look.")
sel = current_selection()
if sel is None:
    st.stop()

run = views.run_row(sel)
c1, c2, c3, c4 = st.columns(4)
c1.metric("Patients evaluated", int(run.patients))
c2.metric("Evaluations ok", int(run.ok))
c3.metric("Evaluations failed", int(run.failed))
c4.metric("Device", str(run.device))
st.markdown(f"**Cohort** `{run.cohort}` · **run** `{sel.run_id}` · code `{run.code_version}` · created {run.created_at:%Y-%m-%d %H:%M}")

st.subheader("Evaluations per model and method")
st.dataframe(reads.evaluation_status(sel.db, sel.run_id), hide_index=True,
             column_config={"mean_seconds": st.column_config.NumberColumn("mean s / patient", format="%.2f")})

st.subheader("Patients")
pts = views.cohort_patients(sel)
if pts.empty:
    st.info("No patient rows yet.")
else:
    cols = st.columns(3)
    cols[0].metric("with ground truth", int(pts.has_gt.sum()))
    cols[1].metric("label schemes", ", ".join(sorted(pts.label_scheme.unique())))
    cols[2].metric("splits", ", ".join(sorted(str(s) for s in pts.split.dropna().unique())) or "-")
    st.dataframe(pts[["patient_id", "split", "kind", "label_scheme", "shape", "spacing", "has_gt"]], hide_index=True, height=240)

st.subheader("Models")
for model, checkpoint, card in views.model_cards(sel):
    with st.expander(f"{model}: {card['arch']}, channels {', '.join(card['channels'])} -> {', '.join(card['regions'])}"):
        st.markdown(f"checkpoint `{checkpoint}` · spacing {card['spacing_mm']} mm · normalisation `{card['normalisation']}`")
        st.json(card)

fails = reads.failures(sel.db, sel.run_id)
if not fails.empty:
    st.subheader(f"Failed evaluations ({len(fails)})")
    st.dataframe(fails, hide_index=True)

with st.expander("Database tables"):
    st.dataframe(reads.table_counts(sel.db), hide_index=True)
