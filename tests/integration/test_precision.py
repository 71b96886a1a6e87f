"""Precision choice (core/inference/precision.py) on CPU: bf16 autocast is functional on CPU, so the Dice check and the
accept / reject logic run here with a tolerance we force; CUDA only changes which candidates `auto` tries."""
import numpy as np
import pytest
import torch

from core.inference.modelset import ModelSet
from core.io.checkpoints import LoadedModel
from core.io.architectures import build_model, make_card
from core.inference.precision import DICE_TOLERANCE, auto_candidates, check_precision
from core.inference.precision_check import choose_precision, dice_check
from core.inference.forward import deterministic_logits
from core.inference.uncertainty import predict


@pytest.fixture(scope="module")
def tiny_set():
    """A random-init UNet-Res on a 24^3 window and a (4, 24, 24, 24) image: logits near 0, so bf16 flips voxels."""
    torch.manual_seed(0)
    card = make_card("Tiny", "unet_res", {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                                          "channels": [8, 16], "strides": [2], "num_res_units": 1, "dropout": 0.1},
                     roi_size=(24, 24, 24))
    ms = ModelSet(LoadedModel(build_model(card).eval(), card, "tiny.pt"))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 24, 24, 24)).astype(np.float32)
    truth = rng.random((3, 24, 24, 24)) < 0.3
    return ms, image, truth


def test_cpu_auto_is_fp32_without_a_check(tiny_set):
    ms, image, truth = tiny_set
    assert auto_candidates("cpu") == ()
    c = choose_precision(ms, image, truth, "auto", "cpu")
    assert c.chosen == "fp32" and c.checks == [] and "cpu" in c.reason
    assert choose_precision(ms, image, truth, "fp32", "cpu").chosen == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("fp8")


def test_bf16_autocast_on_cpu_is_close_but_not_identical(tiny_set):
    ms, image, _ = tiny_set
    z32 = deterministic_logits(ms, image, precision="fp32")
    z16 = deterministic_logits(ms, image, precision="bf16")
    assert z16.dtype == np.float32 and z16.shape == z32.shape == (3, 24, 24, 24)
    assert not np.array_equal(z16, z32)
    assert np.abs(z16 - z32).max() < 0.05 * (np.abs(z32).max() + 1)


def test_check_accepts_and_rejects_with_forced_tolerance(tiny_set):
    ms, image, truth = tiny_set
    loose = choose_precision(ms, image, truth, "auto", "cpu", tolerance=1.0, candidates=("bf16",), patient_id="P1")
    assert loose.chosen == "bf16" and loose.checks[0]["accepted"] and loose.patient_id == "P1"
    chk = loose.checks[0]
    assert chk["reference"] == "ground truth" and set(chk["regions"]) == {"WT", "TC", "ET"}
    assert chk["max_change"] == max(r["change"] for r in chk["regions"].values())
    # the check equals a hand computation of |Dice(bf16) - Dice(fp32)| against the ground truth
    z32, z16 = deterministic_logits(ms, image, precision="fp32"), deterministic_logits(ms, image, precision="bf16")
    for i, r in enumerate(("WT", "TC", "ET")):
        d = [2 * ((z >= 0)[i] & truth[i]).sum() / ((z >= 0)[i].sum() + truth[i].sum()) for z in (z32, z16)]
        assert chk["regions"][r]["change"] == pytest.approx(abs(d[1] - d[0]), abs=1e-12)
    strict = choose_precision(ms, image, truth, "auto", "cpu", tolerance=-1.0, candidates=("bf16", "fp16"))
    assert strict.chosen == "fp32" and [c["candidate"] for c in strict.checks] == ["bf16", "fp16"]
    assert not any(c["accepted"] for c in strict.checks)
    # the real tolerance decides by the measured change
    real = choose_precision(ms, image, truth, "auto", "cpu", candidates=("bf16",))
    assert (real.chosen == "bf16") == (real.checks[0]["max_change"] <= DICE_TOLERANCE)


def test_check_without_ground_truth_counts_flipped_voxels(tiny_set):
    ms, image, _ = tiny_set
    chk = dice_check(ms, image, None, "bf16")
    assert chk["reference"] == "fp32 prediction"
    assert (chk["max_change"] > 0) == (chk["flipped_voxels"] > 0)
    assert all(0 <= r["change"] <= 1 for r in chk["regions"].values())


def test_explicit_low_precision_is_kept_and_checked(tiny_set):
    ms, image, truth = tiny_set
    c = choose_precision(ms, image, truth, "bf16", "cpu", tolerance=-1.0)
    assert c.chosen == "bf16" and len(c.checks) == 1 and "kept although" in c.reason
    assert c.to_dict()["checks"][0]["candidate"] == "bf16"


def test_predict_under_bf16_gives_float32_maps(tiny_set):
    ms, image, _ = tiny_set
    ms.precision = "bf16"
    try:
        p = predict(ms, image, "mc_dropout", T=3, mc_batch=3)
    finally:
        ms.precision = "fp32"
    ref = predict(ms, image, "mc_dropout", T=3, mc_batch=3)
    assert p.prob.dtype == np.float32 and p.mi.dtype == np.float32
    assert np.abs(p.prob - ref.prob).max() < 0.05


def test_batch_records_an_explicit_precision_and_its_check(tiny_cohort, tiny_checkpoints, tmp_path):
    """--precision bf16 on CPU: used as asked, its Dice check stored in run_plan, and part of the run id."""
    import json

    from core import store
    from core.batch.pipeline import run_batch

    kw = dict(methods=["deterministic"], split="calibration", progress=False, echo=lambda *_: None, quality=False,
              save_maps=False)
    s16 = run_batch(tiny_cohort, tmp_path / "r.duckdb", [str(tiny_checkpoints[1])], precision="bf16", **kw)
    s32 = run_batch(tiny_cohort, tmp_path / "r.duckdb", [str(tiny_checkpoints[1])], **kw)
    assert s16["run_id"] != s32["run_id"] and s16["ok"] == s32["ok"] == 1
    con = store.connect(tmp_path / "r.duckdb", read_only=True)
    plan = store.run_plan(con, s16["run_id"]).iloc[0]
    assert plan.precision_requested == plan.precision == "bf16" and plan.check_patient == json.loads((tiny_cohort / "splits.json").read_text())["calibration"][0]
    checks = json.loads(plan.precision_checks)
    assert checks[0]["candidate"] == "bf16" and checks[0]["reference"] == "ground truth"
    auto = store.run_plan(con, s32["run_id"]).iloc[0]
    assert auto.precision_requested == "auto" and auto.precision == "fp32" and json.loads(auto.precision_checks) == []
    con.close()
