"""Browser test of the study report: the HTML file of `python -m core report` opened in Debian chromium with the
network blocked renders every figure and logs no console error (it is self-contained)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, ROOT, SHOTS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


def open_offline(html: Path, shot: Path | None = None) -> dict:
    """Open ``html`` in chromium with every non-file request aborted; count figures and collect console errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1200, "height": 1600}, offline=True)
        blocked = []
        ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                  else (blocked.append(r.request.url), r.abort()))
        pg = ctx.new_page()
        errors = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(html.resolve().as_uri())
        pg.wait_for_function("document.querySelectorAll('.plotly-graph-div').length > 0 && "
                             "[...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('.main-svg'))",
                             timeout=60_000)
        out = {"divs": pg.locator(".plotly-graph-div").count(),
               "rendered": pg.evaluate("[...document.querySelectorAll('.plotly-graph-div')]"
                                       ".filter(d => d.querySelector('.main-svg')).length"),
               "errors": errors, "blocked": blocked}
        if shot:
            pg.screenshot(path=str(shot), full_page=True)
        browser.close()
    return out


def test_report_renders_offline(results_db, tmp_path):
    out = tmp_path / "report.html"
    res = subprocess.run([sys.executable, "-m", "core", "report", "--db", str(results_db), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    n_figs = out.read_text().count('class="plotly-graph-div"')
    SHOTS.mkdir(parents=True, exist_ok=True)
    seen = open_offline(out, SHOTS / "report.png")
    assert seen["divs"] == n_figs >= 4 and seen["rendered"] == n_figs
    assert not seen["errors"], seen["errors"]
    assert not seen["blocked"], seen["blocked"]
