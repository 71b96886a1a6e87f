"""Lesion-wise metrics (connected components, maximum bipartite matching by Dice) on hand-computed cases, and
the normalised surface Dice against MONAI's compute_surface_dice."""
import math

import numpy as np
import pytest
import torch

from core.metrics.lesions import label_lesions, lesion_metrics, match_lesions
from core.metrics.overlap import nsd

SHAPE = (24, 16, 16)


def _box(*slices):
    m = np.zeros(SHAPE, bool)
    m[slices] = True
    return m


def test_no_lesion_in_either():
    out = lesion_metrics(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool))
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (0, 0, 0)
    assert all(math.isnan(out[k]) for k in ("lesion_rq", "lesion_sq_dice", "lesion_pq_dice", "lesion_sq_hd95"))


def test_only_false_positive_lesions():
    pred = _box(slice(2, 5), slice(2, 5), slice(2, 5)) | _box(slice(12, 15), slice(9, 12), slice(9, 12))
    out = lesion_metrics(pred, np.zeros(SHAPE, bool))
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (0, 2, 0)
    assert out["lesion_rq"] == 0.0 and out["lesion_pq_dice"] == 0.0
    assert out["lesion_sq_dice"] == 0.0 and math.isnan(out["lesion_sq_hd95"])  # official: SQ 0, HD95 inf


def test_pooled_hd95_of_a_shifted_box_by_hand():
    from core.metrics.overlap import hd95_pooled

    a = _box(slice(2, 6), slice(2, 6), slice(2, 6))
    b = _box(slice(3, 7), slice(2, 6), slice(2, 6))  # shifted by one voxel along x
    d = hd95_pooled(a, b, (2.0, 1.0, 1.0))  # along x a voxel is 2 mm
    assert d == pytest.approx(2.0)


def test_identical_lesions():
    truth = _box(slice(2, 6), slice(2, 6), slice(2, 6)) | _box(slice(12, 16), slice(8, 12), slice(8, 12))
    out = lesion_metrics(truth, truth, spacing=(1.0, 1.0, 1.0))
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (2, 0, 0)
    assert out["lesion_rq"] == 1.0 and out["lesion_sq_dice"] == 1.0 and out["lesion_pq_dice"] == 1.0
    assert out["lesion_sq_hd95"] == 0.0


def test_one_lesion_split_in_two():
    truth = _box(slice(2, 12), slice(4, 8), slice(4, 8))  # 10 x 4 x 4 = 160 voxels
    pred = _box(slice(2, 6), slice(4, 8), slice(4, 8)) | _box(slice(7, 12), slice(4, 8), slice(4, 8))  # 64 + 80
    out = lesion_metrics(pred, truth)
    # Dice with the truth: 2*64/224 = 0.571 and 2*80/240 = 0.667; both >= 0.5 but one-to-one: the larger matches
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (1, 1, 0)
    assert out["lesion_sq_dice"] == pytest.approx(2 * 80 / 240)
    assert out["lesion_rq"] == pytest.approx(1 / 1.5)
    assert out["lesion_pq_dice"] == pytest.approx(2 * 80 / 240 / 1.5)


def test_two_lesions_merged_into_one():
    truth = _box(slice(2, 6), slice(4, 8), slice(4, 8)) | _box(slice(8, 12), slice(4, 8), slice(4, 8))  # 64 + 64
    pred = _box(slice(2, 12), slice(4, 8), slice(4, 8))  # 160
    out = lesion_metrics(pred, truth)
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (1, 0, 1)
    assert out["lesion_sq_dice"] == pytest.approx(2 * 64 / 224)


def test_any_overlap_matches_and_no_overlap_is_a_miss_and_a_false_positive():
    truth = _box(slice(2, 10), slice(2, 10), slice(2, 10))  # 512
    pred = _box(slice(9, 12), slice(9, 12), slice(9, 12))  # 1 voxel of overlap: Dice 2/539 >= 1e-6
    assert lesion_metrics(pred, truth)["lesion_tp"] == 1
    pred = _box(slice(11, 14), slice(2, 10), slice(2, 10))  # no overlap
    out = lesion_metrics(pred, truth)
    assert (out["lesion_tp"], out["lesion_fp"], out["lesion_fn"]) == (0, 1, 1)
    assert threshold_matters()


def threshold_matters():
    """With the 0.5 threshold of panoptica's own BraTS example config, the 1-voxel overlap is not a match."""
    truth = _box(slice(2, 10), slice(2, 10), slice(2, 10))
    pred = _box(slice(9, 12), slice(9, 12), slice(9, 12))
    return lesion_metrics(pred, truth, threshold=0.5)["lesion_tp"] == 0


def test_diagonal_voxels_are_one_lesion_with_26_connectivity():
    m = np.zeros(SHAPE, bool)
    m[3, 3, 3] = m[4, 4, 4] = True
    assert label_lesions(m, 26)[1] == 1
    assert label_lesions(m, 6)[1] == 2


def test_matching_maximises_total_dice():
    """Two references and two predictions where greedy matching by best pair would lose a match."""
    ref = np.zeros(SHAPE, np.int32)
    pred = np.zeros(SHAPE, np.int32)
    ref[2:10, 2:6, 2:6] = 1
    ref[12:16, 2:6, 2:6] = 2
    pred[2:12, 2:6, 2:6] = 1  # overlaps ref 1 (128 of 160) and ref 2 not at all
    pred[11:16, 2:6, 2:6] = 2  # 16 rows of ref 1? no: rows 11 is outside ref 1 (2..9), overlaps ref 2 fully
    matches, overlap = match_lesions(ref, 2, pred, 2)
    assert sorted((r, p) for r, p, _ in matches) == [(1, 1), (2, 2)]
    assert overlap[1, 1] == 8 * 16


@pytest.mark.parametrize("spacing, tol", [((1.0, 1.0, 1.0), 1.0), ((1.0, 1.5, 2.0), 2.0), ((3.0, 3.0, 3.0), 3.0)])
def test_nsd_equals_monai(spacing, tol):
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(3)
    g = np.stack(np.meshgrid(*[np.arange(s) for s in (30, 28, 26)], indexing="ij"))
    d = np.sqrt(((g - np.array([15, 14, 13])[:, None, None, None]) ** 2).sum(0))
    truth = d < 8
    pred = d < 8 + rng.normal(0, 1.2, d.shape)
    ours = nsd(pred, truth, spacing, tol)
    ref = compute_surface_dice(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(truth)[None, None].float(),
                               class_thresholds=[tol], include_background=True, spacing=spacing).item()
    assert ours == pytest.approx(ref, abs=1e-6)  # MONAI returns float32


def test_nsd_empty_rules():
    z = np.zeros(SHAPE, bool)
    assert nsd(z, z) == 1.0  # BraTS empty rule (MONAI: NaN)
    assert nsd(_box(slice(2, 4), slice(2, 4), slice(2, 4)), z) == 0.0
