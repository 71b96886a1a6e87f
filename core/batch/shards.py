"""Shard i of n of a cohort: a deterministic split of the sorted patient list, and the shard databases' names.

Patients are sorted by id (:func:`core.io.cohort.discover`) and shard i takes every n-th one starting at i
(``cases[i::n]``): the shards are disjoint, cover the cohort, differ in size by at most one patient, and
do not depend on the machine, the order of the folder listing or on which shards ran before.
"""
from __future__ import annotations

from pathlib import Path


def parse_shard(text) -> tuple[int, int] | None:
    """``"2/8"`` (or ``(2, 8)``) -> (2, 8), with 0 <= i < n; None stays None.

    Args:
        text: ``"i/n"``, an (i, n) tuple / list, or None.

    Returns:
        (i, n), or None.

    Raises:
        ValueError: when the text is not ``i/n`` with integers, n < 1 or i outside [0, n).
    """
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        i, n = (int(v) for v in text)
    else:
        parts = str(text).strip().split("/")
        if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ValueError(f"a shard is 'i/n' with 0 <= i < n (e.g. 0/4), not {text!r}")
        i, n = int(parts[0]), int(parts[1])
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need n >= 1 and 0 <= i < n")
    return i, n


def shard_cases(cases: list, shard: tuple[int, int] | None) -> list:
    """The shard's share of ``cases`` (already sorted by patient id): every n-th from the i-th.

    Args:
        cases: the cohort's cases, sorted by patient id.
        shard: (i, n), or None for every case.

    Returns:
        a new list.
    """
    if shard is None:
        return list(cases)
    i, n = shard
    return list(cases)[i::n]


def shard_db_path(db: str | Path, i: int, n: int) -> Path:
    """``<db>.shard-i-of-n.duckdb`` beside ``db`` (the file a worker of ``--workers`` / ``--executor ray`` writes)."""
    db = Path(db)
    return db.with_name(f"{db.name}.shard-{i}-of-{n}.duckdb")
