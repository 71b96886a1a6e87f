"""Label sets of BraTS 2021, 2023 glioma, 2024-25 post-treatment glioma, meningioma, metastases, paediatric:
regions from labels, label maps from regions (nested), the exported map's regions = the nested regions."""
import numpy as np
import pytest

from core.io.label_sets import LABEL_SETS, get_label_set, label_set_for
from core.metrics.overlap import nest_regions


def test_regions_of_each_label_set():
    seg = np.arange(5, dtype=np.uint8).reshape(5, 1, 1)  # one voxel of each value 0..4
    want = {"brats2021": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]},
            "brats2023": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
            "brats2024-gli": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},  # 4 = resection cavity: no region
            "brats-men": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
            "brats-met": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
            "brats-ped": {"WT": [1, 2, 3, 4], "TC": [1, 2, 3], "ET": [1]}}
    for name, regions in want.items():
        got = LABEL_SETS[name].to_regions(seg)
        for r, (region, values) in enumerate(regions.items()):
            assert np.flatnonzero(got[r].ravel()).tolist() == values, (name, region)


@pytest.mark.parametrize("name", list(LABEL_SETS))
def test_label_map_round_trip_is_the_nested_regions(name):
    rng = np.random.default_rng(1)
    regions = rng.random((3, 9, 8, 7)) < 0.3  # not nested: ET voxels outside TC, TC outside WT
    ls = LABEL_SETS[name]
    labels = ls.to_labels(regions)
    assert set(np.unique(labels)) <= ls.allowed
    assert np.array_equal(ls.to_regions(labels), nest_regions(regions))
    nested = nest_regions(regions)
    assert np.array_equal(ls.to_regions(ls.to_labels(nested)), nested)  # nested regions survive unchanged


def test_choice_by_naming_prefix_and_explicit():
    assert label_set_for("BraTS2021_00001", "brats2021").name == "brats2021"
    assert label_set_for("BraTS-GLI-02073-100", "brats2023").name == "brats2024-gli"
    assert label_set_for("BraTS-MEN-00004-000", "brats2023").name == "brats-men"
    assert label_set_for("BraTS-MET-00001-000", "brats2023").name == "brats-met"
    assert label_set_for("BraTS-PED-00001-000", "brats2023").name == "brats-ped"
    assert label_set_for("case7", "brats2023").name == "brats2023"
    assert label_set_for("BraTS-GLI-02073-100", "brats2023", explicit="brats2023").name == "brats2023"
    with pytest.raises(ValueError, match="unknown label set"):
        get_label_set("brats1999")
