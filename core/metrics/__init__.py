"""Metric engine (layer 1, pure): arrays in, numbers and bin counts out; imports nothing of the project.

Shapes and units: ``prob`` (R, X, Y, Z) float region probabilities in [0, 1] (R = 3: WT, TC, ET); ``truth``
(R, X, Y, Z) bool; ``entropy``, ``mi`` (R, X, Y, Z) float in [0, 1] (bits); ``spacing`` mm; volumes in ml.
Submodules: validation, overlap, lesions, calibration, uncertainty, distribution, binning, suite.
"""
from core.metrics.validation import (  # noqa: F401
    CHUNK,
    MetricInputError,
    check_inputs,
)
from core.metrics.overlap import (  # noqa: F401
    ROI_RADIUS_VOX,
    dice,
    bbox_slices,
    roi_mask,
    hd95,
    NSD_TOLERANCE_MM,
    nest_regions,
    nsd,
    nsd_from_edges,
    boundary_mask,
)
from core.metrics.lesions import (  # noqa: F401
    CONNECTIVITY,
    MATCH_THRESHOLD,
    LESION_METRICS,
    label_lesions,
    match_lesions,
    lesion_metrics,
)
from core.metrics.calibration import (  # noqa: F401
    N_CAL_BINS,
    NLL_EPS,
    calibration_bins,
    calibration_bin_index,
    ece_from_gap_sums,
    binned_calibration,
    calibration_from_bins,
    brier,
    nll,
    patient_reliability,
    reliability_histogram,
)
from core.metrics.uncertainty import (  # noqa: F401
    UNC_MIN,
    UNC_LIN_START,
    UNC_LIN_STEP,
    N_UNC_LOG,
    UNC_EDGES,
    N_UNC_BINS,
    UEO_THRESHOLDS,
    BUDGETS,
    UNCERTAIN_T,
    uncertainty_bin_index,
    uncertainty_bins,
    auroc_from_bins,
    threshold_bin,
    ueo_curve,
    fp_removal_benefit,
    budget_curve,
    budget_auc,
    auroc_exact,
    epkl_to_unit,
)
from core.metrics.distribution import (  # noqa: F401
    crps_ensemble,
    crps_fair,
    prediction_interval_ranks,
    volume_distribution,
    soft_label_metrics,
)
from core.metrics.binning import (  # noqa: F401
    dense_bins,
    sum_by_bin,
    dense_uncertainty_bins,
)
from core.metrics.suite import (  # noqa: F401
    PatientEvaluation,
    evaluate_patient,
)
