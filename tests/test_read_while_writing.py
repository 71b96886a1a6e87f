"""Reading while a batch holds the DuckDB write lock: DatabaseBusy (never another error), and the app says
"a run is in progress" instead of failing; once the writer is gone the last committed state is read."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import store

ROOT = Path(__file__).resolve().parent.parent
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
