"""The study report (core/report.py, `python -m core report`) and the app's viewer-grade errors."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import report

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report_file(results_db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    res = subprocess.run([sys.executable, "-m", "core", "report", "--db", str(results_db), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


def test_report_has_every_section_and_no_external_resource(report_file):
    text = report_file.read_text()
    for s in report.SECTIONS:
        assert f"id='{s.lower().replace(' ', '-')}'" in text, s
    assert not re.search(r"<script[^>]+src=", text, re.I)
    assert not re.search(r"<link[^>]+href=['\"]?https?:", text, re.I)
    n_figs = 4 + ("Mean Dice per stratum" in text)  # comparison, 3 reliability diagrams (, strata)
    assert text.count('class="plotly-graph-div"') == n_figs
    assert text.count("<script type=\"text/javascript\">/**") <= 1  # plotly.js once
    assert "SegResNet" in text and "UNet-Res" in text and "code version" in text


def test_report_cli_errors(results_db, tmp_path):
    res = subprocess.run([sys.executable, "-m", "core", "report", "--db", str(results_db), "--run", "nope",
                          "--out", str(tmp_path / "r.html")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no run 'nope'" in res.stderr


@pytest.fixture
def app_env(results_db, monkeypatch, tmp_path):
    monkeypatch.setenv("TUMOURQA_DATA", str(results_db.parent))
    monkeypatch.setenv("TUMOURQA_LOG", str(tmp_path / "app.log"))
    monkeypatch.delenv("TUMOURQA_DEBUG", raising=False)
    from dashboard import views

    def boom(sel):
        raise RuntimeError("boom in the page")

    monkeypatch.setattr(views, "home_findings", boom)
    return tmp_path / "app.log"


def test_page_error_shows_message_and_logs_traceback(app_env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    msg = " ".join(e.value for e in at.error)
    assert "could not be shown (RuntimeError)" in msg and str(app_env) in msg
    assert "boom in the page" not in msg
    log = app_env.read_text()
    assert "Traceback" in log and "boom in the page" in log


def test_debug_flag_shows_the_exception(app_env, monkeypatch):
    monkeypatch.setenv("TUMOURQA_DEBUG", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert at.exception and "boom in the page" in at.exception[0].value
    assert "boom in the page" in app_env.read_text()
