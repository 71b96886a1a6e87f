"""The sidebar's selection (database, run, models, method, mask, entropy filter) and the data folder."""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis.strata import groups_kept



ROOT = Path(__file__).resolve().parent.parent


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]






STRAT_MEASURES = {
    "mean entropy (WT, brain)": ("mean_entropy", "WT", "brain"),
    "mean entropy (WT, predicted region)": ("mean_entropy", "WT", "pred"),
    "mean MI (WT, brain)": ("mean_mi", "WT", "brain"),
    "mean EPKL (WT, brain)": ("mean_epkl", "WT", "brain"),
}


def data_dir() -> Path:
    """The folder the app may read databases from (env ``TUMOURQA_DATA``, default ``data/``), resolved."""
    return Path(os.environ.get("TUMOURQA_DATA", ROOT / "data")).resolve()


def available_dbs() -> list[str]:
    """Every ``*.duckdb`` file below :func:`data_dir` (any depth), as sorted paths relative to it (empty when the
    folder does not exist)."""
    d = data_dir()
    if not d.is_dir():
        return []
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.duckdb") if p.is_file())


def resolve_db(name: str) -> Path:
    """The absolute path of a database name relative to :func:`data_dir`.

    Args:
        name: a path relative to the data folder, as :func:`available_dbs` lists them.

    Returns:
        the resolved path (it need not exist).

    Raises:
        ValueError: when the name resolves outside the data folder (``..``, an absolute path, a link out).
    """
    d = data_dir()
    p = (d / name).resolve()
    if d != p and d not in p.parents:
        raise ValueError(f"database path {name!r} is outside the data folder")
    return p


def model_colours(models: list[str]) -> dict[str, str]:
    """Model -> hex colour of :data:`PALETTE`, assigned in sorted model order (cycling after eight models), so
    a model keeps its colour whatever the selection's order."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(models))}


@dataclass
class Selection:
    """The sidebar's choices for one rerun (built by :func:`dashboard.sidebar.sidebar`).

    Attributes:
        db: the database file. run_id: the run.
        models: the selected models; all_models: every model of the run.
        method: the selected method; methods: every method of the run.
        mask: the voxel set ('brain' | 'roi').
        strat_model, strat_measure: the model and the :data:`STRAT_MEASURES` label the entropy filter uses.
        q_range: (lo, hi) quantile range of the filter in %, 0-100.
        patients: the patients inside the filter; all_patients: every patient the stratification measure has
            a row for (:func:`core.store.patient_measure`).
        measure_values: DataFrame(patient_id, value) of the stratification measure.
        group_pids, group_ids: those patients and their quantile groups
            (:func:`core.analysis.strata.quantile_groups`; -1 for a NaN value).
    """
    db: Path
    run_id: str
    models: list[str]
    all_models: list[str]
    method: str
    methods: list[str]
    mask: str
    strat_model: str
    strat_measure: str
    q_range: tuple[int, int]
    patients: list[str] = field(default_factory=list)  # patients inside the entropy filter
    all_patients: list[str] = field(default_factory=list)
    measure_values: pd.DataFrame | None = None  # patient_id, value of the stratification measure
    group_pids: tuple = ()  # every patient with a stratification value, and its quantile group (quantile_groups)
    group_ids: tuple = ()
    review_filtered: bool = False  # the sidebar's review-status filter dropped patients: subsets go by patient id

    groups_digest: str | None = None  # subset_key(group_pids, group_ids), when the sidebar has it (cached)

    @functools.cached_property
    def groups_key(self) -> str:
        """A short digest of (group_pids, group_ids): the cache key of the per-group rollups (hashing 10,000
        patient ids as a cache argument on every rerun costs more than the digest); computed once per selection."""
        return self.groups_digest or subset_key(self.group_pids, self.group_ids)

    @functools.cached_property
    def key(self) -> tuple:
        """Everything a page's numbers depend on besides its own widgets: the database file and its version
        (modification time), run, models, method, mask, stratification, quantile range and, when the review
        filter dropped patients, the digest of the patients kept. The key of :mod:`dashboard.memo`."""
        try:
            version = Path(self.db).stat().st_mtime_ns
        except OSError:
            version = None
        kept = subset_key(sorted(self.patients)) if self.review_filtered else None
        return (str(self.db), version, self.run_id, tuple(self.models), self.method, self.mask, self.strat_model,
                self.strat_measure, tuple(self.q_range), self.groups_key, kept)

    @property
    def colours(self) -> dict[str, str]:
        """Model -> hex colour of every model of the run (:func:`model_colours`)."""
        return model_colours(self.all_models)


def in_filter(sel: "Selection", patient_ids) -> np.ndarray:
    """Whether each patient is inside the entropy filter.

    Looked up in the stratification's cached id index (built once per stratification, not per call).

    Args:
        sel: the selection.
        patient_ids: (P,) patient ids (any order, repeats allowed).

    Returns:
        (P,) bool; all True when nobody is filtered out. A patient without a stratification value (not listed,
        or NaN) is inside only when the range is the whole 0-100 %.
    """
    ids = np.asarray(patient_ids, dtype=object)
    if len(sel.patients) == len(sel.all_patients):
        return np.ones(len(ids), bool)
    if sel.review_filtered:  # not a union of quantile groups: by id
        return pd.Index(list(sel.patients)).get_indexer(ids) >= 0
    index, gids = _group_index(sel.groups_key, sel.group_pids, sel.group_ids)
    pos = index.get_indexer(ids)
    return groups_kept(np.where(pos >= 0, gids[np.maximum(pos, 0)] if len(gids) else -2, -2), sel.q_range)


_GROUP_INDEX: dict = {}


def _group_index(groups_key: str, pids: tuple, gids: tuple) -> tuple[pd.Index, np.ndarray]:
    """(pd.Index of the stratification's patient ids, their group ids), kept for the last few stratifications."""
    hit = _GROUP_INDEX.get(groups_key)
    if hit is None:
        if len(_GROUP_INDEX) > 8:
            _GROUP_INDEX.clear()
        hit = _GROUP_INDEX[groups_key] = (pd.Index(list(pids)), np.asarray(gids, np.int64))
    return hit


def subset_key(*parts) -> str:
    """A cache key of large patient subsets: the SHA-1 of sequences of patient ids / numbers.

    Args:
        *parts: sequences whose items are turned into strings (separated so that different splits differ).

    Returns:
        the hex digest (40 characters).
    """
    h = hashlib.sha1()
    for part in parts:
        h.update("\x1f".join(map(str, part)).encode())
        h.update(b"\x1e")
    return h.hexdigest()
