"""Review worklist (issue 25): the sidebar's patients for one model, ordered by a priority, with the latest review
decision of each (append-only store core.review, reviews.sqlite beside the results database)."""
from urllib.parse import urlencode

import streamlit as st

from dashboard import reads, tables
from dashboard.sidebar import require_selection
from dashboard.tables import csv_later

from dashboard import review

PRIORITIES = ["most uncertain (mean WT entropy, predicted region)",
              "lowest predicted quality (quality model's predicted WT Dice)", "lowest Dice (WT)",
              "largest disagreement with another model (|Δ WT Dice|)",
              "review budget ranking (share of the cohort's most uncertain voxels)"]
BUDGETS = {"0.5 %": 0.005, "1 %": 0.01, "2 %": 0.02, "5 %": 0.05}

st.title("Review worklist")
sel = require_selection()
store_path = review.review_path(sel.db)
c1, c2 = st.columns(2)
model = c1.selectbox("Model", sel.models, key="review_model")
priority = c2.selectbox("Priority", PRIORITIES, key="review_priority")
m = reads.patient_metrics(sel.db, sel.run_id, list(sel.patients), metrics=["dice", "mean_entropy"])
m = m[(m.method == sel.method) & (m.region == "WT")]
wide = m[m["mask"].isin(["pred", "brain"])].assign(col=lambda d: d.metric + "_" + d["mask"]) \
    .pivot_table(index=["model", "patient_id"], columns="col", values="value").reset_index()
rows = wide[wide.model == model].drop(columns="model")
rows = rows.rename(columns={c: c.replace("dice_brain", "dice_WT").replace("mean_entropy_", "entropy_WT_")
                            for c in rows.columns})
rows = rows[[c for c in rows.columns if c != "dice_pred"]]
if "dice_WT" not in rows:
    rows["dice_WT"] = float("nan")
if "entropy_WT_pred" not in rows:
    rows["entropy_WT_pred"] = float("nan")
qual = reads.quality_patients(sel.db, sel.run_id, sel.method, "WT")
qual = qual[qual.model == model].set_index("patient_id")
rows["predicted_dice_WT"] = rows.patient_id.map(qual.predicted_dice) if len(qual) else float("nan")
rows["flagged"] = rows.patient_id.map(qual.flagged) if len(qual) else None
les = reads.patient_metrics(sel.db, sel.run_id, list(sel.patients), metrics=["lesion_tp", "lesion_fp", "lesion_fn"])
les = les[(les.method == sel.method) & (les.model == model) & (les["mask"] == "brain")]
if len(les):  # lesion counts (BraTS lesion-wise matching): predicted = TP + FP, missed = FN
    lw = les.pivot_table(index="patient_id", columns=["metric", "region"], values="value")
    for reg in ("WT", "ET"):
        if ("lesion_tp", reg) in lw and ("lesion_fp", reg) in lw:
            rows[f"lesions_pred_{reg}"] = rows.patient_id.map(lw[("lesion_tp", reg)] + lw[("lesion_fp", reg)])
        if ("lesion_fn", reg) in lw:
            rows[f"lesions_missed_{reg}"] = rows.patient_id.map(lw[("lesion_fn", reg)])
if priority == PRIORITIES[0]:
    rows = rows.sort_values(["entropy_WT_pred", "patient_id"], ascending=[False, True])
elif priority == PRIORITIES[1]:
    if not len(qual):
        st.info("No quality prediction in this run for this method (it needs enough patients with ground truth); "
                "pick another priority.")
    rows = rows.sort_values(["predicted_dice_WT", "patient_id"], ascending=[True, True], na_position="last")
elif priority == PRIORITIES[2]:
    rows = rows.sort_values(["dice_WT", "patient_id"], ascending=[True, True])
elif priority == PRIORITIES[4]:
    b_label = st.selectbox("Review budget (share of the filter's brain voxels)", list(BUDGETS), index=1,
                           key="review_budget")
    rank, info = reads.review_budget_ranking(sel.db, sel.run_id, model, sel.method, "WT", BUDGETS[b_label],
                                             list(sel.patients))
    st.caption(f"Cohort threshold: WT entropy ≥ {info['threshold']:.3g} (the most uncertain {b_label} of "
               f"{info['budget_voxels'] / BUDGETS[b_label]:,.0f} brain voxels = {info['budget_voxels']:,.0f} voxels). "
               "`review_share`: the patient's part of that budget; `capture`: the share of its WT errors inside it.")
    rows = rows.merge(rank[["patient_id", "review_share", "cumulative_share", "capture"]], on="patient_id", how="left")
    rows = rows.sort_values(["review_share", "patient_id"], ascending=[False, True], na_position="last")
else:
    others = [x for x in sel.models if x != model]
    if not others:
        st.info("Select a second model in the sidebar to rank by disagreement.")
        st.stop()
    other = st.selectbox("Other model", others, key="review_other")
    od = wide[wide.model == other].set_index("patient_id").get("dice_brain")
    rows["disagreement"] = (rows.dice_WT - rows.patient_id.map(od)).abs() if od is not None else float("nan")
    rows = rows.sort_values(["disagreement", "patient_id"], ascending=[False, True])
rows = review.with_status(rows.reset_index(drop=True), review.current_status(store_path, sel.run_id, model))
statuses = st.multiselect("Show statuses", list(review.STATUSES), default=list(review.STATUSES),
                          key="review_statuses")
rows = rows[rows.status.isin(statuses)].reset_index(drop=True)
base = "./viewer?" + urlencode({"db": str(st.query_params.get("db", "")), "run": sel.run_id, "method": sel.method,
                                "mask": sel.mask, "focus": "uncertainty"})
rows["open"] = tables.viewer_links(base, rows.patient_id, rows.patient_id.map(lambda _: model))
st.caption(f"Model **{model}** · method **{sel.method}** · {len(rows)} patients · ordered by {priority}. "
           "Disagreement is the absolute difference of the two models' stored WT Dice (brain), not the Dice "
           "between their label maps. Reviews are stored in `reviews.sqlite` beside the database.")
st.dataframe(rows, hide_index=True, key="review_table",
             column_config={"open": st.column_config.LinkColumn(
                 "viewer", display_text="viewer ↗", help="opens the viewer at this model's most uncertain slice")})
st.download_button("Download worklist (CSV)", csv_later(rows), file_name=f"review_{sel.run_id}_{model}.csv",
                   mime="text/csv", key="review_csv")
st.subheader("Record a decision")
pid = review.decision_form("review_form", "review", store_path, sel.run_id, model, None,
                           patients=rows.patient_id.tolist() or list(sel.patients))
if pid:
    st.subheader("History")
    st.dataframe(review.history(store_path, sel.run_id, model, pid), hide_index=True, key="review_history")

st.subheader("Export for correction")
n_fix = int((rows.status == "needs correction").sum())
if st.button(f"Prepare the label maps of the {n_fix} 'needs correction' patients (NIfTI, zip)", key="review_export",
             disabled=n_fix == 0):
    try:
        data, n = review.export_zip(sel.db, sel.run_id, model, sel.method, rows.patient_id.tolist())
        st.download_button(f"Download {n} patients' segmentations to correct (zip)", data,
                           file_name=f"needs_correction_{sel.run_id}_{model}.zip", mime="application/zip",
                           key="review_zip")
    except ValueError as exc:
        st.error(str(exc))
st.caption("The zip holds one folder per patient (BraTS naming: `<id>_seg.nii.gz` = this model's label map of "
           f"{sel.method}, and the patient's images) and `worklist.csv`; same as `python -m core export-reviews`.")

