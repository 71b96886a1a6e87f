"""The configuration of one batch run: what :func:`core.batch.pipeline.run` takes instead of two dozen arguments."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from core.batch.shards import parse_shard
from core.inference.methods import METHODS, canonical_method
from core.inference.precision import check_precision
from core.io.label_sets import get_label_set
from core.metrics.overlap import NSD_TOLERANCE_MM


@dataclass
class RunConfig:
    """One batch run (see :func:`core.batch.pipeline.run_batch` for the meaning of every field).

    Invalid values raise ValueError when the config is built (an unknown method, precision or shard).

    Attributes:
        cohort: BraTS-layout folder (resolved to an absolute path).
        db: results database file.
        checkpoints: model specs (a checkpoint path, or a mapping with ``checkpoint``, ``ensemble``,
            ``snapshots``, ``auxiliary``; :mod:`core.inference.modelset`).
        methods: method names (:mod:`core.inference.methods`), canonicalised, duplicates dropped.
        T: samples (passes) of stochastic methods.
        split: only that split's patients (None: all).
        device: torch device name (None: CUDA when available).
        maps_dir: NIfTI maps root (None: ``<db dir>/maps``).
        mc_batch: passes per forward call, or ``"auto"``.
        seed: the run's seed.
        save_maps: write NIfTI maps.
        progress: show a progress bar.
        patient_meta: patient id -> metadata stored with the patient row.
        calibration_split: the split the +ts temperatures are fitted on.
        quality: recompute the quality prediction at the end.
        ts_fit_mask: voxel set of the temperature fit (``brain`` | ``roi``).
        echo: where messages go (a print-like callable).
        precision: ``auto|fp32|bf16|fp16``.
        shard: (i, n) or None (parsed from ``"i/n"``).
        plan: a driver's plan for a worker (None: resolve it here).
        skip: (model, method, patient) done elsewhere.
        prefetch: patients loaded ahead in a background thread (0: inline).
        finish_depth: patients waiting for the background finisher (0: inline).
        prepare_only: write run, models and plan, then stop.
        label_set: the label set of every patient (:mod:`core.io.label_sets`); None: by naming and patient id.
        nsd_tolerance_mm: tolerance of the normalised surface Dice (mm).
    """
    cohort: str | Path
    db: str | Path
    checkpoints: list
    methods: list = field(default_factory=lambda: list(METHODS))
    T: int = 10
    split: str | None = None
    device: str | None = None
    maps_dir: str | Path | None = None
    mc_batch: int | str = "auto"
    seed: int = 0
    save_maps: bool = True
    progress: bool = True
    patient_meta: dict | None = None
    calibration_split: str = "calibration"
    quality: bool = True
    ts_fit_mask: str = "brain"
    echo: Callable = print
    precision: str = "auto"
    shard: tuple[int, int] | str | None = None
    plan: dict | None = None
    skip: set | None = None
    prefetch: int = 2
    finish_depth: int = 1
    prepare_only: bool = False
    label_set: str | None = None
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM

    def __post_init__(self):
        self.cohort = Path(self.cohort).resolve()
        self.db = Path(self.db)
        self.methods = list(dict.fromkeys(canonical_method(m) for m in self.methods))
        check_precision(self.precision)
        self.shard = parse_shard(self.shard)
        if self.label_set is not None:
            get_label_set(self.label_set)  # an unknown name fails before any patient

    @property
    def maps_root(self) -> Path:
        """Where the NIfTI maps go: ``maps_dir``, else ``maps/`` next to the database."""
        return Path(self.maps_dir) if self.maps_dir else self.db.parent / "maps"

    @classmethod
    def names(cls) -> list[str]:
        """The field names (the keyword arguments :func:`core.batch.pipeline.run_batch` accepts)."""
        return [f.name for f in fields(cls)]
