"""The glossary shown in the app, read from the documentation's tables so that there is one source of truth.

:func:`glossary` returns (term, kind, where, definition) rows from the metric table of ``docs/metrics.md``
(section "Metrics") and the method table of ``docs/methods.md`` (section "Uncertainty methods").
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import streamlit as st

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _section(text: str, title_start: str) -> str:
    m = re.search(rf"^## {re.escape(title_start)}.*?$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return m.group(1) if m else ""


def _table_rows(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.append(cells)
    return rows[1:] if rows else []  # drop the header row


def glossary(docs: Path = DOCS) -> pd.DataFrame:
    """The glossary rows of the documentation's tables (metrics, then uncertainty methods).

    Rows come from the table of section "Metrics" of ``docs/metrics.md`` (rows with at least three cells) and
    the table of section "Uncertainty methods" of ``docs/methods.md`` (rows with at least two cells); the
    header row of each table is dropped and backticks are removed.

    Args:
        docs: the documentation folder (default: the project's ``docs/``).

    Returns:
        DataFrame(term, kind, where, definition): kind is 'metric' or 'method'; where is the metric's voxel
        set ('' for a method); definition joins the remaining cells with " | ". Empty (with those columns)
        when neither section has a table.

    Raises:
        FileNotFoundError: when ``docs`` lacks ``metrics.md`` or ``methods.md``.
    """
    out = []
    for cells in _table_rows(_section((docs / "metrics.md").read_text(), "Metrics")):
        if len(cells) >= 3:
            out.append({"term": cells[0].replace("`", ""), "kind": "metric", "where": cells[1].replace("`", ""),
                        "definition": " | ".join(cells[2:]).replace("`", "")})
    for cells in _table_rows(_section((docs / "methods.md").read_text(), "Uncertainty methods")):
        if len(cells) >= 2:
            out.append({"term": cells[0].replace("`", ""), "kind": "method", "where": "",
                        "definition": " | ".join(cells[1:]).replace("`", "")})
    return pd.DataFrame(out, columns=["term", "kind", "where", "definition"])


@st.cache_data(max_entries=4, show_spinner=False)
def _cached_glossary() -> pd.DataFrame:
    return glossary()


def search(query: str = "") -> pd.DataFrame:
    """Glossary rows whose term or definition contains ``query``.

    The source is parsed once per process (cached), not on every rerun.

    Args:
        query: plain text (not a regular expression), matched case-insensitively; empty: every row.

    Returns:
        the matching rows of :func:`glossary` (same columns and index).
    """
    g = _cached_glossary()
    if query:
        g = g[g.term.str.contains(query, case=False, regex=False)
              | g.definition.str.contains(query, case=False, regex=False)]
    return g
