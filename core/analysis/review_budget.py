"""Review-budget ranking of patients (issue 25, paper 003's review budget at cohort level).

A QA team can inspect a fixed share ``b`` of the cohort's voxels (e.g. 1 % of the brain voxels of every patient
of the filter together). Reviewing the most uncertain voxels first, the cohort threshold is the uncertainty bin
where the pooled count from the top reaches ``b x N`` (:func:`budget_cut`; the bin cut by the budget is taken in
proportion, as :func:`core.metrics.uncertainty.budget_curve` does). A patient's *review load* is its number of
voxels inside that reviewed set; ranking patients by it puts first the patients that hold most of the cohort's
review work, so reviewing the worklist from the top spends the budget where the model is least sure. Where ground
truth exists the errors inside each patient's share are given too (``errors_in_review``, ``capture``).

Everything is on the stored uncertainty bins (:data:`core.metrics.uncertainty.UNC_EDGES`, highest bin = most
uncertain): a cohort costs one pooled histogram and one per-patient sum, not a voxel.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

RANK_COLUMNS = ["patient_id", "review_voxels", "review_share", "cumulative_share", "errors_in_review", "capture",
                "voxels"]


def budget_cut(counts, budget: float) -> tuple[int, float]:
    """The cohort threshold of a review budget.

    Args:
        counts: (K,) voxels per uncertainty bin, pooled over the cohort (bin K-1 the most uncertain).
        budget: the share of all voxels reviewed, in (0, 1].

    Returns:
        (cut, frac): bins above ``cut`` are reviewed whole and ``frac`` in [0, 1] of bin ``cut``'s voxels, so that
        sum(counts[cut+1:]) + frac x counts[cut] = budget x sum(counts). (0, 0.0) when there are no voxels.

    Raises:
        ValueError: budget outside (0, 1].
    """
    if not 0 < budget <= 1:
        raise ValueError(f"the review budget is a share of the voxels in (0, 1], not {budget!r}")
    c = np.asarray(counts, np.float64)
    total = c.sum()
    if total <= 0:
        return 0, 0.0
    want = budget * total
    from_top = np.cumsum(c[::-1])  # from_top[j] = voxels of the top j+1 bins
    j = int(np.searchsorted(from_top, want, side="left"))  # the first top-block that reaches the budget
    j = min(j, len(c) - 1)
    cut = len(c) - 1 - j
    above = from_top[j] - c[cut]
    frac = float((want - above) / c[cut]) if c[cut] > 0 else 0.0
    return cut, min(max(frac, 0.0), 1.0)


def rank_patients(per_patient: pd.DataFrame, frac: float, budget_voxels: float) -> pd.DataFrame:
    """Patients ranked by their share of the cohort's review budget.

    Args:
        per_patient: one row per patient: patient_id, n_above / e_above (voxels / error voxels in the bins above
            the cut), n_cut / e_cut (in the cut bin), n_total / e_total (all voxels / all error voxels); error
            columns NaN where the patient has no ground truth.
        frac: the share of the cut bin reviewed (:func:`budget_cut`).
        budget_voxels: budget x all voxels of the cohort.

    Returns:
        :data:`RANK_COLUMNS`, most review load first (ties by patient id): review_voxels (expected voxels of the
        patient inside the reviewed set), review_share (of the budget), cumulative_share (down the list),
        errors_in_review (expected error voxels inside, NaN without ground truth), capture (errors_in_review /
        e_total: the share of the patient's errors the budget sees; NaN when it has no error), voxels (n_total).
    """
    d = per_patient
    load = d.n_above.astype(float) + frac * d.n_cut.astype(float)
    err = d.e_above.astype(float) + frac * d.e_cut.astype(float)
    e_total = d.e_total.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        capture = np.where(e_total > 0, err / np.where(e_total > 0, e_total, 1.0), np.nan)
        share = load / budget_voxels if budget_voxels > 0 else load * np.nan
    out = pd.DataFrame({"patient_id": d.patient_id.astype(str).to_numpy(), "review_voxels": load.to_numpy(),
                        "review_share": np.asarray(share, np.float64), "errors_in_review": err.to_numpy(),
                        "capture": capture, "voxels": d.n_total.astype(float).to_numpy()})
    out = out.sort_values(["review_voxels", "patient_id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    out["cumulative_share"] = out.review_share.cumsum()
    return out[RANK_COLUMNS]
