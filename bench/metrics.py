"""Benchmark: the full per-patient metric suite vs the reference stack, on one BraTS-sized case.

    python bench/metrics.py [--repeat 3]

Case: 3 regions x 240 x 240 x 155, float32 probabilities, entropy and MI, a realistic nested tumour
(WT ~ 90 ml, TC, ET rim) in a brain mask, predictions with boundary errors and a missed satellite.
Ours: ``core.metrics.suite.evaluate_patient`` (Dice, HD95, volumes, ECE/ACE/MCE/gap, Brier, NLL, AUROC of
entropy and MI, FP-TP / FN-TN AUROC, U-E, BnF, review budget, uncertainty aggregates, all bins) for the
brain and ROI voxel sets. Reference: the same core numbers from the libraries in the same process:
MONAI ``CalibrationErrorMetric`` (ECE, ACE, MCE), ``DiceMetric``, ``compute_hausdorff_distance``
(HD95), scikit-learn ``roc_auc_score`` (entropy and MI), ``brier_score_loss``, ``log_loss``.
Runs on one core (torch and BLAS threads = 1). Prints times (best of ``--repeat``; for ours also the best CPU time
of the process, which other processes sharing the core do not inflate as much), the ratio, peak extra memory
(tracemalloc) against the input size, and the time of one pass over the inputs (sum of each array).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from core import metrics as M  # noqa: E402

torch.set_num_threads(1)
SHAPE = (240, 240, 155)


def make_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    g = np.ogrid[tuple(slice(0, s) for s in SHAPE)]
    centre = (120, 120, 77)
    brain = ((g[0] - centre[0]) / 80.0) ** 2 + ((g[1] - centre[1]) / 100.0) ** 2 + ((g[2] - centre[2]) / 70.0) ** 2 < 1
    d = np.sqrt(((g[0] - 100) / 1.0) ** 2 + ((g[1] - 140) / 1.2) ** 2 + ((g[2] - 80) / 0.9) ** 2).astype(np.float32)
    wobble = ndimage.gaussian_filter(rng.standard_normal((60, 60, 40)).astype(np.float32), 3)
    wobble = ndimage.zoom(wobble / wobble.std(), (4, 4, 155 / 40), order=1)[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    d = d * (1 + 0.12 * wobble)
    truth = np.stack([d < 28, d < 14, (d < 14) & (d > 9)]) & brain
    # logits: smooth signed distance to each region boundary, shifted per region (boundary errors) + noise
    logits = np.empty((3,) + SHAPE, np.float32)
    for r, (rad, shift) in enumerate(((28, 1.5), (14, -1.0), (14, 0.5))):
        logits[r] = (rad + shift - d) * 1.2
    logits[2] = np.minimum(logits[2], (d - 9 + 0.5) * 1.2)
    logits += rng.normal(0, 0.8, logits.shape).astype(np.float32)
    prob = (1 / (1 + np.exp(-logits))).astype(np.float32)
    prob[:, ~brain] = 0.0
    prob = np.clip(prob, 0, 1)
    # satellite lesion the model misses
    sat = (((g[0] - 160) ** 2 + (g[1] - 80) ** 2 + (g[2] - 60) ** 2) < 25) & brain
    truth[0] |= sat
    ent = (-(np.where(prob > 0, prob * np.log(np.maximum(prob, 1e-30)), 0)
             + np.where(prob < 1, (1 - prob) * np.log(np.maximum(1 - prob, 1e-30)), 0)) / np.log(2)).astype(np.float32)
    mi = (ent * rng.uniform(0.1, 0.4, ent.shape).astype(np.float32)).astype(np.float32)
    return prob, ent, mi, truth, brain


def ours(prob, ent, mi, truth, brain):
    return M.evaluate_patient(prob, ent, mi, truth, brain, spacing=(1.0, 1.0, 1.0))


def reference(prob, ent, mi, truth, brain):
    from monai.metrics import CalibrationErrorMetric, DiceMetric, compute_hausdorff_distance
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    out = {}
    pred = prob >= 0.5
    pt = torch.from_numpy(pred[None]).float()
    tt = torch.from_numpy(truth[None]).float()
    out["dice"] = DiceMetric(reduction="none", ignore_empty=False)(pt, tt)[0].numpy()
    out["hd95"] = compute_hausdorff_distance(pt, tt, include_background=True, percentile=95)[0].numpy()
    roi = M.roi_mask(pred, truth, brain)
    for mname, m in (("brain", brain), ("roi", roi)):
        for r in range(3):
            p, t = prob[r][m], truth[r][m]
            p_t = torch.from_numpy(p)[None, None]
            t_t = torch.from_numpy(t.astype(np.float32))[None, None]
            for red in ("expected", "average", "maximum"):
                out[(mname, r, red)] = CalibrationErrorMetric(num_bins=20, calibration_reduction=red, right=True)(p_t, t_t).item()
            err = (p >= 0.5) != t
            out[(mname, r, "auroc_entropy")] = roc_auc_score(err, ent[r][m])
            out[(mname, r, "auroc_mi")] = roc_auc_score(err, mi[r][m])
            out[(mname, r, "brier")] = brier_score_loss(t, p)
            out[(mname, r, "nll")] = log_loss(t, p.astype(np.float64), labels=[0, 1])
    return out


def timed(fn, *args, repeat=1, cpu=False):
    """Best wall-clock seconds of ``repeat`` calls (and, with ``cpu``, the best CPU seconds of this process: on a
    shared machine the wall clock also counts the time other processes hold the core) and the last result."""
    best, best_cpu, res = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        res = fn(*args)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return (best, best_cpu, res) if cpu else (best, res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t = time.perf_counter()
    case = make_case()
    print(f"case built in {time.perf_counter() - t:.1f} s: 3 x {SHAPE}, WT {case[3][0].sum() / 1000:.1f} ml, "
          f"brain {case[4].sum() / 1e6:.2f} M voxels")
    input_bytes = sum(a.nbytes for a in case)
    t_read, _ = timed(lambda: [float(a.sum()) for a in case], repeat=args.repeat)
    t_ours, cpu_ours, res = timed(ours, *case, repeat=args.repeat, cpu=True)
    tracemalloc.start()  # separate run: tracing allocations slows numpy down
    ours(*case)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t_ref, ref = timed(reference, *case, repeat=1)
    got = {(r, m, k): v for r, m, k, v in res.metrics}
    regions = ("WT", "TC", "ET")
    worst = 0.0
    for r in range(3):
        worst = max(worst, abs(got[(regions[r], "brain", "dice")] - ref["dice"][r]),
                    abs(got[(regions[r], "brain", "hd95")] - ref["hd95"][r]))
        for mname in ("brain", "roi"):
            for red, key in (("expected", "ece"), ("average", "ace"), ("maximum", "mce")):
                worst = max(worst, abs(got[(regions[r], mname, key)] - ref[(mname, r, red)]))
            for key in ("auroc_entropy", "auroc_mi", "brier", "nll"):
                worst = max(worst, abs(got[(regions[r], mname, key)] - ref[(mname, r, key)]))
    print(f"read inputs once : {t_read:8.3f} s   ({input_bytes / 1e6:.0f} MB)")
    print(f"ours (full suite): {t_ours:8.3f} s   ({len(res['metrics'])} numbers, {len(res['calibration_bins'])} + "
          f"{len(res['uncertainty_bins'])} bin rows; best CPU time of this process {cpu_ours:.3f} s)")
    print(f"reference stack  : {t_ref:8.3f} s   (core numbers only)")
    print(f"ratio reference / ours = {t_ref / t_ours:.1f}x;  ours / read = {t_ours / t_read:.1f}x")
    print(f"peak extra memory (tracemalloc) = {peak / 1e6:.0f} MB = {peak / input_bytes:.2f} x input")
    print(f"max abs difference ours vs reference on shared numbers = {worst:.2e}")


if __name__ == "__main__":
    main()
