"""The stored NIfTI maps are faithful to the stored numbers (tiny cohort, 1-epoch models): Dice from the
exported label map and ECE (MONAI) from the 16-bit probability map reproduce the database's values within 1e-3;
the stored AUROC of entropy lies within what the entropy map's rounding (float32 at 2^-13 relative precision)
allows: between the binned AUROCs of the map's values moved by that bound against and in favour of the
errors (the binned AUROC is monotone in each voxel's value). A fixed tolerance does not hold on these 1-epoch
models: their entropies crowd near 1, where the bins are 0.001 wide and the map's step (2^-12) is a quarter of a
bin; the bundle-architecture SegResNet's TC probabilities are all 0.48-0.54 (entropy 0.996-1.0, 37 distinct map
values), and the map's AUROC moved by up to 2.5e-3 (2026-12-08; 2.1e-4 with the init_filters-8 SegResNet). (The exact scikit-learn AUROC is checked on the real demo in
tests/system/test_claims.py: the 1-epoch models' entropies crowd near 1, where the 0.001-wide bins tie them.)"""
import math

import pytest

from conftest import recompute_from_maps


def test_metrics_recomputed_from_the_maps(results_db):
    rows = recompute_from_maps(results_db)
    assert len(rows) >= 24
    for row in rows:
        assert row["dice"] == pytest.approx(row["stored_dice"], abs=1e-3), row["key"]
        assert row["ece"] == pytest.approx(row["stored_ece"], abs=1e-3), row["key"]
        if row["stored_auroc_entropy"] is not None:
            assert row["auroc_bins_lo"] - 1e-9 <= row["stored_auroc_entropy"] <= row["auroc_bins_hi"] + 1e-9, row
            assert row["auroc_bins_lo"] <= row["auroc_bins"] <= row["auroc_bins_hi"], row
            assert not math.isnan(row["auroc_sklearn"])
