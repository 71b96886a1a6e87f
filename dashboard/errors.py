"""Viewer-grade errors: a page that raises shows one clear message naming the log file, and the traceback goes
to that file (not to the browser). ``TUMOURQA_DEBUG=1`` (or ``streamlit run app.py -- --debug``) brings the
details back: Streamlit's full error display and the exception re-raised.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import streamlit as st

from dashboard.selection import data_dir

LOGGER = "tumourqa.app"


def debug_enabled(argv: list[str] | None = None) -> bool:
    """Whether error details are wanted: env ``TUMOURQA_DEBUG`` set to 1/true/yes, or ``--debug`` among the
    script's arguments (``streamlit run app.py -- --debug``)."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get("TUMOURQA_DEBUG", "").strip().lower() in ("1", "true", "yes") or "--debug" in argv


def log_path() -> Path:
    """The app's log file: env ``TUMOURQA_LOG``, else ``<data folder>/logs/app.log`` (the system temporary
    folder's ``tumourqa/app.log`` when the data folder is not writable)."""
    if os.environ.get("TUMOURQA_LOG"):
        return Path(os.environ["TUMOURQA_LOG"]).resolve()
    for folder in (data_dir() / "logs", Path(tempfile.gettempdir()) / "tumourqa"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder / "app.log"
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / "tumourqa-app.log"


def app_logger() -> tuple[logging.Logger, Path]:
    """The app's logger with one file handler on :func:`log_path` (added once per process and path)."""
    path = log_path()
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in log.handlers):
        for h in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
            log.removeHandler(h)
            h.close()
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
    return log, path


def configure(debug: bool | None = None) -> bool:
    """Set Streamlit's error display for this process: full details in debug mode, none otherwise (the
    default of ``.streamlit/config.toml``). Returns whether debug mode is on."""
    debug = debug_enabled() if debug is None else debug
    st.set_option("client.showErrorDetails", "full" if debug else "none")
    return debug


def page_failed(exc: BaseException, page: str, debug: bool) -> None:
    """Log ``exc`` with its traceback and tell the user where it went; re-raise it in debug mode."""
    log, path = app_logger()
    log.error("page %s failed: %s: %s", page, type(exc).__name__, exc, exc_info=exc)
    if debug:
        raise exc
    st.error(f"This page could not be shown ({type(exc).__name__}). The details were written to the log file "
             f"`{path}`. Set `TUMOURQA_DEBUG=1` (or run `streamlit run app.py -- --debug`) to see them here.",
             icon=":material/error:")
