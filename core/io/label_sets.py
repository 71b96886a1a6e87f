"""Label sets of today's BraTS data and their evaluation regions.

A label set names the label values of a segmentation file and how they make the three evaluation regions
(WT, TC, ET: one sigmoid channel each of our models). A label map is built from the regions by painting, in
this order, WT with the set's ``paint[0]`` label, TC with ``paint[1]``, ET with ``paint[2]`` (nested: ET inside
TC inside WT, as BraTS post-processing does); labels that belong to no region (the resection cavity of the
post-treatment glioma set) are never painted, and a label value outside the set is a per-patient error.

==================  ==========================================  =====================================
label set           labels                                      regions
==================  ==========================================  =====================================
``brats2021``       1 NCR, 2 ED, 4 ET                           WT {1,2,4}, TC {1,4}, ET {4}
``brats2023``       1 NETC, 2 SNFH, 3 ET (adult glioma 2023)    WT {1,2,3}, TC {1,3}, ET {3}
``brats2024-gli``   1 NETC, 2 SNFH, 3 ET, 4 RC (post-treatment) WT {1,2,3}, TC {1,3}, ET {3}; RC none
``brats-men``       1 NETC, 2 SNFH, 3 ET (meningioma)           WT {1,2,3}, TC {1,3}, ET {3}
``brats-met``       1 NETC, 2 SNFH, 3 ET (metastases)           WT {1,2,3}, TC {1,3}, ET {3}
``brats-ped``       1 ET, 2 NET, 3 CC, 4 ED (paediatric)        WT {1,2,3,4}, TC {1,2,3}, ET {1}
==================  ==========================================  =====================================

Choice per patient (:func:`label_set_for`): an explicit label set (``--label-set`` / the study config's
``label_set``) wins; otherwise the file naming decides: BraTS 2021 naming (``_t1ce``) -> ``brats2021``; BraTS
2023+ naming (``-t1c``) -> by the patient id's challenge prefix (``BraTS-GLI-`` -> ``brats2024-gli``, which
also reads 2023 glioma cases, ``BraTS-MEN-`` -> ``brats-men``, ``BraTS-MET-`` -> ``brats-met``,
``BraTS-PED-`` -> ``brats-ped``), else ``brats2023``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.store.schema import REGIONS


@dataclass(frozen=True)
class LabelSet:
    """One label set.

    Attributes:
        name: its key in :data:`LABEL_SETS` (stored as ``patients.label_scheme``).
        labels: {label value: short name}; 0 is background.
        regions: {region: label values}, for WT, TC, ET.
        paint: the label painted for WT, TC and ET when a label map is built from region masks.
    """
    name: str
    labels: dict
    regions: dict
    paint: tuple

    @property
    def allowed(self) -> set[int]:
        """Label values a segmentation file of this set may hold (0 included)."""
        return {0, *self.labels}

    def to_regions(self, seg: np.ndarray) -> np.ndarray:
        """(X, Y, Z) integer label map -> (3, X, Y, Z) bool WT, TC, ET masks."""
        return np.stack([np.isin(seg, self.regions[r]) for r in REGIONS])

    def to_labels(self, regions: np.ndarray) -> np.ndarray:
        """(3, X, Y, Z) bool WT, TC, ET masks -> (X, Y, Z) uint8 label map, nested (ET inside TC inside WT)."""
        out = np.zeros(regions.shape[1:], np.uint8)
        for mask, label in zip(regions, self.paint):
            out[mask] = label
        return out


def _glioma_like(name: str, extra: dict | None = None) -> LabelSet:
    return LabelSet(name, {1: "NETC", 2: "SNFH", 3: "ET", **(extra or {})},
                    {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}, (2, 1, 3))


LABEL_SETS: dict[str, LabelSet] = {
    "brats2021": LabelSet("brats2021", {1: "NCR", 2: "ED", 4: "ET"}, {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
                          (2, 1, 4)),
    "brats2023": _glioma_like("brats2023"),
    "brats2024-gli": _glioma_like("brats2024-gli", {4: "RC"}),
    "brats-men": _glioma_like("brats-men"),
    "brats-met": _glioma_like("brats-met"),
    "brats-ped": LabelSet("brats-ped", {1: "ET", 2: "NET", 3: "CC", 4: "ED"},
                          {"WT": (1, 2, 3, 4), "TC": (1, 2, 3), "ET": (1,)}, (4, 2, 1)),
}
# BraTS 2023+ patient ids start with the challenge: BraTS-GLI-00000-000, BraTS-MEN-..., BraTS-MET-..., BraTS-PED-...
PREFIXES = {"BraTS-GLI-": "brats2024-gli", "BraTS-MEN-": "brats-men", "BraTS-MET-": "brats-met",
            "BraTS-PED-": "brats-ped"}


def get_label_set(name: str) -> LabelSet:
    """The label set of that name; raises ValueError listing the known ones."""
    if name not in LABEL_SETS:
        raise ValueError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}")
    return LABEL_SETS[name]


def label_set_for(patient_id: str, naming: str, explicit: str | None = None) -> LabelSet:
    """The label set of one patient: ``explicit`` when given, else by the naming and the id's challenge prefix."""
    if explicit:
        return get_label_set(explicit)
    if naming == "brats2021":
        return LABEL_SETS["brats2021"]
    for prefix, name in PREFIXES.items():
        if patient_id.startswith(prefix):
            return LABEL_SETS[name]
    return LABEL_SETS["brats2023"]
