"""Regenerate the README's pictures from the running app: serve the dashboard on a results database, open the
Compare page and the patient viewer in Debian chromium (playwright), and save PNGs to docs/img/.

    python scripts/screenshots.py [--data data] [--out docs/img]

Needs the demo database (``python -m core demo``) or any folder with a results database, and /usr/bin/chromium.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(pg, text: str, timeout: float = 120) -> None:
    """Wait until ``text`` is visible and Streamlit has stopped running the script."""
    pg.get_by_text(text).first.wait_for(state="visible", timeout=timeout * 1000)
    deadline = time.time() + timeout
    time.sleep(1.0)
    while time.time() < deadline and (pg.locator("[data-testid='stStatusWidget']").count()
                                      or pg.locator(".stSpinner").count()):
        time.sleep(0.3)
    time.sleep(1.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data"), help="folder holding results.duckdb (default data/)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"), help="where the PNGs go (default docs/img/)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT,
                            env={**os.environ, "TUMOURQA_DATA": args.data}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1500, "height": 1100})
            pg.goto(url + "/compare?method=mc_dropout")
            settle(pg, "Compare models")
            pg.locator("[data-testid='stPlotlyChart']").first.wait_for(state="visible", timeout=120_000)
            time.sleep(2)
            pg.screenshot(path=str(out / "compare.png"))
            pg.goto(url + "/viewer?method=mc_dropout")
            settle(pg, "Patient viewer")
            pg.locator("[data-testid='stImage']").first.wait_for(state="visible", timeout=120_000)
            pg.get_by_text("Most error").first.click()
            settle(pg, "Patient viewer")
            pg.screenshot(path=str(out / "viewer.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"screenshots in {out}: compare.png, viewer.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
