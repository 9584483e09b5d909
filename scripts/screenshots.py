"""Takes docs/screenshot-dashboard.png and docs/screenshot-execution.png: starts a
server.py and the example workers (as ``make run`` does), runs demo executions, and
photographs the pages in Debian's Chromium.

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.fixtures_browser import CHROMIUM, CHROMIUM_ARGS, start_herald  # noqa: E402
from tests.test_browser_workers import WorkerProcess  # noqa: E402


def main() -> None:
    herald = start_herald()
    workers = [
        WorkerProcess(herald, "diagnosis_worker.py", "demo", "gpu-box-1"),
        WorkerProcess(herald, "llm_worker.py", "llm", "llm-box-1"),
    ]
    token = herald.mint(sub="dana", ttl=3600)
    try:
        for worker in workers:
            worker.wait_connected()
        done = herald.api("POST", "/api/demo", {"speed": 20}, token)["id"]
        failed = herald.create(token=token, kind="diagnosis")
        herald.publish(failed, [{"event": "progress", "data": {"progress": 35, "stage": "ai_fetching"}}], token)
        timeout = {"error_type": "timeout", "message": "no event in 120 s"}
        herald.publish(failed, [{"event": "error", "data": timeout}], token)
        herald.api("POST", "/api/executions", {"kind": "diagnosis", "queue": "nightly"}, token)  # no worker: waits
        time.sleep(1.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(f"{herald.url}/?queuesEvery=500#token={token}")
            page.click("#start-demo")
            page.click("#start-llm")
            time.sleep(4)
            page.screenshot(path=os.path.join(ROOT, "docs", "screenshot-dashboard.png"))
            live = herald.api("POST", "/api/demo", {"speed": 1.2, "demo": "llm"}, token)["id"]
            page.set_viewport_size({"width": 1280, "height": 860})
            page.goto(f"{herald.url}/executions/{live}")
            time.sleep(7)
            page.screenshot(path=os.path.join(ROOT, "docs", "screenshot-execution.png"))
            browser.close()
        print("wrote docs/screenshot-dashboard.png and docs/screenshot-execution.png;", done)
    finally:
        for worker in workers:
            worker.stop()
        herald.process.stop()


if __name__ == "__main__":
    main()
