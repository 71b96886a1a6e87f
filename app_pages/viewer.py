"""Patient viewer: one patient, slice by slice, with ground truth / prediction / uncertainty / error overlays
for up to two models side by side, that patient's metrics and its NIfTI maps to download."""
from pathlib import Path

import streamlit as st

from dashboard import viewer as V
from dashboard.state import query, require_selection

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
status = query(sel.db, "evaluation_status", sel.run_id)
ran = set(status[(status.method == sel.method) & (status.ok > 0)].model)
models = [m for m in sel.models if m in ran] or sel.models  # models that ran the selected method first
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
source = query(sel.db, "patient_source", sel.run_id, pid)
if not source or not Path(source).is_dir():
    st.warning(f"The images of {pid} are not available at the recorded folder {source!r}.")
    st.stop()
image, regions = V.load_patient(source, Path(source).stat().st_mtime)
maps = query(sel.db, "patient_maps", sel.run_id, pid)
maps = maps[maps.method == sel.method]

c1, c2, c3, c4 = st.columns(4)
axis = c1.radio("Plane", list(V.AXES), horizontal=True, key="viewer_axis")
modality = c2.selectbox("Modality", ["t1", "t1ce", "t2", "flair"], index=3, key="viewer_modality")
overlay = c3.selectbox("Overlay", ["none", "ground truth", "prediction", "entropy", "mutual information", "error (FP / FN)"],
                       index=5 if regions is not None else 2, key="viewer_overlay")
region = c4.radio("Region", list(V.REGION_INDEX), horizontal=True, key="viewer_region")
alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="viewer_alpha")
r = V.REGION_INDEX[region]


def map_volume(model: str, kind: str):
    row = maps[(maps.model == model) & (maps.kind == kind)]
    if row.empty or not Path(row.path.iloc[0]).exists():
        return None
    p = row.path.iloc[0]
    return V.load_map(p, Path(p).stat().st_mtime)


n_slices = image.shape[1 + V.AXES[axis]]


def jump(kind: str):
    if kind == "tumour":
        vol = regions[r] if regions is not None else (map_volume(left, "prob")[..., r] >= 0.5)
    elif kind == "uncertainty":
        vol = map_volume(left, "entropy")[..., r]
    else:
        vol = map_volume(left, "error")[..., r] > 0
    st.session_state["viewer_slice"] = V.best_slice(vol.astype("float32"), axis)


if st.session_state.get("_viewer_for") != (pid, axis) or st.session_state.get("viewer_slice", 0) >= n_slices:
    st.session_state["_viewer_for"] = (pid, axis)  # a new patient or plane opens on its most-tumour slice
    jump("tumour")
b1, b2, b3 = st.columns(3)
b1.button("Slice with most tumour", on_click=jump, args=("tumour",), key="jump_tumour")
b2.button(f"Most uncertainty ({left})", on_click=jump, args=("uncertainty",), key="jump_unc",
          disabled=map_volume(left, "entropy") is None)
b3.button(f"Most error ({left})", on_click=jump, args=("error",), key="jump_err", disabled=map_volume(left, "error") is None)
idx = st.slider(f"{axis.capitalize()} slice", 0, n_slices - 1, key="viewer_slice")

ch = ["t1", "t1ce", "t2", "flair"].index(modality)
lo, hi = V.volume_window(image[ch])
gray = V.window(V.take(image[ch], axis, idx), lo, hi)
shown = [left] + ([right] if right != "(none)" else [])
cols = st.columns(len(shown))
for col, model in zip(cols, shown):
    ov, colour = None, None
    if overlay == "ground truth" and regions is not None:
        ov, colour = V.take(regions[r].astype("float32"), axis, idx), (0.1, 0.9, 0.2)
    elif overlay == "prediction":
        prob = map_volume(model, "prob")
        ov, colour = (None, None) if prob is None else (V.take((prob[..., r] >= 0.5).astype("float32"), axis, idx), (1.0, 0.2, 0.2))
    elif overlay in ("entropy", "mutual information"):
        vol = map_volume(model, "entropy" if overlay == "entropy" else "mi")
        if vol is not None:
            vmax = max(float(vol[..., r].max()), 1e-6)
            ov, colour = V.take(vol[..., r], axis, idx) / vmax, V.heat
    elif overlay == "error (FP / FN)":
        err = map_volume(model, "error")
        if err is not None:
            e = V.take(err[..., r], axis, idx)
            ov, colour = (e > 0).astype("float32"), (lambda _x, e=e: V.error_colours(e))
    with col:
        st.image(V.compose(gray, ov, colour, alpha), caption=f"{model} · {sel.method} · {overlay} ({region}) · "
                 f"{modality} window {lo:.0f}-{hi:.0f}", width=560 if len(shown) == 1 else "stretch")
        if overlay != "none" and ov is None:
            st.caption("This overlay is not available for this model/method (no ground truth or no map).")
st.caption("Entropy / MI overlays are scaled to the volume's maximum of that map; error: orange = false positive, "
           "cyan = false negative. Images are oriented with anterior / superior up.")

st.subheader(f"Metrics of {pid}")
pm = query(sel.db, "patient_metrics", sel.run_id, [pid], mask=sel.mask)
pm = pm[pm.model.isin(shown) & (pm.method == sel.method)]
if pm.empty:
    st.info("No metrics for this patient.")
else:
    wide = pm.pivot_table(index=["metric", "mask"], columns=["model", "region"], values="value", aggfunc="first")
    wide.columns = [f"{m} {r}" for m, r in wide.columns]
    st.dataframe(wide.reset_index(), hide_index=True)
st.subheader("NIfTI maps")
for _, row in maps[maps.model.isin(shown)].iterrows():
    p = Path(row.path)
    if p.is_file() and p.name.endswith(".nii.gz"):
        st.download_button(f"{row.model} · {row.kind} ({p.name})", lambda p=p: p.read_bytes(), file_name=p.name,
                           mime="application/gzip", key=f"dl_{row.model}_{row.kind}")
