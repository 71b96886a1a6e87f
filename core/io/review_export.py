"""Export of a review worklist (issue 25): the patients of one (run, model) whose latest review status is in a set
(default ``needs correction``), as a folder a segmentation editor (ITK-SNAP, 3D Slicer) opens, BraTS naming::

    <out>/
      worklist.csv                        one row per exported patient: patient_id, model, method, status, note,
                                          reviewer, saved_at, seg (relative path), images (how many were copied)
      README.txt                          what the files are
      <patient_id>/
        <patient_id>_seg.nii.gz           the model's label map (the ``pred`` map of ``method``: BraTS labels of the
                                          patient's label set, e.g. 1 NCR, 2 ED, 4 ET), the segmentation to correct
        <patient_id>_t1.nii.gz, _t1ce, _t2, _flair   the patient's images (:func:`source_images`), copied from the
                                          folder the batch recorded (when it is still there), so the editor opens
                                          the case as a whole

The files are byte copies of the batch's NIfTI files (same affine and header as the images). The patient's ground
truth is not exported (the ``_seg`` file is the model's). :func:`zip_bytes` packs such a folder for a browser
download. In core.io (not core.store) because it reads the patient folders as the cohort reader does.
Reads only: the results database read-only, the review store (:mod:`core.store.review`) by query.
"""
from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pandas as pd

from core.io.cohort import detect_case
from core.store import list_runs
from core.store.connection import connect
from core.store.review import current_status, review_path, with_status

WORKLIST_COLUMNS = ["patient_id", "model", "method", "status", "note", "reviewer", "saved_at", "seg", "images"]
_README = """Segmentations to correct, exported from the tumour QA dashboard.
Run {run_id}, model {model}, method {method}, statuses: {statuses}.
Each folder holds <id>_seg.nii.gz (the model's label map, BraTS labels) and the patient's images <id>_t1/_t1ce/_t2/_flair
.nii.gz where they were available. Open the images in ITK-SNAP or 3D Slicer and load <id>_seg.nii.gz as the
segmentation. worklist.csv lists the patients with the reviewers' notes.
"""


def source_images(source) -> list[Path]:
    """The modality images of a patient folder as the batch reads them (:func:`core.io.cohort.detect_case`: BraTS
    2021 ``_t1/_t1ce/_t2/_flair``, BraTS 2023+ ``-t1n/-t1c/-t2w/-t2f``); [] when the folder is gone."""
    if not source or not Path(str(source)).is_dir():
        return []
    return sorted(detect_case(Path(str(source))).images.values())


def _pred_maps(con, run_id: str, model: str, method: str | None) -> tuple[str, pd.DataFrame]:
    """(method, frame patient_id, path, source) of the ``pred`` maps of one model; the method defaults to
    ``deterministic`` when it has maps, else the first method (alphabetically) that has them."""
    if method is None:
        methods = [r[0] for r in con.execute(
            "SELECT DISTINCT method FROM maps WHERE run_id = ? AND model = ? AND kind = 'pred' ORDER BY method",
            [run_id, model]).fetchall()]
        if not methods:
            raise ValueError(f"run {run_id!r} has no label maps of model {model!r} (was it run with --no-maps?)")
        method = "deterministic" if "deterministic" in methods else methods[0]
    df = con.execute("""
        SELECT m.patient_id, m.path, p.source
        FROM maps m JOIN runs r ON r.run_id = m.run_id
        LEFT JOIN patients p ON p.cohort = r.cohort AND p.patient_id = m.patient_id
        WHERE m.run_id = ? AND m.model = ? AND m.method = ? AND m.kind = 'pred'""", [run_id, model, method]).df()
    return method, df


def export_reviews(db: str | Path, run_id: str | None, model: str, out_dir: str | Path, method: str | None = None,
                   statuses=("needs correction",), patient_ids=None) -> pd.DataFrame:
    """Write the export folder (module docstring) of the patients whose latest status is in ``statuses``.

    Args:
        db: the results database (its review store is ``reviews.sqlite`` beside it).
        run_id: the run (None: the newest).
        model: the model whose decisions and label maps are exported.
        out_dir: the folder to write (created; existing patient folders in it are replaced).
        method: the method whose label map is exported (default: ``deterministic`` if it has maps, else the first).
        statuses: the review statuses to export (from :data:`core.store.review.STATUSES`).
        patient_ids: only these patients (e.g. the dashboard's filter); None: every patient of the run.

    Returns:
        the worklist (:data:`WORKLIST_COLUMNS`, sorted by patient), also written as ``worklist.csv``; empty (with a
        README saying so) when no patient has such a status.

    Raises:
        ValueError: no database, or the run has no label maps of the model / method, or the label map of a patient
            to export is missing on disk (named in the message).
    """
    db = Path(db)
    if not db.is_file():
        raise ValueError(f"no results database at {db}")
    statuses = tuple(statuses)
    con = connect(db, read_only=True)
    try:
        if run_id is None:
            runs = list_runs(con)  # newest first
            if runs.empty:
                raise ValueError(f"{db} has no run")
            run_id = runs.run_id.iloc[0]
        method, maps = _pred_maps(con, run_id, model, method)
    finally:
        con.close()
    cur = current_status(review_path(db), run_id, model)
    cur = cur[cur.status.isin(statuses)]
    if patient_ids is not None:
        cur = cur[cur.patient_id.isin(set(patient_ids))]
    if maps.empty:
        raise ValueError(f"run {run_id!r} has no label maps of {model} / {method}")
    maps = maps.set_index("patient_id")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for pid in sorted(cur.patient_id):
        if pid not in maps.index:
            raise ValueError(f"{pid}: no label map of {model} / {method} in run {run_id} (it failed or was not run)")
        src = Path(maps.at[pid, "path"])
        if not src.is_file():
            raise ValueError(f"{pid}: the label map {src} recorded for {model} / {method} is missing on disk")
        folder = out / pid
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        shutil.copyfile(src, folder / f"{pid}_seg.nii.gz")
        images = source_images(maps.at[pid, "source"])
        for image in images:
            shutil.copyfile(image, folder / image.name)
        rows.append({"patient_id": pid, "model": model, "method": method, "seg": f"{pid}/{pid}_seg.nii.gz",
                     "images": len(images)})
    table = with_status(pd.DataFrame(rows, columns=["patient_id", "model", "method", "seg", "images"]), cur)
    table = table[WORKLIST_COLUMNS]
    table.to_csv(out / "worklist.csv", index=False)
    (out / "README.txt").write_text(_README.format(run_id=run_id, model=model, method=method,
                                                   statuses=", ".join(statuses)))
    return table


def zip_bytes(folder: str | Path) -> bytes:
    """The folder's files as a zip archive in memory (paths relative to the folder, deflated)."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()
