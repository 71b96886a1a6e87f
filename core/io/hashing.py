"""Provenance: file and folder hashes, the code version, run ids."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from core.io.bundle import sidecar_of


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file; of a folder (a MONAI bundle): of its files' relative paths and contents, sorted.
    A plain state dict's sidecar (``X.json`` / ``X.toml``) is hashed with it."""
    h = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = [path] + ([sidecar_of(path)] if path.suffix == ".pt" and sidecar_of(path) else [])
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def make_run_id(config: dict) -> str:
    return "run_" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
