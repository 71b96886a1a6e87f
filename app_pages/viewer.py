"""Patient viewer: one patient, slice by slice, with ground truth / prediction / uncertainty / error overlays
for up to two models side by side, that patient's metrics and its NIfTI maps to download."""
from pathlib import Path

import streamlit as st

from dashboard import reads, review, views
from dashboard import viewer as V
from dashboard.sidebar import require_selection

st.title("Patient viewer")
sel = require_selection(patients=False)
patients = sel.patients or sel.all_patients
qp = st.query_params.get("patient")
request = st.session_state.pop("viewer_request", None)  # a row clicked on the Compare page: (patient, model)
if request and request[0] in patients:
    st.session_state["viewer_patient"] = request[0]
    st.session_state["viewer_left"] = request[1]
elif "viewer_patient" not in st.session_state or st.session_state["viewer_patient"] not in patients:
    st.session_state["viewer_patient"] = qp if qp in patients else patients[0]
c1, c2, c3 = st.columns([2, 2, 2])
pid = c1.selectbox("Patient (inside the entropy filter)", patients, key="viewer_patient")
st.query_params["patient"] = pid
models = views.viewer_models(sel)  # models that ran the selected method
if st.session_state.get("viewer_left") not in models:
    st.session_state.pop("viewer_left", None)
if st.query_params.get("model") in models and "viewer_left" not in st.session_state:
    st.session_state["viewer_left"] = st.query_params.get("model")
left = c2.selectbox("Model", models, key="viewer_left", help=f"models of the selection that ran {sel.method}")
st.query_params["model"] = left
right_options = ["(none)"] + [m for m in models if m != left]
if st.session_state.get("viewer_right") not in right_options:
    st.session_state.pop("viewer_right", None)
right = c3.selectbox("Compare with", right_options, key="viewer_right")
source = reads.patient_source(sel.db, sel.run_id, pid)
if not source or not Path(source).is_dir():
    st.warning(f"The images of {pid} are not available at the recorded folder {source!r}.")
    st.stop()
image, regions = V.load_patient(source, Path(source).stat().st_mtime)
maps = views.viewer_maps(sel, pid)

c1, c2, c3, c4 = st.columns(4)
axis = c1.radio("Plane", list(V.AXES), horizontal=True, key="viewer_axis")
modality = c2.selectbox("Modality", ["t1", "t1ce", "t2", "flair"], index=3, key="viewer_modality")
overlay = c3.selectbox("Overlay", ["none", "ground truth", "prediction", "entropy", "mutual information", "error (FP / FN)"],
                       index=5 if regions is not None else 2, key="viewer_overlay")
region = c4.radio("Region", list(V.REGION_INDEX), horizontal=True, key="viewer_region")
alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="viewer_alpha")
r = V.REGION_INDEX[region]


n_slices = image.shape[1 + V.AXES[axis]]


def jump(kind: str):
    st.session_state["viewer_slice"] = views.jump_slice(kind, maps, left, regions, r, axis)


if st.session_state.get("_viewer_for") != (pid, axis) or st.session_state.get("viewer_slice", 0) >= n_slices:
    # a new patient or plane opens on its most-tumour slice, or on what the link's ?focus= asks for
    # (the Review worklist links with focus=uncertainty: the left model's most uncertain slice)
    st.session_state["_viewer_for"] = (pid, axis)
    focus = st.query_params.get("focus", "tumour")
    if focus not in ("tumour", "uncertainty", "error") or (
            focus != "tumour" and views.map_volume(maps, left, "entropy" if focus == "uncertainty" else "error") is None):
        focus = "tumour"
    jump(focus)
b1, b2, b3 = st.columns(3)
b1.button("Slice with most tumour", on_click=jump, args=("tumour",), key="jump_tumour")
b2.button(f"Most uncertainty ({left})", on_click=jump, args=("uncertainty",), key="jump_unc",
          disabled=views.map_volume(maps, left, "entropy") is None)
b3.button(f"Most error ({left})", on_click=jump, args=("error",), key="jump_err", disabled=views.map_volume(maps, left, "error") is None)
idx = st.slider(f"{axis.capitalize()} slice", 0, n_slices - 1, key="viewer_slice")

ch = ["t1", "t1ce", "t2", "flair"].index(modality)
lo, hi = V.volume_window(image[ch])
gray = V.window(V.take(image[ch], axis, idx), lo, hi)
shown = [left] + ([right] if right != "(none)" else [])
cols = st.columns(len(shown))
for col, model in zip(cols, shown):
    ov, colour = views.overlay(overlay, maps, model, regions, r, axis, idx)
    with col:
        st.image(V.compose(gray, ov, colour, alpha), caption=f"{model} · {sel.method} · {overlay} ({region}) · "
                 f"{modality} window {lo:.0f}-{hi:.0f}", width=560 if len(shown) == 1 else "stretch")
        if overlay != "none" and ov is None:
            st.caption("This overlay is not available for this model/method (no ground truth or no map).")
st.caption("Entropy / MI overlays are scaled to the volume's maximum of that map; error: orange = false positive, "
           "cyan = false negative. Images are oriented with anterior / superior up.")

st.subheader(f"Metrics of {pid}")
table = views.patient_metric_table(sel, pid, shown)
if table.empty:
    st.info("No metrics for this patient.")
else:
    st.dataframe(table, hide_index=True)
st.subheader("NIfTI maps")
for model, kind, p in views.map_downloads(maps, shown):
    st.download_button(f"{model} · {kind} ({p.name})", lambda p=p: p.read_bytes(), file_name=p.name,
                       mime="application/gzip", key=f"dl_{model}_{kind}")

st.subheader(f"Review decision ({left})")
_store = review.review_path(sel.db)
review.decision_form("viewer_review_form", "viewer_review", _store, sel.run_id, left, pid, submit="Save decision")
st.dataframe(review.history(_store, sel.run_id, left, pid), hide_index=True, key="viewer_review_history")
