"""Crash safety: a batch killed with SIGKILL and run again ends with the same database as an uninterrupted run,
no duplicate keys, no half-written patient and no orphan map file."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from core.io.maps import clean_stale_maps

ROOT = Path(__file__).resolve().parents[2]
# columns compared per table (timestamps and seconds left out; map paths made relative to the maps folder)
COMPARE = {
    "patients": "patient_id, source, shape, spacing, label_scheme, split, has_gt, meta",
    "evaluations": "run_id, model, method, patient_id, status, error",
    "metrics": "run_id, model, method, patient_id, region, mask, metric, value",
    "calibration_bins": "*",
    "uncertainty_bins": "*",
    "maps": "run_id, model, method, patient_id, kind, path",
}
KEYS = {"evaluations": "run_id, model, method, patient_id",
        "metrics": "run_id, model, method, patient_id, region, mask, metric",
        "calibration_bins": "run_id, model, method, patient_id, region, mask, bin",
        "uncertainty_bins": "run_id, model, method, patient_id, region, mask, measure, bin",
        "maps": "run_id, model, method, patient_id, kind"}


def _cmd(cohort, ckpt, db, maps):
    cmd = [sys.executable, "-m", "core", "run", "--cohort", str(cohort), "--models", str(ckpt), "--db", str(db),
           "--methods", "deterministic", "--T", "2", "--split", "test"]
    return cmd if maps else cmd + ["--no-maps"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _ok_lines(logs: Path) -> int:
    return sum(f.read_text().count(" INFO ok ") for f in logs.glob("*.log")) if logs.is_dir() else 0


def _part_files(maps_root: Path) -> bool:
    return maps_root.is_dir() and any(maps_root.rglob("*.part.nii.gz"))


def _run_and_kill(cmd, when, timeout=240) -> bool:
    """Start the batch; SIGKILL it as soon as ``when()`` is true. False if it finished first."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while p.poll() is None and time.time() - t0 < timeout:
            if when():
                p.send_signal(signal.SIGKILL)
                p.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _snapshot(db: Path, check_files: bool = True) -> dict:
    maps_root = str(db.parent / "maps")
    con = duckdb.connect(str(db), read_only=True)
    out = {}
    for t, cols in COMPARE.items():
        rows = con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall()
        if t == "maps":
            rows = [r[:-1] + (os.path.relpath(r[-1], maps_root),) for r in rows]
        out[t] = rows
    for t, key in KEYS.items():
        dup = con.execute(f"SELECT {key}, count(*) FROM {t} GROUP BY ALL HAVING count(*) > 1").fetchall()
        assert not dup, (t, dup[:3])
    # no half-written patient: every ok evaluation has its metrics and bins, every failed one none
    half = con.execute("""SELECT e.patient_id FROM evaluations e WHERE e.status = 'ok' AND NOT EXISTS
                          (SELECT 1 FROM metrics m WHERE m.run_id = e.run_id AND m.model = e.model
                           AND m.method = e.method AND m.patient_id = e.patient_id)""").fetchall()
    assert not half, half
    paths = {p for (p,) in con.execute("SELECT path FROM maps").fetchall()}
    con.close()
    on_disk = {str(p) for p in Path(maps_root).rglob("*") if p.is_file()} if Path(maps_root).is_dir() else set()
    out["orphans"] = sorted(on_disk - paths)
    if check_files:
        assert on_disk == paths, (sorted(on_disk - paths)[:5], sorted(paths - on_disk)[:5])  # no orphan, none missing
    return out


@pytest.mark.parametrize("maps", [True, False], ids=["maps", "no_maps"])
def test_killed_batch_resumes_to_same_database(tiny_cohort, tiny_checkpoints, tmp_path, maps):
    ckpt = tiny_checkpoints[1]  # UNet-Res: the faster of the two
    ref_db, db = tmp_path / "ref" / "results.duckdb", tmp_path / "crash" / "results.duckdb"
    ref_db.parent.mkdir()
    db.parent.mkdir()
    t = time.time()
    r = subprocess.run(_cmd(tiny_cohort, ckpt, ref_db, maps), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one_run = time.time() - t
    ref = _snapshot(ref_db)
    assert len({r[3] for r in ref["evaluations"]}) == 4
    logs, maps_root = db.parent / "logs", db.parent / "maps"
    # kill 1: as soon as the first patient's evaluation is logged (maps written, its transaction pending or done);
    # kill 2 (with maps): in the middle of writing a map file of the next patient;
    # kill 3: when the third patient's evaluation is logged (two or three patients committed)
    whens = [lambda: _ok_lines(logs) >= 1]
    if maps:
        whens.append(lambda: _part_files(maps_root))
    whens.append(lambda: _ok_lines(logs) >= 3)
    orphans = []
    for when in whens:
        assert _run_and_kill(_cmd(tiny_cohort, ckpt, db, maps), when), \
            f"the batch finished before it could be killed ({one_run:.1f} s per run)"
        if db.exists():  # what a reader sees after a kill: consistent rows (leftover map files are cleaned at start)
            partial = _snapshot(db, check_files=False)
            assert len(partial["evaluations"]) < len(ref["evaluations"])
            orphans += partial["orphans"]
            print("after kill:", len(partial["evaluations"]), "evaluations,",
                  sum(".part" in o for o in partial["orphans"]), "part files,", len(partial["orphans"]), "orphans")
    print(f"leftover map files after the kills (removed by the next run): {len(orphans)}: {orphans[:4]}")
    r = subprocess.run(_cmd(tiny_cohort, ckpt, db, maps), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = _snapshot(db)
    for t in COMPARE:
        assert got[t] == ref[t], t


def test_stale_part_files_and_uncommitted_maps_are_removed(tiny_cohort, tiny_checkpoints, tmp_path):
    """Deterministic version of a kill between writing maps and committing: leftovers are cleaned at start."""
    from core.batch.pipeline import run_batch

    db = tmp_path / "r.duckdb"
    kw = dict(methods=["deterministic"], split="calibration", progress=False, echo=lambda *_: None, quality=False)
    s = run_batch(tiny_cohort, db, [str(tiny_checkpoints[1])], **kw)
    folder = tmp_path / "maps" / s["run_id"] / "UNet-Res" / "deterministic"
    kept = sorted(folder.iterdir())
    assert kept and not any(".part" in p.name for p in kept)
    # leftovers of a killed run: an interrupted write, and maps of a test patient whose transaction never committed
    (folder / "BraTS2021_00005_prob.nii.gz.part.nii.gz").write_bytes(b"half")
    (folder / "BraTS2021_00005_prob.nii.gz").write_bytes(b"not committed")
    (folder / "notes.txt").write_text("not ours")
    s2 = run_batch(tiny_cohort, db, [str(tiny_checkpoints[1])], **kw)
    assert s2["skipped"] == 1
    assert sorted(folder.iterdir()) == sorted(kept + [folder / "notes.txt"])


def test_killed_before_commit_then_failing_patient_leaves_no_maps(corrupt_copy, tiny_checkpoints, tmp_path,
                                                                  monkeypatch):
    """A 'kill' between a patient's map writes and its commit (simulated in-process: the transaction raises
    SystemExit), then the patient fails on the rerun (its input was damaged meanwhile): the rerun must not
    keep the maps nobody refers to (a rerun that succeeds overwrites them anyway)."""
    from core import store
    from core.batch import pipeline as batch

    db = tmp_path / "r.duckdb"
    kw = dict(methods=["deterministic"], split="calibration", progress=False, echo=lambda *_: None, quality=False)
    real = store.write_patient

    def killed(*a, **k):
        raise SystemExit("killed")

    monkeypatch.setattr(store, "write_patient", killed)
    with pytest.raises(SystemExit):
        batch.run_batch(corrupt_copy, db, [str(tiny_checkpoints[1])], **kw)
    monkeypatch.setattr(store, "write_patient", real)
    maps_root = tmp_path / "maps"
    left = [p for p in maps_root.rglob("*") if p.is_file()]
    assert left  # the maps were written before the transaction that never happened
    pid = left[0].name.split("_")[0] + "_" + left[0].name.split("_")[1]
    (corrupt_copy / pid / f"{pid}_t1ce.nii.gz").write_bytes(b"damaged")
    s = batch.run_batch(corrupt_copy, db, [str(tiny_checkpoints[1])], **kw)
    assert s["failed"] == 1
    assert [p for p in maps_root.rglob("*") if p.is_file()] == []
