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
    """(term, kind ('metric' | 'method'), where (voxel set), definition) rows of the documentation's tables."""
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
    """Glossary rows whose term or definition contains ``query`` (case-insensitive, plain text; all when empty).
    The source is parsed once per process (cached), not on every rerun."""
    g = _cached_glossary()
    if query:
        g = g[g.term.str.contains(query, case=False, regex=False)
              | g.definition.str.contains(query, case=False, regex=False)]
    return g
