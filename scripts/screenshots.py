"""Takes the console's screenshots in docs/: starts a server.py and the example workers
(as ``make run`` does), runs demo executions and a little load, and photographs every
page and state in Debian's Chromium.

    .venv/bin/python scripts/screenshots.py

docs/screenshot-dashboard.png      the executions list with queues, filters and live rows
docs/screenshot-execution.png      an LLM answer streaming, with its question
docs/screenshot-overview.png       live figures and charts after a minute of load
docs/screenshot-failed.png         a failed run: error_type, message, how far it got
docs/screenshot-not-found.png      an execution that does not exist
docs/screenshot-no-token.png       a page opened without a token
docs/screenshot-unreachable.png    the server went away: retry countdown, stale status
docs/screenshot-phone.png          the executions list at 390 px
docs/screenshot-phone-execution.png  an execution page at 390 px
"""

from __future__ import annotations

import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.fixtures_browser import CHROMIUM, CHROMIUM_ARGS, BrowserHerald, start_herald  # noqa: E402
from tests.test_browser_workers import WorkerProcess  # noqa: E402

DOCS = os.path.join(ROOT, "docs")


def shot(page, name: str) -> None:
    page.screenshot(path=os.path.join(DOCS, f"screenshot-{name}.png"))
    print("wrote", f"docs/screenshot-{name}.png")


def background_load(herald: BrowserHerald, token: str, seconds: float) -> None:
    """A steady trickle of executions and events, so the overview's charts have a shape."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        ex = herald.create(token=token)
        for n in range(8):
            herald.publish(ex, [{"event": "token", "data": {"text": f"t{n} "}}] * (1 + i % 4), token)
            time.sleep(0.1)
        herald.publish(ex, [{"event": "complete", "data": {"result": {"text": "ok"}}}], token)
        i += 1


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
        herald.api("POST", "/api/demo", {"speed": 20}, token)
        failed = herald.create(token=token, kind="chat")
        herald.publish(failed, [{"event": "progress", "data": {"progress": 35, "stage": "ai_fetching"}}], token)
        timeout = {"error_type": "timeout", "message": "no event for 120 seconds"}
        herald.publish(failed, [{"event": "error", "data": timeout}], token)
        herald.api("POST", "/api/executions", {"kind": "diagnosis", "queue": "nightly"}, token)  # no worker: waits
        load = threading.Thread(target=background_load, args=(herald, token, 70), daemon=True)
        load.start()
        time.sleep(1.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{herald.url}/?queuesEvery=500&pageSize=8#token={token}")
            page.click("#start-demo")
            page.fill("#prompt", "Why did the nightly backup job fail on db-3?")
            page.click("#start-llm")
            time.sleep(4)
            shot(page, "dashboard")
            live = herald.api(
                "POST",
                "/api/demo",
                {"speed": 1.2, "demo": "llm", "prompt": "Why is the payments queue growing?"},
                token,
            )["id"]
            page.goto(f"{herald.url}/executions/{live}")
            time.sleep(7)
            shot(page, "execution")
            page.goto(f"{herald.url}/executions/{failed}")
            page.wait_for_selector("#outcome.bad")
            shot(page, "failed")
            page.goto(f"{herald.url}/executions/ex_0000000000000000000000")
            page.wait_for_selector("#page-state:not([hidden])")
            shot(page, "not-found")
            page.goto(f"{herald.url}/overview")
            load.join()  # a minute of load behind the charts
            time.sleep(3)
            shot(page, "overview")

            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
            phone.goto(f"{herald.url}/?pageSize=5#token={token}")
            phone.wait_for_selector("#feed-badge[data-state=open]")
            time.sleep(1)
            phone.locator(".demo-bar").scroll_into_view_if_needed()
            phone.evaluate("window.scrollBy(0, document.querySelector('.demo-bar').getBoundingClientRect().top - 10)")
            shot(phone, "phone")
            phone.goto(f"{herald.url}/executions/{live}")
            phone.wait_for_selector("#transport-badge")
            time.sleep(1)
            shot(phone, "phone-execution")
            phone.close()

            anonymous = browser.new_page(viewport={"width": 1280, "height": 500})
            anonymous.goto(f"{herald.url}/")
            anonymous.wait_for_selector("#notice[data-kind=no-token]")
            shot(anonymous, "no-token")
            anonymous.close()

            running = herald.create(token=token)
            herald.publish(running, [{"event": "progress", "data": {"progress": 40, "stage": "ai_fetching"}}], token)
            page.goto(f"{herald.url}/executions/{running}")
            page.wait_for_selector("#transport-badge[data-state=open]")
            for worker in workers:
                worker.stop()
            herald.process.stop()
            page.wait_for_selector("#notice[data-kind=unreachable]", timeout=20_000)
            time.sleep(1)
            shot(page, "unreachable")
            browser.close()
    finally:
        for worker in workers:
            worker.stop()
        herald.process.stop()


if __name__ == "__main__":
    main()
