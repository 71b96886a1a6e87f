"""Browser test at scale: a 10,000-patient results database (the latency bench's synthetic run: 4 models x 4
methods, every metric name and mask of a real run) opens every page and every Compare tab in Debian chromium
without an exception, and moving the entropy filter there changes the page's patient count.

The database is built with 20 non-empty uncertainty bins per histogram (the bench's default is 100): the size of
the cohort, not of each histogram, is what the pages' tables, filters and figures scale with; this keeps the
build to a few minutes on 2 cores."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from test_browser import CHROMIUM, PAGES, ROOT, SHOTS, _no_exception, _settle, page, serve  # noqa: F401 (page: the
# module-scoped chromium page fixture, one per module)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
N_PATIENTS = 10_000
COMPARE_TABS = ["Overview", "Leaderboard", "Patients", "Paired test", "Paired methods", "Distributions"]


def _bench():
    spec = importlib.util.spec_from_file_location("app_latency", ROOT / "bench" / "app_latency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    from core import store
    from core.store import derived

    bench = _bench()
    db = tmp_path_factory.mktemp("scale10k") / "results.duckdb"
    info = bench.build(db, N_PATIENTS, 20)
    con = store.connect(db)
    derived.build(con, bench.RUN)
    con.close()
    assert info["evaluations"] == N_PATIENTS * len(bench.MODELS) * len(bench.METHODS)
    return db


@pytest.fixture(scope="module")
def big_server(big_db):
    with serve(big_db.parent) as url:
        yield url


def test_every_page_and_tab_opens_on_10000_patients(big_server, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for path, title in PAGES:
        page.goto(f"{big_server}/{path}?method=mc_dropout")
        _settle(page, title, timeout=120)
        _no_exception(page, f"{title} (10,000 patients)")
        assert page.locator("h1").filter(has_text=title).count() == 1
        page.screenshot(path=str(SHOTS / f"scale10k_{path or 'home'}.png"), full_page=True)
    for tab in COMPARE_TABS:
        page.goto(f"{big_server}/compare?method=mc_dropout&view={tab.replace(' ', '+')}")
        _settle(page, "Compare models", timeout=120)
        _no_exception(page, f"Compare / {tab} (10,000 patients)")
    # the sidebar counts all 10,000 patients, and a narrower entropy filter fewer of them
    page.goto(f"{big_server}/strata?method=mc_dropout")
    _settle(page, "Patient strata", timeout=120)
    assert page.get_by_text(f"{N_PATIENTS} of {N_PATIENTS} patients in the filter").count() == 1
    page.goto(f"{big_server}/strata?method=mc_dropout&q=25-75")
    _settle(page, "Patient strata", timeout=120)
    _no_exception(page, "Patient strata, 25-75 % (10,000 patients)")
    assert page.get_by_text(f"of {N_PATIENTS} patients in the filter").count() == 1
    assert page.get_by_text(f"{N_PATIENTS} of {N_PATIENTS} patients in the filter").count() == 0
    page.screenshot(path=str(SHOTS / "scale10k_strata_filtered.png"), full_page=True)
