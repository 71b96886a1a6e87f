"""Browser test: Debian chromium driven by playwright loads every page of the served app on the tiny results
database, moves the entropy filter, saves screenshots (artifacts/screenshots) and fails on any exception shown."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "artifacts" / "screenshots"
PAGES = [("", "Tumour segmentation QA"), ("compare", "Compare models"), ("reliability", "Reliability"),
         ("strata", "Patient strata"), ("budget", "Review budget"),
         ("viewer", "Patient viewer"), ("quality", "Quality prediction"),
         ("review", "Review worklist"), ("glossary", "Glossary")]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed (scripts/test.sh installs it when run as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(data_dir: Path):
    """The app served by ``streamlit run app.py`` on a free port over the databases in ``data_dir``; yields its URL."""
    port = _free_port()
    env = {**os.environ, "TUMOURQA_DATA": str(data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except Exception:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + proc.stdout.read().decode()[-2000:])
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def chromium_page():
    """A playwright page of Debian chromium (1400 x 2400 viewport)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 2400})
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(results_db):
    with serve(results_db.parent) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    with chromium_page() as pg:
        yield pg


def _settle(pg, text=None, timeout=60):
    """Wait until ``text`` is shown (if given) and Streamlit has finished running the script."""
    pg.wait_for_selector("[data-testid='stApp']", timeout=timeout * 1000)
    if text:
        pg.get_by_text(text).first.wait_for(state="visible", timeout=timeout * 1000)
    deadline = time.time() + timeout
    time.sleep(0.5)
    while time.time() < deadline:
        if pg.locator("[data-testid='stStatusWidget']").count() == 0 and pg.locator(".stSpinner").count() == 0:
            break
        time.sleep(0.3)
    time.sleep(1.0)


def _no_exception(pg, where):
    exc = pg.locator("[data-testid='stException']")
    assert exc.count() == 0, f"{where}: exception shown: {exc.first.inner_text()[:1000]}"
    err = pg.locator("[data-testid='stAlertContentError']")
    assert err.count() == 0, f"{where}: error shown: {err.first.inner_text()[:500]}"


def test_every_page_loads_without_exception(server, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for path, title in PAGES[::-1]:  # a deep link first: each page must work as the first page of a session
        page.goto(f"{server}/{path}")
        _settle(page, title)
        _no_exception(page, title)
        assert page.locator("h1").filter(has_text=title).count() == 1
        page.screenshot(path=str(SHOTS / f"{path or 'home'}.png"), full_page=True)


def test_entropy_filter_moves_numbers(server, page):
    page.goto(f"{server}/compare?q=0-100")
    _settle(page, "4 of 4 patients")
    assert "4 of 4 patients" in page.content()
    slider = page.get_by_role("slider").first  # lower handle of the quantile range
    slider.focus()
    for _ in range(10):  # 10 steps of 5 % -> 50 %
        page.keyboard.press("ArrowRight")
    _settle(page, "2 of 4 patients")
    _no_exception(page, "compare after filter")
    assert "2 of 4 patients" in page.content()
    assert "q=50-100" in page.url
    page.screenshot(path=str(SHOTS / "compare_filtered.png"), full_page=True)


def test_link_reproduces_view(server, page):
    page.goto(f"{server}/compare?method=deterministic&mask=roi&q=0-50&view=Leaderboard")
    _settle(page, "Leaderboard: model x method x region")
    _no_exception(page, "compare from link")
    html = page.content()
    assert "deterministic" in html and "0-50" in html
    assert page.get_by_role("tab", name="Leaderboard").get_attribute("aria-selected") == "true"


COMPARE_TABS = [("Overview", "Error bars: 95 %"), ("Leaderboard", "Leaderboard: model x method x region"),
                ("Patients", "Per-patient scatter"), ("Paired test", "Paired comparison of two models"),
                ("Distributions", "Per-patient distributions")]


def test_compare_tabs_open_on_click_and_go_into_the_url(server, page):
    page.goto(f"{server}/compare?method=mc_dropout&q=0-100")
    _settle(page, "Error bars: 95 %")
    for name, text in COMPARE_TABS[::-1]:
        page.get_by_role("tab", name=name).click()
        _settle(page, text)
        _no_exception(page, f"compare tab {name}")
        assert "view=" + name.replace(" ", "+") in page.url or "view=" + name.replace(" ", "%20") in page.url
        page.screenshot(path=str(SHOTS / f"compare_{name.lower().replace(' ', '_')}.png"), full_page=True)


def test_scatter_selection_fills_table_and_row_opens_viewer(server, page):
    """Box-select on the per-patient scatter narrows the patient table; clicking a row opens that patient
    in the viewer (as a person does it: mouse drag on the chart, click on the table's row marker)."""
    page.goto(f"{server}/compare?method=mc_dropout&q=0-100&view=Patients")
    _settle(page, "Per-patient scatter")
    chart = page.locator("[data-testid='stPlotlyChart']").first
    chart.scroll_into_view_if_needed()
    box = chart.locator(".nsewdrag").first.bounding_box()
    x0, y0 = box["x"] + 2, box["y"] + 2  # a box over the whole plotting area selects every point
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=12)
    page.mouse.up()
    _settle(page, "selected point(s)")
    _no_exception(page, "compare after box selection")
    assert "8 selected point(s)" in page.content()  # 4 patients x 2 models, WT
    page.screenshot(path=str(SHOTS / "compare_selection.png"), full_page=True)
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.scroll_into_view_if_needed()
    gb = grid.bounding_box()
    page.mouse.click(gb["x"] + 18, gb["y"] + 35 + 17)  # the first row's selection marker
    _settle(page, "Patient viewer")
    _no_exception(page, "viewer opened from the compare table")
    assert page.locator("h1").filter(has_text="Patient viewer").count() == 1
    assert "patient=" in page.url and "model=" in page.url
    page.screenshot(path=str(SHOTS / "viewer_from_compare.png"), full_page=True)


def test_viewer_link_and_slice_slider(server, page):
    """A "viewer ↗" link (?patient=&model=) opens that patient and model; the slice slider moves with the keyboard
    and the image follows (the caption names no slice, so the slider's value is read back)."""
    page.goto(f"{server}/viewer?method=mc_dropout&q=0-100")
    _settle(page, "Patient viewer")
    sel = page.get_by_test_id("stSelectbox").filter(has_text="Patient (inside the entropy filter)")
    sel.click()
    options = page.get_by_role("option")
    last = options.nth(options.count() - 1).inner_text().strip()
    page.keyboard.press("Escape")
    assert page.get_by_text(f"Metrics of {last}").count() == 0  # not the patient the viewer opens on
    page.goto(f"{server}/viewer?method=mc_dropout&q=0-100&patient={last}&model=UNet-Res")
    _settle(page, f"Metrics of {last}")
    _no_exception(page, "viewer from a link")
    assert page.get_by_text("UNet-Res · mc_dropout").count() >= 1
    box = page.get_by_test_id("stSlider").filter(has_text="slice")  # "Axial slice"
    slider = box.get_by_role("slider")

    def value() -> int:
        return int(box.get_by_test_id("stSliderThumbValue").inner_text())

    before = value()
    slider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft" if before >= 5 else "ArrowRight")
    _settle(page)
    _no_exception(page, "viewer after moving the slice slider")
    assert abs(value() - before) == 5
    page.screenshot(path=str(SHOTS / "viewer_slice_moved.png"), full_page=True)


def test_viewer_chrome_has_no_deploy_button(server, page):
    """.streamlit/config.toml: toolbarMode = "viewer" (no Deploy button, no developer menu)."""
    page.goto(server)
    _settle(page, "Tumour segmentation QA")
    assert page.locator("[data-testid='stAppDeployButton']").count() == 0
    assert page.get_by_role("button", name="Deploy").count() == 0
