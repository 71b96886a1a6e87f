"""Merge shard databases into one results database (``python -m core merge --db OUT SHARD ...``).

A shard database is what one share of the patients wrote (``--shard i/n``, a worker of ``--workers`` /
``--executor ray``): the same schema, the same run id (the run id is a hash of the configuration, and the
shard is not part of it), disjoint patients. Merging copies, one transaction per shard:

* ``runs``: the run's row when OUT does not have it yet (its ``created_at`` is the first shard's);
* ``models``, ``patients``: replaced by key;
* ``evaluations`` and every per-evaluation table (``metrics``, ``calibration_hist``, ``uncertainty_hist``,
  ``maps``): for each (run, model, method, patient) evaluation of the shard, OUT's rows of that key are
  replaced by the shard's (so merging again, or merging a rerun's shard, is idempotent);
* ``temperatures``, ``run_plan``: copied when OUT has none for the (run, model[, method]); when it has, they are
  compared: a different temperature (relative difference > 1e-4) or precision / passes per call is
  reported as a conflict (the first one is kept; shards that fitted or chose differently are not identical
  to a single run, see the README's Slurm recipe);
* ``quality``, ``quality_summary``: never copied; recomputed over all merged patients
  (:func:`core.store.quality.update_quality`), since a quality model of one shard is a model of fewer patients;
* the derived tables of :mod:`core.store.derived` (the app's fast reads): rebuilt for every merged run.

Tables are read from each shard with a read-only connection and inserted through registered Arrow tables,
never by pasting a file name or a value into SQL. Map files are not moved: their paths are absolute, so
shards should write their maps where the merged database's readers find them (the default ``maps/`` folder
beside the databases, or one ``--maps-dir``).
"""
from __future__ import annotations

import math
from pathlib import Path

from core import store
from core.store import derived
from core.store.freshness import table_names
from core.store.quality import update_quality



EVAL_KEY = ("run_id", "model", "method", "patient_id")
PER_EVALUATION = ("evaluations", "metrics", "calibration_hist", "uncertainty_hist", "maps")
TEMPERATURE_RTOL = 1e-4


def _register(con, name: str, src, table: str):
    """Register the shard's whole ``table`` (a name from this module's fixed lists) as ``name`` in ``con``."""
    arrow = src.sql(f"SELECT * FROM {table}").to_arrow_table()
    con.register(name, arrow)
    return arrow.num_rows


def _merge_one(con, src, shard: Path, conflicts: list[str]) -> dict:
    have = table_names(src)
    n = {}
    with store.transaction(con):
        if "runs" in have:
            _register(con, "_f", src, "runs")
            con.execute("INSERT INTO runs SELECT * FROM _f WHERE run_id NOT IN (SELECT run_id FROM runs)")
            con.unregister("_f")
        for table, key in (("models", ("run_id", "model")), ("patients", ("cohort", "patient_id"))):
            if table in have:
                n[table] = _register(con, "_f", src, table)
                on = " AND ".join(f"{table}.{k} = _f.{k}" for k in key)
                con.execute(f"DELETE FROM {table} USING _f WHERE {on}")
                con.execute(f"INSERT INTO {table} SELECT * FROM _f")
                con.unregister("_f")
        if "evaluations" in have:
            _register(con, "_e", src, "evaluations")
            on = lambda t: " AND ".join(f"{t}.{k} = _e.{k}" for k in EVAL_KEY)  # noqa: E731
            for table in PER_EVALUATION:
                con.execute(f"DELETE FROM {table} USING _e WHERE {on(table)}")
            for table in PER_EVALUATION:
                if table in have:
                    n[table] = _register(con, "_f", src, table)
                    con.execute(f"INSERT INTO {table} SELECT * FROM _f")
                    con.unregister("_f")
            con.unregister("_e")
        if "temperatures" in have:
            _merge_checked(con, src, shard, "temperatures", ("run_id", "model", "method", "region"), conflicts,
                           lambda a, b: _close(a["temperature"], b["temperature"]))
        if "run_plan" in have:
            _merge_checked(con, src, shard, "run_plan", ("run_id", "model"), conflicts,
                           lambda a, b: a["precision"] == b["precision"] and a["mc_batch"] == b["mc_batch"])
    return n


def _close(a, b) -> bool:
    """Equal temperatures (relative 1e-4); NULL (read back as None or NaN: no fit) equals only NULL."""
    na, nb = a is None or a != a, b is None or b != b
    if na or nb:
        return na and nb
    return math.isclose(a, b, rel_tol=TEMPERATURE_RTOL)


def _merge_checked(con, src, shard: Path, table: str, key: tuple, conflicts: list[str], same) -> None:
    """Copy the rows of ``table`` OUT lacks; report the rows whose values differ from OUT's (OUT's are kept)."""
    cols = ", ".join(key)
    mine = {tuple(r[k] for k in key): r for r in con.execute(f"SELECT * FROM {table}").df().to_dict("records")}
    for r in src.execute(f"SELECT * FROM {table} ORDER BY {cols}").df().to_dict("records"):
        k = tuple(r[c] for c in key)
        if k in mine and not same(mine[k], r):
            conflicts.append(f"{shard.name}: {table} {k} differs from the merged database's (kept the first)")
    _register(con, "_f", src, table)
    on = " AND ".join(f"{table}.{k} = _f.{k}" for k in key)
    con.execute(f"INSERT INTO {table} SELECT * FROM _f WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE {on})")
    con.unregister("_f")


def merge_databases(out: str | Path, shards: list[str | Path], quality: bool = True, echo=print) -> dict:
    """Merge ``shards`` into ``out`` (created when missing); recompute quality prediction for the merged runs.

    One transaction per shard (see the module doc for what each table gets); afterwards the quality
    prediction (with ``quality``) and the derived tables of every merged run are rebuilt. Conflicts are
    reported through ``echo``, not raised.

    Args:
        out: the merged database.
        shards: the shard databases, merged in this order (in a conflict, the values ``out`` already had, or
            the first shard's, are kept).
        quality: recompute the quality prediction over all merged patients.
        echo: where messages go.

    Returns:
        ``{"db", "shards", "runs" (sorted run ids), "rows" (per table, summed over shards), "conflicts"
        (messages)}``.

    Raises:
        FileNotFoundError: when a shard database does not exist.
        ValueError: when a shard is ``out`` itself.
    """
    out = Path(out)
    shards = [Path(s) for s in shards]
    for s in shards:
        if not s.exists():
            raise FileNotFoundError(f"no shard database at {s}")
        if s.resolve() == out.resolve():
            raise ValueError(f"{s} is the output database itself")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    conflicts: list[str] = []
    runs: set[str] = set()
    with store.writer(out) as con:
        for s in shards:
            src = store.connect(s, read_only=True)
            try:
                runs |= {r[0] for r in src.execute("SELECT DISTINCT run_id FROM evaluations").fetchall()}
                for t, k in _merge_one(con, src, s, conflicts).items():
                    rows[t] = rows.get(t, 0) + k
            finally:
                src.close()
        if quality:
            for run_id in sorted(runs):
                update_quality(con, run_id)

        for run_id in sorted(runs):
            derived.build(con, run_id)
    for c in conflicts:
        echo(f"merge conflict: {c}")
    echo(f"merged {len(shards)} shard(s) into {out}: " + ", ".join(f"{t} {k}" for t, k in rows.items()))
    return {"db": str(out), "shards": [str(s) for s in shards], "runs": sorted(runs), "rows": rows,
            "conflicts": conflicts}
