"""Shared fixtures: a tiny demo cohort, tiny trained checkpoints and a results database built once per session."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from core.io.demo_cohort import DemoSpec, build_demo_cohort  # noqa: E402
from core.io.architectures import DEMO_MODELS  # noqa: E402

TINY_SPEC = DemoSpec(n_train=3, n_calibration=1, n_test=4, seed=7)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """8 demo patients (3 train / 1 calibration / 4 test), BraTS 2021 layout."""
    out = tmp_path_factory.mktemp("cohort") / "demo"
    build_demo_cohort(out, TINY_SPEC, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_cohort, tmp_path_factory) -> list[Path]:
    """Both demo architectures trained for 1 epoch on the tiny cohort by the project's training code."""
    from core.training.segmentation import train_model

    out = tmp_path_factory.mktemp("weights")
    paths = []
    for name in ("SegResNet", "UNet-Res"):
        spec = DEMO_MODELS[name]
        paths.append(train_model(name, spec["arch"], spec["arch_args"], tiny_cohort, out / f"{name}.pt", epochs=1,
                                 batch_size=1, crop=(32, 32, 32), seed=0, progress=False, log=lambda *_: None))
    return paths


@pytest.fixture(scope="session")
def unet_set(tiny_cohort, tiny_checkpoints, tmp_path_factory):
    """UNet-Res primary (1 epoch, with a snapshot), two more members, and an auxiliary network."""
    from core.training.auxiliary import train_auxiliary
    from core.inference.modelset import load_model_set
    from core.training.segmentation import train_model

    out = tmp_path_factory.mktemp("members")
    spec = DEMO_MODELS["UNet-Res"]
    kw = dict(epochs=2, batch_size=1, crop=(32, 32, 32), progress=False, log=lambda *_: None)
    prim = train_model("UNet-Res", spec["arch"], spec["arch_args"], tiny_cohort, out / "p.pt", seed=0,
                       snapshot_epochs=[1], **kw)
    members = [train_model("UNet-Res", spec["arch"], spec["arch_args"], tiny_cohort, out / f"e{s}.pt", seed=s,
                           subset_fraction=0.7, **kw) for s in (2, 3)]
    aux = train_auxiliary(load_model_set(str(prim)), tiny_cohort, out / "aux.pt", epochs=2, log=lambda *_: None)
    return {"checkpoint": str(prim), "ensemble": [str(m) for m in members], "snapshots": [str(out / "p_snap1.pt")],
            "auxiliary": str(aux)}


@pytest.fixture(scope="session")
def results_db(tiny_cohort, tiny_checkpoints, tmp_path_factory) -> Path:
    """data folder with results.duckdb of the tiny cohort's test split, both models, both methods, T=3."""
    from core.batch.pipeline import run_batch

    data = tmp_path_factory.mktemp("data")
    run_batch(tiny_cohort, data / "results.duckdb", tiny_checkpoints, T=3, split="test", progress=False,
              echo=lambda *_: None)
    return data / "results.duckdb"


@pytest.fixture
def corrupt_copy(tiny_cohort, tmp_path) -> Path:
    """A copy of the tiny cohort's test split that we may damage."""
    dst = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, dst)
    return dst


def pytest_collection_modifyitems(config, items):
    """Mark every test by its folder: unit (seconds, synthetic arrays), integration (the tiny demo cohort,
    models trained for an epoch, AppTest) or system (demo claims, crash, scale, browser)."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for level in ("unit", "integration", "system"):
            if level in parts:
                item.add_marker(getattr(pytest.mark, level))


def recompute_from_maps(db: Path, limit: int | None = None) -> list[dict]:
    """Per (model, method, patient, region) with ground truth: the stored Dice / ECE / AUROC of entropy and the
    same numbers recomputed from the stored NIfTI maps and the cohort's own segmentation: Dice of the exported
    label map, ECE by MONAI's CalibrationErrorMetric on the probability map (brain voxels), AUROC of the entropy
    map by scikit-learn (exact) and by our bins (the stored definition), with the range of the latter that the map's
    rounding allows (``auroc_bins_lo`` / ``auroc_bins_hi``)."""
    import duckdb
    import nibabel as nib
    import numpy as np
    from monai.metrics import CalibrationErrorMetric
    from sklearn.metrics import roc_auc_score

    from core.io.cohort import detect_case, load_case
    from core.io.label_sets import LABEL_SETS
    from core.io.maps import MAP_MANTISSA_BITS
    from core.metrics.overlap import dice
    from core.metrics.uncertainty import auroc_from_bins, uncertainty_bins

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("""
        SELECT m.model, m.method, m.patient_id, p.source, p.label_scheme, list(m.kind), list(m.path)
        FROM maps m JOIN runs r USING (run_id) JOIN patients p ON p.cohort = r.cohort AND p.patient_id = m.patient_id
        WHERE p.has_gt GROUP BY ALL ORDER BY ALL""").fetchall()[:limit]
    stored = {r[:5]: r[5] for r in con.execute(
        "SELECT model, method, patient_id, region, metric, value FROM metrics WHERE mask = 'brain' "
        "AND metric IN ('dice', 'ece', 'auroc_entropy')").fetchall()}
    con.close()
    out = []
    for model, method, pid, source, scheme, kinds, paths in rows:
        maps = dict(zip(kinds, paths))
        case = load_case(detect_case(Path(source)), label_set=scheme)
        ls = LABEL_SETS[scheme]
        truth, brain = ls.to_regions(case.seg), case.brain_mask
        seg = ls.to_regions(np.asarray(nib.load(maps["pred"]).dataobj))
        prob = np.moveaxis(nib.load(maps["prob"]).get_fdata(), -1, 0)
        ent = np.moveaxis(np.asarray(nib.load(maps["entropy"]).dataobj), -1, 0)  # float32, as binned
        errmap = np.moveaxis(np.asarray(nib.load(maps["error"]).dataobj), -1, 0)  # 0 right, 1 FP, 2 FN
        for r, region in enumerate(("WT", "TC", "ET")):
            p, t = prob[r][brain], truth[r][brain]
            err = errmap[r][brain] != 0
            row = {"key": (model, method, pid, region), "dice": dice(seg[r], truth[r]),
                   "ece": CalibrationErrorMetric(num_bins=20, right=True)(
                       torch.from_numpy(p)[None, None], torch.from_numpy(t.astype(np.float64))[None, None]).item(),
                   "auroc_sklearn": roc_auc_score(err, ent[r][brain]) if err.any() and not err.all() else float("nan"),
                   "auroc_bins": auroc_from_bins(*uncertainty_bins(ent[r][brain], err))}
            # the map rounds entropy to MAP_MANTISSA_BITS (relative error <= 2^-(bits + 1)): the stored AUROC, binned
            # from the unrounded values, must lie between the AUROCs of the map's values moved by that much against
            # the errors (lo) and in their favour (hi); the binned AUROC is monotone in each voxel's value
            e, d = ent[r][brain].astype(np.float64), 2.0 ** -(MAP_MANTISSA_BITS + 1) * 1.001  # the bound, +0.1 %
            def moved(s):  # errors' entropies scaled by 1 + s * d, the others' by 1 - s * d (at most 1)
                return auroc_from_bins(*uncertainty_bins(np.minimum(np.where(err, e * (1 + s * d), e * (1 - s * d)), 1.0), err))
            row["auroc_bins_lo"], row["auroc_bins_hi"] = moved(-1), moved(1)
            row.update({f"stored_{m}": stored.get((model, method, pid, region, m)) for m in ("dice", "ece", "auroc_entropy")})
            out.append(row)
    return out
