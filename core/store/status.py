"""A running batch's progress file (``<db>.progress.json``)."""
from __future__ import annotations

import json
import os
from pathlib import Path


class RunStatus:
    """``<db>.progress.json`` while a batch runs: pid, run_id, patients done / total, counts, start and last
    update (UTC ISO). Written atomically after every patient, removed when the batch ends; the app reads it to
    say that a run is in progress (and how far) while it shows the last committed state."""

    def __init__(self, db: Path, run_id: str, total: int):
        self.path = Path(db).with_name(Path(db).name + ".progress.json")
        self.data = {"pid": os.getpid(), "run_id": run_id, "done": 0, "total": total, "counts": {},
                     "started": _now(), "updated": _now()}
        self._write()

    def update(self, done: int, counts: dict) -> None:
        """Record ``done`` patients and the ok / failed / skipped ``counts`` so far (rewrites the file)."""
        self.data.update(done=done, counts=dict(counts), updated=_now())
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)

    def clear(self) -> None:
        """Remove the progress file (the batch ended)."""
        self.path.unlink(missing_ok=True)


def read_run_status(db: str | Path) -> dict | None:
    """The status of a batch writing ``db`` right now, or None (no status file, or its process is gone).

    Args:
        db: the database file.

    Returns:
        the progress file's dict (pid, run_id, done, total, counts, started, updated), or None.
    """
    p = Path(db).with_name(Path(db).name + ".progress.json")
    try:
        data = json.loads(p.read_text())
        os.kill(int(data["pid"]), 0)  # raises when the process no longer exists (a killed batch)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
