"""Check the stored overlap and lesion-wise metrics against the official BraTS evaluation.

The official package (``brats-evaluation``, panoptica-based; glioma config) pins older pandas / numpy than the
project, so it is installed into a throwaway virtual environment of its own (never into requirements.txt) and
run there on the label maps the batch exported (``maps`` kind ``pred``) and the cohort's own segmentation files.
Both are converted to the glioma labels the config expects (1 NETC, 2 SNFH, 3 ET) from their label set's
regions, so any label set can be checked.

    python scripts/official_eval.py --db data/results.duckdb [--run RUN] [--limit N] [--venv /tmp/brats-eval]

Prints, per metric, how many (model, method, patient, region) values were compared and the largest difference;
exit status 1 when a value is off by more than 1e-3 (counts: any difference).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.io.cohort import detect_case  # noqa: E402
from core.io.label_sets import LABEL_SETS  # noqa: E402
from core.metrics.overlap import nest_regions  # noqa: E402

PACKAGE = "brats-evaluation==0.0.10"
# stored metric -> attribute of panoptica's PanopticaResult
METRICS = {"dice": "global_bin_dsc", "lesion_tp": "tp", "lesion_fp": "fp", "lesion_fn": "fn", "lesion_rq": "rq",
           "lesion_sq_dice": "sq_dsc", "lesion_pq_dice": "pq_dsc", "lesion_sq_hd95": "sq_hd95"}
GROUPS = {"WT": "wt", "TC": "tc", "ET": "et"}
ORACLE = r'''
import json, sys, warnings
warnings.filterwarnings("ignore")
from panoptica import Panoptica_Evaluator
from brats_evaluation import config_path
ev = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
out = {}
for key, pred, ref in json.load(open(sys.argv[1])):
    res = ev.evaluate(pred, ref)  # NIfTI paths: the voxel spacing from the header
    out[key] = {g: {a: float(getattr(r, a)) for a in sys.argv[3].split(",")} for g, r in res.items()}
json.dump(out, open(sys.argv[2], "w"))
'''


def ensure_venv(path: Path) -> Path:
    """The python of a virtual environment at ``path`` holding :data:`PACKAGE` (created when missing).

    Raises:
        RuntimeError: when the environment cannot be created or the package not installed (e.g. offline).
    """
    py = path / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import brats_evaluation, panoptica"],
                                      capture_output=True).returncode == 0:
        return py
    for cmd in ([sys.executable, "-m", "venv", str(path)],
                [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", PACKAGE]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed: {(r.stderr or r.stdout)[-800:]}")
    return py


def to_glioma_labels(labels: np.ndarray, label_set: str) -> np.ndarray:
    """A label map of any label set -> the official glioma config's labels (1 NETC, 2 SNFH, 3 ET), region-wise."""
    return LABEL_SETS["brats2023"].to_labels(nest_regions(LABEL_SETS[label_set].to_regions(labels)))


def collect(db: Path, run: str | None, limit: int | None) -> tuple[str, list[dict]]:
    """The run's exported label maps with their patient's segmentation file and label set."""
    con = duckdb.connect(str(db), read_only=True)
    run = run or con.execute("SELECT run_id FROM runs ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    rows = con.execute("""
        SELECT m.model, m.method, m.patient_id, m.path, p.source, p.label_scheme
        FROM maps m JOIN evaluations e USING (run_id, model, method, patient_id)
             JOIN runs r USING (run_id) JOIN patients p ON p.cohort = r.cohort AND p.patient_id = m.patient_id
        WHERE m.run_id = ? AND m.kind = 'pred' AND e.status = 'ok' AND p.has_gt
        ORDER BY m.model, m.method, m.patient_id""", [run]).fetchall()
    con.close()
    cases = [dict(zip(("model", "method", "patient_id", "pred", "source", "label_set"), r)) for r in rows]
    return run, cases[:limit] if limit else cases


def official(cases: list[dict], python: Path, work: Path) -> dict:
    """Run the official evaluation on every case (converted NIfTI files under ``work``): {key: {group: {attr: v}}}."""
    jobs = []
    for c in cases:
        key = f"{c['model']}|{c['method']}|{c['patient_id']}"
        seg = detect_case(Path(c["source"])).seg
        for kind, path in (("pred", c["pred"]), ("ref", seg)):
            img = nib.load(str(path))
            out = work / f"{len(jobs):05d}_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(to_glioma_labels(np.asarray(img.dataobj).astype(np.uint8), c["label_set"]),
                                     img.affine, img.header), out)
        jobs.append([key, str(work / f"{len(jobs):05d}_pred.nii.gz"), str(work / f"{len(jobs):05d}_ref.nii.gz")])
    (work / "jobs.json").write_text(json.dumps(jobs))
    (work / "oracle.py").write_text(ORACLE)
    r = subprocess.run([str(python), str(work / "oracle.py"), str(work / "jobs.json"), str(work / "out.json"),
                        ",".join(METRICS.values())], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"official evaluation failed: {r.stderr[-2000:]}")
    return json.loads((work / "out.json").read_text())


def stored(db: Path, run: str) -> dict:
    """{(model, method, patient, region, metric): value or NaN} of the compared metrics."""
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("""SELECT model, method, patient_id, region, metric, value FROM metrics
                          WHERE run_id = ? AND mask = 'brain' AND list_contains(?::VARCHAR[], metric)""",
                       [run, list(METRICS)]).fetchall()
    con.close()
    return {r[:5]: (math.nan if r[5] is None else r[5]) for r in rows}


def compare(ours: dict, theirs: dict, tol: float = 1e-3) -> dict:
    """Per metric: n compared, max abs difference, mismatches (examples), and the documented differences met
    (both empty: ours Dice 1 vs official NaN; no match: ours HD95 NULL vs official inf)."""
    report = {m: {"n": 0, "max_diff": 0.0, "bad": [], "documented": 0} for m in METRICS}
    for key, groups in theirs.items():
        model, method, pid = key.split("|")
        for region, g in GROUPS.items():
            for metric, attr in METRICS.items():
                o, t = ours.get((model, method, pid, region, metric), math.nan), groups[g][attr]
                rep = report[metric]
                rep["n"] += 1
                if metric == "dice" and math.isnan(t) and o == 1.0:
                    rep["documented"] += 1  # both empty: BraTS 2021 rule 1, official undefined
                    continue
                if metric == "lesion_sq_hd95" and math.isinf(t) and math.isnan(o):
                    rep["documented"] += 1  # lesions but no match: official inf, ours NULL
                    continue
                if math.isnan(o) and math.isnan(t):
                    continue
                d = abs(o - t)
                rep["max_diff"] = max(rep["max_diff"], d if math.isfinite(d) else math.inf)
                if not d <= (0 if metric in ("lesion_tp", "lesion_fp", "lesion_fn") else tol):
                    rep["bad"].append((key, region, o, t))
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=str(ROOT / "data" / "results.duckdb"), help="results database")
    ap.add_argument("--run", help="run id (default: the newest)")
    ap.add_argument("--limit", type=int, help="only the first N (model, method, patient) label maps")
    ap.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "tumourqa-brats-eval"),
                    help="virtual environment of the official package (created when missing)")
    args = ap.parse_args(argv)
    t0 = time.time()
    python = ensure_venv(Path(args.venv))
    run, cases = collect(Path(args.db), args.run, args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        theirs = official(cases, python, Path(tmp))
    report = compare(stored(Path(args.db), run), theirs)
    ok = True
    for metric, rep in report.items():
        print(f"{metric:16s} n={rep['n']:5d} max |ours - official| = {rep['max_diff']:.3g}  documented differences "
              f"{rep['documented']}  mismatches {len(rep['bad'])}")
        for b in rep["bad"][:3]:
            print("    ", b)
        ok &= not rep["bad"]
    print(f"{len(cases)} label maps of run {run} in {time.time() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
