"""Home: what is in the database (cohort, runs, models, evaluations, failures)."""
import streamlit as st

from dashboard import memo, reads, review, views
from dashboard.tables import arrow
from dashboard.sidebar import current_selection

st.title("Tumour segmentation QA: uncertainty and calibration")
st.caption("Dice alone hides silent failures: compare models on Dice, uncertainty-error AUROC and sub-region "
           "calibration (WT / TC / ET), then find the patients whose segmentation needs a human look.")
sel = current_selection()
if sel is None:
    st.stop()

st.subheader("What this database says")
f = views.home_findings(sel)
st.caption(f"Method **{sel.method}** · voxel set **{sel.mask}** · {f['n_patients']} patients · 95 % patient-bootstrap "
           "intervals in brackets; a best model whose interval overlaps the runner-up's is not clearly better.")
if f["best_dice"].empty:
    st.info("No leaderboard rows for this selection (no ground truth, or no ok evaluation of this method).")
else:
    lb_link = views.page_params(sel, view="Leaderboard")
    for col, (key, label) in zip(st.columns(2), [("best_dice", "Best Dice"), ("best_ece", "Best calibration (lowest dataset ECE)")]):
        with col.container(border=True):
            st.markdown(f"**{label}**")
            for r in f[key].itertuples():
                vs = (f" · {'clearly ahead of' if r.separated else 'overlaps'} {r.runner_up} ({r.runner_value:.3f})"
                      if r.runner_up else "")
                st.markdown(f"**{r.region}**: {r.model} {r.value:.3f} [{r.lo:.3f}, {r.hi:.3f}]{vs}")
            views.page_link("app_pages/compare.py", "Open the leaderboard", ":material/leaderboard:",
                            lb_link)
    c1, c2 = st.columns(2)
    w = f["worst"]
    with c1.container(border=True):
        if w:
            st.markdown(f"**Worst-calibrated region: {w['region']}** (mean dataset ECE {w['mean_ece']:.3f} over the "
                        f"models; worst {w['model']} {w['value']:.3f} [{w['lo']:.3f}, {w['hi']:.3f}])")
            views.page_link("app_pages/reliability.py", f"Reliability diagram of {w['region']}",
                            ":material/stacked_line_chart:", views.page_params(sel, region=w["region"]))
    with c2.container(border=True):
        by = f["flagged_by_region"]
        st.markdown(f"**{f['flagged']} patients flagged for review** by the quality model"
                    + (" (" + ", ".join(f"{r} {n}" for r, n in by.items()) + ")" if by else ""))
        if by:
            top = max(by, key=by.get)
            views.page_link("app_pages/quality.py", f"Flagged patients ({top})", ":material/fact_check:",
                            views.page_params(sel, region=top))
st.download_button("Download the study report (HTML)", lambda: views.report_html(sel),
                   file_name=f"report_{sel.run_id}_{sel.method}.html", mime="text/html", icon=":material/download:",
                   help="One self-contained HTML file (opens offline): provenance, model comparison with intervals, "
                        "reliability diagrams, strata, paired tests, flagged patients. Same as `python -m core report`.")

st.subheader("Run")
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
    st.dataframe(memo.get(sel, ("home_patients",), lambda: arrow(
        pts[["patient_id", "split", "kind", "label_scheme", "shape", "spacing", "has_gt"]])), hide_index=True, height=240)

st.subheader("Models")
for model, checkpoint, card in views.model_cards(sel):
    with st.expander(f"{model}: {card['arch']}, channels {', '.join(card['channels'])} -> {', '.join(card['regions'])}"):
        st.markdown(f"checkpoint `{checkpoint}` · spacing {card['spacing_mm']} mm · normalisation `{card['normalisation']}`")
        st.json(card)

fails = reads.failures(sel.db, sel.run_id)
if not fails.empty:
    st.subheader(f"Failed evaluations ({len(fails)})")
    st.dataframe(fails, hide_index=True)

# counted only when opened (on_change="rerun" makes the expander's state known): counting every stored bin of a
# 50,000-patient database (1.2 billion) takes seconds
with st.expander("Database tables (row counts)", key="home_db_tables", on_change="rerun") as db_tables:
    if db_tables.open:
        st.dataframe(reads.table_counts(sel.db), hide_index=True)

st.subheader("Review progress")
_prog = review.progress(review.review_path(sel.db), sel.run_id, {m: len(sel.all_patients) for m in sel.all_models})
st.dataframe(_prog, hide_index=True, key="review_progress",
             column_config={"accepted_share": st.column_config.NumberColumn(format="%.2f")})
st.caption("Reviewed: patients whose latest decision on the Review worklist page is not 'to review' (reviews.sqlite "
           "beside the database); accepted share of those reviewed.")
