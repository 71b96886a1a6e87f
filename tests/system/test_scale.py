"""Scale-out: shards of one run merge into the database a single-process run writes (timings aside), whether the
shards ran in a local process pool (--workers 2), as Ray tasks on a local 2-CPU Ray cluster (--executor ray),
or as separate `--shard i/n` commands merged with `python -m core merge` (a Slurm array)."""
import json
import math
import os
from pathlib import Path

import duckdb
import pytest
import torch

from core.analysis import quality
from core.batch.shards import parse_shard, shard_cases, shard_db_path

METHODS = ["deterministic", "deterministic+ts", "mc_dropout"]
KW = dict(methods=METHODS, T=2, split="test", mc_batch=2, progress=False, echo=lambda *_: None)
# columns compared per table: everything but timings and timestamps (map paths relative to the maps folder)
COMPARE = {
    "runs": "run_id, cohort, config, code_version, device",
    "models": "*",
    "patients": "*",
    "evaluations": "run_id, model, method, patient_id, status, error",
    "metrics": "*",
    "calibration_bins": "*",
    "uncertainty_bins": "*",
    "maps": "run_id, model, method, patient_id, kind, path",
    "temperatures": "*",
    "run_plan": "run_id, model, precision_requested, precision, precision_reason, precision_checks, check_patient, "
                "mc_batch, device",
    "quality": "*",
    "quality_summary": "*",
    # the derived tables (core/store/derived.py): built by the single run's end and by the merge, from the same rows
    "patient_summary": "*",
    "cohort_calibration_bins": "*",
    "cohort_uncertainty_bins": "*",
    "cohort_ueo_summary": "*",
    "cohort_ueo_patients": "*",
}


def snapshot(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    out = {}
    for t, cols in COMPARE.items():
        rows = con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall()
        if t == "maps":
            rows = [r[:-1] + (os.path.relpath(r[-1], db.parent / "maps"),) for r in rows]
        out[t] = rows
    con.close()
    return out


def _same_row(a: tuple, b: tuple) -> bool:
    """Equal rows; floats equal to 1e-12 relative: the metric engine's brain-level sums over millions of voxels
    (vectorised float64 reductions) can differ in the last bit between processes, as their order follows the
    arrays' memory alignment."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, list) and isinstance(y, list):  # list columns of the derived tables
            if not _same_row(tuple(x), tuple(y)):
                return False
        elif isinstance(x, float) and isinstance(y, float):
            if not (x == y or math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15) or (x != x and y != y)):
                return False
        elif x != y:
            return False
    return True


def assert_same(got: dict, ref: dict) -> None:
    for t in COMPARE:
        assert len(got[t]) == len(ref[t]), (t, len(got[t]), len(ref[t]))
        diff = [(a, b) for a, b in zip(got[t], ref[t]) if not _same_row(a, b)]
        assert not diff, str((t, diff[:6]))


@pytest.fixture(autouse=True)
def quality_on_four_patients(monkeypatch):
    """The tiny test split has 4 patients: let quality prediction run on them, so that a quality model
    fitted per shard (2 patients, none) would differ from the merged one (4 patients)."""
    monkeypatch.setattr(quality, "MIN_PATIENTS", 3)


@pytest.fixture(autouse=True)
def one_thread():
    """Every process of these tests runs torch on one thread (the workers get cpu_count / 2 = 1 here): a
    convolution summed over 1 or 2 threads differs in the last bits, and these tests compare bit for bit
    (on other machines shards differ from a single run only by such float noise)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def single_run(tiny_cohort, tiny_checkpoints, tmp_path_factory):
    from core.batch.pipeline import run_batch

    q, n = quality.MIN_PATIENTS, torch.get_num_threads()
    quality.MIN_PATIENTS = 3
    torch.set_num_threads(1)
    try:
        db = tmp_path_factory.mktemp("single") / "results.duckdb"
        s = run_batch(tiny_cohort, db, [str(tiny_checkpoints[1])], **KW)
    finally:
        quality.MIN_PATIENTS = q
        torch.set_num_threads(n)
    assert s["failed"] == 0 and s["ok"] == 12
    snap = snapshot(db)
    assert len(snap["quality"]) > 0 and len(snap["temperatures"]) == 3 and len(snap["run_plan"]) == 1
    return db, snap


def test_shard_split_is_deterministic_and_covers_the_cohort():
    ids = [f"P{i:03d}" for i in range(11)]
    parts = [shard_cases(ids, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == ids and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts[1] == ["P001", "P004", "P007", "P010"]
    assert parse_shard("2/8") == (2, 8) and parse_shard(None) is None
    for bad in ("8/8", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert shard_db_path("/x/r.duckdb", 1, 4).name == "r.duckdb.shard-1-of-4.duckdb"


def test_local_pool_equals_single_process(single_run, tiny_cohort, tiny_checkpoints, tmp_path):
    from core.batch.executors import run_sharded

    db = tmp_path / "results.duckdb"
    s = run_sharded(tiny_cohort, db, [str(tiny_checkpoints[1])], workers=2, **KW)
    assert s["ok"] == 12 and s["failed"] == 0 and s["shards"] == 2 and not s["conflicts"]
    assert not list(tmp_path.glob("*.shard-*"))  # shard files merged and removed
    assert_same(snapshot(db), single_run[1])
    # a rerun skips everything (the merged database's evaluations are passed to the shards) and keeps the plan
    trial = "SELECT chunk_trial FROM run_plan"
    before = duckdb.connect(str(db), read_only=True).execute(trial).fetchall()
    s2 = run_sharded(tiny_cohort, db, [str(tiny_checkpoints[1])], workers=2, **{**KW, "mc_batch": "auto"})
    assert s2["ok"] == 0 and s2["skipped"] == 12
    assert_same(snapshot(db), single_run[1])
    assert duckdb.connect(str(db), read_only=True).execute(trial).fetchall() == before


def test_slurm_style_shards_merged_by_the_cli_equal_single_process(single_run, tiny_cohort, tiny_checkpoints,
                                                                   tmp_path):
    from core.cli import main

    args = ["run", "--cohort", str(tiny_cohort), "--models", str(tiny_checkpoints[1]), "--methods", *METHODS,
            "--T", "2", "--split", "test", "--mc-batch", "2"]
    for i in range(2):
        assert main(args + ["--shard", f"{i}/2", "--db", str(tmp_path / f"shard_{i}.duckdb")]) == 0
    shard0 = duckdb.connect(str(tmp_path / "shard_0.duckdb"), read_only=True)
    assert [r[0] for r in shard0.execute("SELECT DISTINCT patient_id FROM evaluations ORDER BY 1").fetchall()] == \
        shard_cases(sorted({r[3] for r in single_run[1]["evaluations"]}), (0, 2))
    assert shard0.execute("SELECT count(*) FROM quality").fetchone()[0] == 0  # quality only after the merge
    shard0.close()
    out = tmp_path / "results.duckdb"
    assert main(["merge", "--db", str(out), str(tmp_path / "shard_0.duckdb"), str(tmp_path / "shard_1.duckdb")]) == 0
    assert_same(snapshot(out), single_run[1])
    # merging again is idempotent
    assert main(["merge", "--db", str(out), str(tmp_path / "shard_1.duckdb")]) == 0
    assert_same(snapshot(out), single_run[1])


def test_merge_reports_conflicting_temperatures(single_run, tmp_path):
    import shutil

    from core.batch.merge import merge_databases

    other = tmp_path / "other.duckdb"
    shutil.copy(single_run[0], other)
    con = duckdb.connect(str(other))
    con.execute("UPDATE temperatures SET temperature = temperature * 1.5 WHERE region = 'WT'")
    con.close()
    out = tmp_path / "merged.duckdb"
    merge_databases(out, [single_run[0]], echo=lambda *_: None)
    res = merge_databases(out, [other], echo=lambda *_: None)
    assert len(res["conflicts"]) == 1 and "temperatures" in res["conflicts"][0] and "WT" in res["conflicts"][0]


def test_ray_executor_equals_single_process(single_run, tiny_cohort, tiny_checkpoints, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt): "
                                            "the Ray executor is not tested")
    from core.batch.executors import ray_init, run_sharded

    ray_init(None, num_cpus=2, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        db = tmp_path / "results.duckdb"
        s = run_sharded(tiny_cohort, db, [str(tiny_checkpoints[1])], workers=2, executor="ray", **KW)
    finally:
        ray.shutdown()
    assert s["ok"] == 12 and s["failed"] == 0 and s["executor"] == "ray"
    got = snapshot(db)
    assert_same(got, single_run[1])
    assert json.loads(got["run_plan"][0][5]) == []  # CPU: no precision check ran
