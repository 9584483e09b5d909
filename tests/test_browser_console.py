"""The console in Debian's Chromium: the overview's live figures and charts, the
executions list's filters, search, paging and cancel, the execution page's input, text
and outcome, every error and empty state in words, a 390 px wide screen, the favicon."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald, start_herald

pytestmark = pytest.mark.browser


def no_horizontal_overflow(page: Any) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_overview_shows_live_figures_queues_and_charts(page: Any, browser_herald: BrowserHerald) -> None:
    h = browser_herald
    token = h.mint(sub="olga")
    h.api("POST", "/api/executions", {"kind": "diagnosis", "queue": "overview-q"}, token)
    done = h.create(token=token)
    h.publish(done, [{"event": "token", "data": {"text": "hi"}}, {"event": "complete", "data": {"result": {}}}], token)
    page.goto(f"{h.url}/overview?every=500#token={token}")
    page.wait_for_selector("#stats-badge[data-state=open]")
    page.wait_for_selector("#queue-rows tr[data-queue=overview-q][data-state=stuck]")
    assert "no worker" in page.locator("#queue-rows tr[data-queue=overview-q]").inner_text()
    assert page.locator("#process-rows tr").count() >= 1
    assert "ms" in page.locator("#process-rows tr").first.inner_text(), "store round-trip shown"
    published = page.locator('[data-figure="published"] [data-col=sub]').inner_text()
    assert published.split()[0] not in ("0", "—"), published
    page.wait_for_selector("#chart-throughput svg path.line", timeout=10_000)
    assert page.locator(".chart-svg").count() == 4
    assert page.locator("#build").inner_text().startswith("Herald ")


def test_without_a_token_every_page_says_what_to_do(page: Any, browser_herald: BrowserHerald) -> None:
    h = browser_herald
    page.goto(f"{h.url}/healthz")
    page.evaluate("localStorage.clear()")
    for path in ("/", "/overview"):
        page.goto(h.url + path)
        page.wait_for_selector("#notice[data-kind=no-token]")
        assert "not signed in" in page.locator("#notice").inner_text()
        assert "loading" not in page.content().lower().split("<main>")[1]
    page.goto(f"{h.url}/executions/ex_missing")
    page.wait_for_selector("#page-state[data-kind=no-token]")


def test_unknown_and_forbidden_executions_are_explained(page: Any, browser_herald: BrowserHerald) -> None:
    h = browser_herald
    token = h.mint(sub="pat")
    page.goto(f"{h.url}/executions/ex_doesnotexist#token={token}")
    page.wait_for_selector("#page-state[data-kind=not-found]")
    text = page.locator("#page-state").inner_text()
    assert "does not exist" in text and "not_found" not in text
    assert page.locator("#page-body").is_hidden(), "no Pending skeleton"
    other = h.create(token=h.mint(sub="someone-else"))
    page.goto(f"{h.url}/executions/{other}")
    page.wait_for_selector("#page-state[data-kind=forbidden]")
    assert "not yours" in page.locator("#state-title").inner_text()


def test_a_failed_run_shows_its_error_type_and_how_far_it_got(page: Any, browser_herald: BrowserHerald) -> None:
    h = browser_herald
    token = h.mint(sub="quinn")
    ex = h.create(kind="chat", token=token)
    h.publish(ex, [{"event": "progress", "data": {"progress": 30, "stage": "thinking"}}], token)
    h.publish(ex, [{"event": "error", "data": {"error_type": "timeout", "message": "no event in 120 s"}}], token)
    page.goto(f"{h.url}/executions/{ex}#token={token}")
    page.wait_for_selector("#outcome.bad")
    outcome = page.locator("#outcome").inner_text()
    assert "timeout" in outcome and "no event in 120 s" in outcome
    assert page.locator("#phases li.ended").inner_text() == "Failed"
    assert page.locator("#phases li[data-phase=streaming]").get_attribute("class") == "skipped"
    assert "No text was written before it failed" in page.locator("#stream-empty").inner_text()
    assert page.locator("#cancel").is_hidden()


def test_input_text_and_complete_row_in_words(page: Any, browser_herald: BrowserHerald) -> None:
    h = browser_herald
    token = h.mint(sub="rae")
    ex = h.api("POST", "/api/executions", {"kind": "chat", "input": {"prompt": "Why is it slow?", "tokens": 3}}, token)
    answer = "Because of a synchronous call."
    h.publish(ex["id"], [{"event": "token", "data": {"text": answer}}], token)
    h.publish(ex["id"], [{"event": "complete", "data": {"result": {"answer": answer, "tokens": 1}}}], token)
    page.goto(f"{h.url}/executions/{ex['id']}#token={token}")
    page.wait_for_selector("#outcome.ok")
    assert page.locator("#prompt").inner_text() == "Why is it slow?"
    assert "tokens" in page.locator("#input-fields").inner_text()
    assert page.locator("#stream-text").inner_text() == answer
    complete = page.locator("#log tr[data-event=complete] td").nth(3).inner_text()
    assert complete == answer, "the answer as text, not JSON"
    page.click("#log-card > summary")
    assert page.locator("#log").is_hidden(), "the event log folds away"


def test_filters_search_paging_and_cancel(page: Any) -> None:
    h = start_herald()
    try:
        token = h.mint(sub="sam")
        ids = [h.create(kind="batch" if i % 2 else "chat", token=token) for i in range(5)]
        page.goto(f"{h.url}/?pageSize=2#token={token}")
        page.wait_for_selector("#feed-badge[data-state=open]")
        page.wait_for_function("document.querySelectorAll('#executions tr').length === 2")
        page.click("#older")
        page.wait_for_selector("#page-label:has-text('page 2')")
        assert page.locator("#newer").is_enabled()
        page.click("#newer")
        page.wait_for_selector("#page-label:has-text('page 1')")
        page.fill("#f-kind", "batch")
        page.press("#f-kind", "Enter")
        # Page 1 unfiltered also has two rows: wait for the filtered ones, not a count.
        page.wait_for_function(
            "[...document.querySelectorAll('#executions [data-col=kind]')].map(c => c.textContent.trim()).join()"
            " === 'batch,batch'"
        )
        assert page.locator("#executions tr").count() == 2
        page.click("#f-clear")
        page.fill("#f-id", ids[0])
        page.press("#f-id", "Enter")
        page.wait_for_selector(f"#executions tr[data-id={ids[0]}]")
        assert page.locator("#executions tr").count() == 1
        page.locator(f"#executions tr[data-id={ids[0]}] [data-col=cancel]").click()
        page.wait_for_selector(f"#executions tr[data-id={ids[0]}] [data-col=status][data-status=cancelled]")
        page.fill("#f-id", "ex_nothere")
        page.press("#f-id", "Enter")
        page.wait_for_selector("#empty:not([hidden])")
        assert "No execution ex_nothere" in page.locator("#empty").inner_text()
    finally:
        h.process.stop()


def test_server_down_is_said_with_a_retry_countdown(page: Any) -> None:
    h = start_herald()
    token = h.mint(sub="tess")
    ex = h.create(token=token)
    h.publish(ex, [{"event": "progress", "data": {"progress": 20}}], token)
    page.goto(f"{h.url}/executions/{ex}#token={token}")
    page.wait_for_selector("#transport-badge[data-state=open]")
    h.process.kill()
    page.wait_for_selector("#notice[data-kind=unreachable]", timeout=15_000)
    text = page.locator("#notice").inner_text()
    assert "does not answer" in text and "Retrying in" in text
    assert page.locator("#status").get_attribute("data-stale") == "true"
    assert page.locator("#status").inner_text().endswith("?"), "only the last known status"


def test_phone_width_and_favicon(chromium: Any, browser_herald: BrowserHerald) -> None:
    h = browser_herald
    token = h.mint(sub="uma")
    ex = h.create(token=token)
    h.publish(ex, [{"event": "progress", "data": {"progress": 60, "stage": "a-rather-long-stage-name"}}], token)
    context = chromium.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    try:
        for path in ("/", "/overview", f"/executions/{ex}"):
            page.goto(f"{h.url}{path}#token={token}")
            page.wait_for_selector(".badge[data-state=open]")
            time.sleep(0.3)
            assert no_horizontal_overflow(page), path
        page.goto(f"{h.url}/#token={token}")
        page.wait_for_selector(f"#executions tr[data-id={ex}]")
        bar = page.locator(f"#executions tr[data-id={ex}] .bar").bounding_box()
        assert bar is not None and bar["width"] >= 80, "progress bars keep a width"
    finally:
        context.close()
    with urllib.request.urlopen(f"{h.url}/favicon.ico", timeout=5) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("image/")
        assert response.read(4) == b"\x00\x00\x01\x00", "an ICO file"
