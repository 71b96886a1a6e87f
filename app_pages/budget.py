"""Review budget (paper 003): errors captured and uncertainty-error overlap when a reviewer checks the most
uncertain voxels, from the patients' summed uncertainty bins."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import metrics as M
from core.store import dense_uncertainty_bins
from dashboard.state import REGIONS, current_selection, query

st.title("Review budget")
sel = current_selection()
if sel is None:
    st.stop()
if not sel.models or not sel.patients:
    st.info("Select at least one model and keep at least one patient in the entropy filter.")
    st.stop()
c1, c2 = st.columns(2)
region = c1.radio("Region", REGIONS, horizontal=True, key="budget_region")
max_budget = c2.select_slider("Budget axis up to (% of voxels)", [5, 10, 20, 50], value=5, key="budget_max")
st.caption(f"Region **{region}** · voxel set **{sel.mask}** · {len(sel.patients)} patients · all methods of the run. "
           "The reviewer checks the given share of the voxel set, most uncertain (entropy) first; pooled over patients.")
budgets = np.round(np.linspace(max_budget / 100 / 100, max_budget / 100, 100), 6)
rows, curves = [], []
summed = query(sel.db, "summed_uncertainty_bins", sel.run_id, sel.patients, mask=sel.mask, measure="entropy")
for (model, method), g in summed[(summed.region == region) & summed.model.isin(sel.models)].groupby(["model", "method"]):
    d = dense_uncertainty_bins(g)
    cap, ueo = M.budget_curve(d["n_error"], d["n_correct"], budgets)
    cap5, ueo5 = M.budget_curve(d["n_error"], d["n_correct"])
    curves.append(pd.DataFrame({"model": model, "method": method, "budget": budgets * 100, "captured": cap, "ueo": ueo}))
    rows.append({"model": model, "method": method, "capture AUC 0-5 %": M.budget_auc(cap5), "UEO AUC 0-5 %": M.budget_auc(ueo5),
                 "captured at 5 %": cap5[-1], "AUROC entropy": M.auroc_from_bins(d["n_error"], d["n_correct"]),
                 "AUROC FP vs TP": M.auroc_from_bins(d["n_fp"], d["n_tp"]), "AUROC FN vs TN": M.auroc_from_bins(d["n_fn"], d["n_tn"]),
                 "error voxels": int(d["n_error"].sum()), "voxels": int(d["n_error"].sum() + d["n_correct"].sum())})
if not rows:
    st.info("No uncertainty bins for this selection (a run without ground truth has none).")
    st.stop()
curves = pd.concat(curves)
dashes = {m: d for m, d in zip(sorted(curves.method.unique()), ["solid", "dash", "dot", "dashdot"] * 3)}
for col, label in (("captured", "share of all errors captured"), ("ueo", "uncertainty-error overlap (Dice)")):
    fig = go.Figure()
    for (model, method), g in curves.groupby(["model", "method"]):
        fig.add_trace(go.Scatter(x=g.budget, y=g[col], mode="lines", name=f"{model} · {method}",
                                 line=dict(color=sel.colours.get(model), dash=dashes[method]),
                                 hovertemplate="budget %{x:.2f} %<br>%{y:.3f}<extra>" + f"{model} · {method}</extra>"))
    fig.update_layout(height=360, margin=dict(t=30, b=40, l=50, r=20), xaxis=dict(title="voxels reviewed (% of the voxel set)"),
                      yaxis=dict(title=label, range=[0, 1]), legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(fig, key=f"budget_{col}")
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns
                                                    if table[c].dtype.kind == "f"})
st.download_button("Download (CSV)", table.to_csv(index=False), file_name=f"budget_{sel.run_id}_{region}.csv", mime="text/csv")
st.caption("AUC 0-5 %: area under the curve over budgets 0.1-5 % (from (0, 0)), divided by 5 %. FP vs TP: among "
           "predicted-tumour voxels; FN vs TN: among predicted-background voxels (paper 003).")
