"""Run one batch as n shards in parallel: a local process pool (``--workers N``) or Ray tasks (``--executor ray``).

1. The driver *prepares* the run (:func:`core.batch.pipeline.run_batch` with ``prepare_only``): the ``runs`` and
   ``models`` rows, and the plan (precision, passes per forward call, +ts temperatures fitted once on the
   calibration split) in the output database. With Ray this step is itself a task (on a GPU when the cluster
   has one), so that the precision check runs on the hardware the shards use.
2. Shard i of n (:mod:`core.batch.shards`: every n-th patient of the sorted list) runs ``run_batch(shard=(i, n),
   plan=<the driver's plan>)`` in its own process and writes its own database ``<db>.shard-i-of-n.duckdb``
   (DuckDB allows one writer per file) and its maps into the output database's maps folder. Evaluations
   already done in the output database are skipped; a killed shard resumes from its shard file.
3. The driver merges the shard files into the output database (:mod:`core.batch.merge`), recomputes the quality
   prediction over all patients, cleans stale maps, and deletes the shard files (unless ``keep_shards``).

The merged database has the rows a single-process run writes (timings and timestamps aside): the same
run id, the same plan in every shard, MC-dropout masks seeded per (run seed, model, patient) and keyed by sample,
layer and position, not by the chunk layout (:mod:`core.inference.mc_masks`), so no result depends on which shard
or process a patient went to.

Local workers are separate interpreters (``python -m core.batch.executors <job>.json``; see :func:`_run_local`).
Devices: local worker i gets the GPU ``cuda:i mod k`` when there are k GPUs, else the CPU with
``cpu_count / n`` torch threads; a Ray task asks for ``num_gpus=1`` when the cluster has GPUs (Ray then
makes exactly that GPU visible to it) and ``num_cpus`` = the cluster's CPUs / n (at most one node's).
Ray needs the cohort, the checkpoints and the database folder on a file system every node sees.
"""
from __future__ import annotations

import os
from pathlib import Path

from core import store
from core.batch.merge import merge_databases
from core.batch.pipeline import run_batch
from core.batch.shards import shard_db_path
from core.io.maps import clean_stale_maps


ROOT = Path(__file__).resolve().parents[2]
EXECUTORS = ("local", "ray")


def _shard_worker(kwargs: dict) -> dict:
    """One shard in this process (a pool worker or a Ray task): ``run_batch(**kwargs)``; the summary back."""
    import torch

    threads = kwargs.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))

    s = run_batch(**kwargs)
    return {k: v for k, v in s.items() if k not in ("plan", "done")}


def _run_local(jobs: list[dict]) -> list[dict]:
    """Run every job as ``python -m core.batch.executors JOB.json`` (one process each, in parallel); their summaries.

    Fresh interpreters rather than a multiprocessing pool: a spawned pool worker re-runs the parent's
    ``__main__`` file (whatever it is: a notebook, a test runner that swapped it), and a forked one inherits
    OpenMP / DuckDB threads. The job travels as JSON (plain types only) beside its shard database."""
    import json
    import subprocess
    import sys

    procs = []
    try:
        for j in jobs:
            jf = Path(j["db"]).with_name(Path(j["db"]).name + ".job.json")
            jf.write_text(json.dumps({**j, "skip": sorted(j.get("skip") or ())}))
            env = {**os.environ, "OMP_NUM_THREADS": str(j.get("threads") or 1),
                   "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
            procs.append((subprocess.Popen([sys.executable, "-m", "core.batch.executors", str(jf)], cwd=ROOT, env=env), jf))
        bad = []
        for p, jf in procs:
            if p.wait() != 0:
                bad.append(f"{jf.name}: exit code {p.returncode}")
    finally:
        for p, _ in procs:  # only our own children, when the driver is interrupted
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for _, jf in procs:
        out = jf.with_name(jf.name[: -len(".job.json")] + ".result.json")
        if out.exists():
            results.append(json.loads(out.read_text()))
            out.unlink()
        jf.unlink(missing_ok=True)
    if bad:
        raise RuntimeError("shard worker(s) failed: " + "; ".join(bad))
    return results


def _job_main(job_file: str) -> int:
    """Entry of a local shard process: run the JSON job, write ``<shard db>.result.json``."""
    import json

    job = json.loads(Path(job_file).read_text())
    job["skip"] = {tuple(k) for k in job.get("skip") or ()}
    job["shard"] = tuple(job["shard"])
    summary = _shard_worker(job)
    db = Path(job["db"])
    db.with_name(db.name + ".result.json").write_text(json.dumps(summary, default=str))
    return 0


def _prepare_worker(kwargs: dict) -> dict:
    """The driver's step 1 where the driver is not a worker (Ray): the plan and the evaluations done."""

    return run_batch(**kwargs, prepare_only=True)


def ray_init(address: str | None = None, **kw) -> None:
    """Connect to a Ray cluster or start a local one, with this project importable in every worker.

    Does nothing when Ray is already initialised.

    Args:
        address: ``auto``, ``ray://host:10001``, ``host:6379``; None starts a local instance.
        **kw: more ``ray.init`` arguments.
    """
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}}
    ray.init(address=address, runtime_env=env, include_dashboard=False, **kw)


def _ray_resources(n: int) -> dict:
    import ray

    res = ray.cluster_resources()
    nodes = [nd for nd in ray.nodes() if nd.get("Alive")]
    node_cpus = max([nd["Resources"].get("CPU", 1) for nd in nodes] or [1])
    cpus = max(1, min(int(res.get("CPU", 1) // n), int(node_cpus)))
    return {"num_cpus": cpus, "num_gpus": 1 if res.get("GPU", 0) >= 1 else 0}


def default_workers(executor: str) -> int:
    """Shards when ``--workers`` is not given: Ray: the cluster's GPUs (else 2); local: 2.

    Args:
        executor: ``local`` or ``ray`` (Ray must be initialised, :func:`ray_init`).
    """
    if executor == "ray":
        import ray

        g = int(ray.cluster_resources().get("GPU", 0))
        return g if g > 0 else 2
    return 2


def run_sharded(cohort, db, checkpoints, workers: int | None = None, executor: str = "local",
                ray_address: str | None = None, keep_shards: bool = False, echo=print, **kw) -> dict:
    """Run the batch over ``workers`` shards in parallel and merge them into ``db``.

    The driver prepares the run (plan, temperatures), the shards run with its plan, each writing its own
    ``<db>.shard-i-of-n.duckdb``, and whatever they committed is merged into ``db`` (see the module doc).

    Args:
        cohort: BraTS-layout folder.
        db: the output database (created with its folder when missing).
        checkpoints: model specs (:mod:`core.inference.modelset`).
        workers: shards (default :func:`default_workers`).
        executor: ``local`` (one interpreter per shard) or ``ray`` (Ray tasks).
        ray_address: the Ray cluster (:func:`ray_init`; None: a local instance).
        keep_shards: keep the shard databases after the merge.
        echo: where messages go.
        **kw: the other :func:`core.batch.pipeline.run_batch` arguments (``shard`` is ignored; ``quality`` is
            applied once, after the merge).

    Returns:
        the summary of the run: run_id, ok / failed / skipped summed over the shards, unavailable, seconds,
        db, shards, executor, and the merge's rows (per table) and conflicts.

    Raises:
        ValueError: for an unknown executor.
        RuntimeError: when Ray is asked for but not installed, or a local shard process fails.
        BaseException: whatever a shard raised, re-raised after its committed patients were merged (the shard
            files are then kept: the same command again finishes the run).
    """
    import time


    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: one of {', '.join(EXECUTORS)}")
    t0 = time.time()
    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    quality = kw.pop("quality", True)
    kw.pop("shard", None)
    base = dict(cohort=str(cohort), checkpoints=list(checkpoints), **kw)
    if executor == "ray":
        try:
            import ray
        except ImportError as e:
            raise RuntimeError("--executor ray needs Ray: pip install ray==2.60.0 (pinned in requirements.txt)") from e

        ray_init(ray_address)
        n = int(workers or default_workers("ray"))
        res = _ray_resources(n)
        prep = ray.get(ray.remote(_prepare_worker).options(num_gpus=res["num_gpus"], num_cpus=res["num_cpus"])
                       .remote({**base, "db": str(db), "echo": print}))
    else:
        n = int(workers or default_workers("local"))

        prep = run_batch(**base, db=db, prepare_only=True, echo=echo)
    run_id = prep["run_id"]
    shards = [shard_db_path(db, i, n) for i in range(n)]
    maps_dir = kw.get("maps_dir") or str(db.parent / "maps")
    jobs = [{**base, "db": str(shards[i]), "shard": (i, n), "plan": prep["plan"], "skip": set(prep["done"]),
             "quality": False, "progress": False, "maps_dir": maps_dir} for i in range(n)]
    echo(f"run {run_id}: {prep['patients']} patients in {n} shards ({executor})")
    results, error = [], None
    try:
        if executor == "ray":
            refs = [ray.remote(_shard_worker).options(**res).remote({**j, "threads": res["num_cpus"]}) for j in jobs]
            results = ray.get(refs)
        else:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() and not kw.get("device") else 0
            threads = max(1, (os.cpu_count() or 1) // n)
            for i, j in enumerate(jobs):
                j["threads"] = threads
                if gpus:
                    j["device"] = f"cuda:{i % gpus}"
            results = _run_local(jobs)
    except BaseException as e:  # merge what the shards committed, then re-raise
        error = e
    done = [s for s in shards if s.exists()]
    merged = merge_databases(db, done, quality=quality, echo=echo) if done else {"rows": {}, "conflicts": []}
    with store.writer(db) as con:
        clean_stale_maps(con, run_id, Path(maps_dir))
    if error is not None:
        echo(f"a shard failed ({type(error).__name__}: {error}); its committed patients were merged, the shard "
             f"files are kept: run the same command again to finish")
        raise error
    if not keep_shards:
        for s in done:
            s.unlink(missing_ok=True)
            s.with_name(s.name + ".wal").unlink(missing_ok=True)
    counts = {k: sum(r[k] for r in results) for k in ("ok", "failed", "skipped")}
    summary = {"run_id": run_id, **counts, "unavailable": prep["unavailable"], "seconds": round(time.time() - t0, 1),
               "db": str(db), "shards": n, "executor": executor, "rows": merged["rows"],
               "conflicts": merged["conflicts"]}
    echo(f"batch {run_id}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
         f"(model x method x patient) in {summary['seconds']} s over {n} shards ({executor}) -> {db}")
    return summary


if __name__ == "__main__":
    import sys

    sys.exit(_job_main(sys.argv[1]))
