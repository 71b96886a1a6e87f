"""Reading while a batch holds the DuckDB write lock: DatabaseBusy (never another error), and the app says
"a run is in progress" instead of failing; once the writer is gone the last committed state is read."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import store

ROOT = Path(__file__).resolve().parents[2]
# a writer that opens the database as the batch does (store.connect, write mode) and keeps it open
HOLDER = ("import sys, time; sys.path.insert(0, {root!r}); from core import store; "
          "con = store.connect({db!r}); con.execute('BEGIN TRANSACTION'); "
          "con.execute(\"DELETE FROM evaluations\"); print('locked', flush=True); sys.stdin.read()")


@pytest.fixture
def locked_db(results_db, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "results.duckdb"
    shutil.copy(results_db, db)
    monkeypatch.setenv("TUMOURQA_DATA", str(data))
    p = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT), db=str(db))], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    yield db, p
    if p.poll() is None:
        p.stdin.close()
        p.wait(timeout=30)


def test_read_only_connect_raises_database_busy(locked_db):
    db, _ = locked_db
    with pytest.raises(store.DatabaseBusy, match="locked by another process"):
        store.connect(db, read_only=True, retries=2, wait_s=0.05)


def test_app_says_run_in_progress_then_reads_committed_state(locked_db):
    db, holder = locked_db
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    texts = [w.value for w in at.warning] + [w.value for w in at.sidebar.warning]
    assert any("run is in progress" in t for t in texts), texts
    # the writer ends without committing (as a killed batch): readers see the last committed state
    holder.stdin.close()
    holder.wait(timeout=30)
    at = AppTest.from_file(str(ROOT / "app_pages/home.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    labels = {m.label: m.value for m in at.metric}
    assert labels["Patients evaluated"] == "4" and labels["Evaluations failed"] == "0"


def test_app_reads_committed_patients_while_a_batch_runs(tiny_cohort, tiny_checkpoints, tmp_path, monkeypatch):
    """A real batch (subprocess) opens the database only to commit a patient, so while it computes the next
    one the app reads the patients committed so far and says that a run is in progress."""
    import os
    import time

    data = tmp_path / "data"
    data.mkdir()
    db = data / "results.duckdb"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "core", "run", "--cohort", str(tiny_cohort), "--models", str(tiny_checkpoints[0]),
           "--db", str(db), "--methods", "deterministic", "mc_dropout", "--T", "3", "--no-maps"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    monkeypatch.setenv("TUMOURQA_DATA", str(data))
    seen = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            status = store.read_run_status(db)
            if status and 0 < status["done"] < status["total"]:
                try:
                    con = store.connect(db, read_only=True, retries=40, wait_s=0.05)
                except store.DatabaseBusy:
                    continue
                n = con.execute("SELECT count(DISTINCT patient_id) FROM evaluations").fetchone()[0]
                con.close()
                at = AppTest.from_file(str(ROOT / "app_pages/home.py"), default_timeout=120).run()
                if at.exception:
                    continue  # the batch took the lock between two of the page's queries: try again
                infos = [i.value for i in at.sidebar.info]
                seen = (n, status["total"], infos)
                break
            time.sleep(0.2)
    finally:
        p.wait(timeout=300)
    assert p.returncode == 0
    assert seen is not None, "never saw the batch between two patients"
    n, total, infos = seen
    assert 0 < n < total, "a partial, committed state was read mid-run"
    assert any("run is in progress" in i for i in infos), infos
    assert store.read_run_status(db) is None, "the status file is removed at the end"
