"""Results store (layer 3): DuckDB schema, connections, run status, writes, reads and derived tables.

Every query takes parameters (``?``); identifiers come only from :mod:`core.store.schema`.
"""
from core.store.schema import (  # noqa: F401
    SCHEMA,
    RESULT_TABLES,
    STORED_TABLES,
    VIEWS,
    CALIBRATION_VIEW,
    calibration_hist_insert,
    UNCERTAINTY_VIEW,
    uncertainty_hist_insert,
    COLUMNS,
    KEY,
    CAL_LIST_COLS,
    BRAIN_ONLY,
    PRED_ONLY,
    UNC_COUNT_COLS,
    SUMMARY_METRICS,
    WIDE_METRICS,
    PRED_COLUMNS,
    LIST_MEASURES,
    MASKS,
    KEYS,
    TABLES,
    LEADERBOARD_METRICS,
)
from core.store.connection import (  # noqa: F401
    DatabaseBusy,
    connect,
    READER_IDLE_S,
    shared_reader,
    release_readers,
    writer,
    transaction,
)
from core.store.status import (  # noqa: F401
    RunStatus,
    read_run_status,
)
from core.store.freshness import (  # noqa: F401
    table_names,
    valid,
    list_arrays,
)
from core.store.writes import (  # noqa: F401
    upsert_run,
    upsert_model,
    done_evaluations,
    write_patient,
    write_temperatures,
    write_run_plan,
    write_quality,
)
from core.store.reads import (  # noqa: F401
    read_run_plan,
    run_plan,
    read_temperatures,
    run_temperatures,
    list_runs,
    run_config,
    run_models,
    run_methods,
    evaluation_status,
    failures,
    cohort_patients,
    quality_summary,
    quality_patients,
    table_counts,
    patient_measure,
    patient_metrics,
    summed_calibration_bins,
    summed_uncertainty_bins,
    cohort_threshold_ueo,
    threshold_cubes,
    grouped_bins,
    cohort_summary,
    patient_calibration_bins,
    calibration_dense,
    calibration_bins_subset,
    cohort_leaderboard,
    calibration_bin_arrays,
    metric_wide,
    patient_maps,
    patient_source,
    review_budget_ranking,
)
from core.store.quality import (  # noqa: F401
    update_quality,
)
from core.store import derived  # noqa: F401,E402
from core.store.compare import TableDiff, compare_databases  # noqa: F401,E402
