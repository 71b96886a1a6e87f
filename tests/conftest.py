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
