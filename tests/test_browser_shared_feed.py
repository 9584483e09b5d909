"""The dashboard's feed, one connection per browser (issue 15), in Debian's Chromium
against a real ``server.py``: every dashboard tab of one browser context runs
``Herald.feed`` shared by default (one tab holds ``/api/executions/feed`` under the Web
Lock ``herald-feed <server>|<sub>|browser`` and relays every message to the others over
``BroadcastChannel``).

- Eight dashboard tabs on a server offering SSE only all show new executions and their
  status changes live — eight feeds of their own would exceed Chromium's six
  connections per host — while the server holds at most 2 connections for them.
- Four dashboard tabs beside four execution pages: at most 2 connections (the feed
  and ``/api/streams``).
- A feed that joins while the connection runs gets the holder's merged rows as its
  snapshot at once, with no new request to the server.
- Closing the holding tab (on SSE and on WebSocket) or freezing it: another takes the
  lock over within moments and every other tab goes on updating.
- Without Web Locks (an old browser, some webviews): a feed connection per tab.
- ``?share=false`` (``share: false``): each tab has a connection of its own.

Connections are counted on the server (``/metrics``' ``herald_connections``). Bounds
are loose: the machine is a loaded 2-core VM."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald

pytestmark = pytest.mark.browser

TABS = 8

# Herald.feed in a plain page; the page collects what it is given on `window`.
FEED = """async ({token}) => {
  const { Herald } = await import('/static/herald.js');
  window.snapshots = []; window.changes = [];
  window.feed = Herald.feed({ token,
    onSnapshot: (list) => window.snapshots.push(list),
    onChange: (summary) => window.changes.push(summary),
  });
}"""

# The origin's held feed lock: its holder's client id, or null.
FEED_HOLDER = """async () => {
  const held = (await navigator.locks.query()).held.filter((l) => l.name.startsWith('herald-feed '));
  return held.length === 1 ? held[0].clientId : held.length ? 'several' : null;
}"""


def connections(h: BrowserHerald) -> dict[str, float]:
    """Open connections by transport, as the server counts them."""
    with urllib.request.urlopen(h.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'^herald_connections\{transport="(\w+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return {transport: float(value) for transport, value in found}


def settled_connections(h: BrowserHerald, done: Callable[[float], bool], timeout: float = 5) -> float:
    """The server's open connections once ``done(count)`` holds (a closed tab's may take
    a moment to be noticed), or the last count after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        count = sum(connections(h).values())
        if done(count) or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def open_dashboards(context: Any, h: BrowserHerald, token: str, count: int, query: str = "") -> list[Any]:
    """``count`` dashboard tabs, each opened once the previous one's feed is open (so the
    first one holds the connection)."""
    pages = []
    for _ in range(count):
        page = context.new_page()
        page.goto(f"{h.url}/?queuesEvery=60000{query}#token={token}")
        page.wait_for_selector("#feed-badge[data-state=open]", timeout=15_000)
        pages.append(page)
    return pages


def status_shown(page: Any, execution_id: str, status: str, timeout: float = 10_000) -> None:
    page.wait_for_selector(f"tr[data-id={execution_id}] [data-col=status][data-status={status}]", timeout=timeout)


def run_one(h: BrowserHerald, pages: list[Any], token: str) -> str:
    """A new execution, then its progress and its end: every page shows each live."""
    execution_id = h.create(token=token)
    for page in pages:
        status_shown(page, execution_id, "pending")
    h.publish(execution_id, [{"event": "progress", "data": {"progress": 40, "stage": "ai_fetching"}}], token)
    for page in pages:
        page.wait_for_selector(f"tr[data-id={execution_id}] [data-col=stage]:text('ai_fetching')", timeout=10_000)
    h.publish(execution_id, [{"event": "complete", "data": {"result": None}}], token)
    for page in pages:
        status_shown(page, execution_id, "succeeded")
    return execution_id


def test_eight_dashboard_tabs_on_an_sse_only_network_share_one_feed(context, sse_only_herald: BrowserHerald):
    h = sse_only_herald
    token = h.mint(sub="eight-dashboards")
    settled_connections(h, lambda n: n == 0)
    pages = open_dashboards(context, h, token, TABS)
    for page in pages:
        assert page.locator("#feed-badge").get_attribute("data-transport") == "sse"
    run_one(h, pages, token)
    run_one(h, pages, token)
    open_now = connections(h)
    assert open_now.get("sse", 0) <= 2 and sum(open_now.values()) <= 2, open_now
    assert pages[-1].evaluate(FEED_HOLDER) not in (None, "several"), "one tab holds the feed"
    for page in pages:
        page.close()
    assert settled_connections(h, lambda n: n == 0) == 0, "no tab left: no connection held"


def test_dashboards_and_execution_pages_together_hold_two_connections(context, sse_only_herald: BrowserHerald):
    """Four dashboard tabs (the shared feed) beside four execution pages (the shared
    /api/streams): eight tabs over at most 2 connections, every one of them live."""
    h = sse_only_herald
    token = h.mint(sub="dashboards-and-executions")
    settled_connections(h, lambda n: n == 0)
    dashboards = open_dashboards(context, h, token, TABS // 2)  # the first one stores the token
    ids = [h.create(token=token) for _ in range(TABS // 2)]
    executions = []
    for execution_id in ids:
        page = context.new_page()
        page.goto(f"{h.url}/executions/{execution_id}")
        executions.append(page)
    for execution_id in ids:
        h.publish(execution_id, [{"event": "progress", "data": {"progress": 40, "stage": "ai_fetching"}}], token)
    for page in executions:
        page.wait_for_selector("#log tr[data-event=progress]", timeout=10_000)
    for page in dashboards:
        for execution_id in ids:
            page.wait_for_selector(f"tr[data-id={execution_id}] [data-col=stage]:text('ai_fetching')", timeout=10_000)
    open_now = connections(h)
    assert open_now.get("sse", 0) <= 2 and sum(open_now.values()) <= 2, open_now
    for execution_id in ids:
        h.publish(execution_id, [{"event": "complete", "data": {"result": None}}], token)
    for page in executions:
        page.wait_for_selector("#outcome.ok", timeout=10_000)
    for page in dashboards:
        for execution_id in ids:
            status_shown(page, execution_id, "succeeded")


def test_a_feed_that_joins_late_gets_the_holders_rows_at_once(context, sse_only_herald: BrowserHerald):
    h = sse_only_herald
    token = h.mint(sub="late-feed")
    settled_connections(h, lambda n: n == 0)
    first = context.new_page()
    first.goto(h.url + "/healthz")
    first.evaluate(FEED, {"token": token})
    first.wait_for_function("window.snapshots.length === 1", timeout=10_000)
    execution_id = h.create(token=token)
    h.publish(execution_id, [{"event": "progress", "data": {"progress": 40, "stage": "ai_fetching"}}], token)
    first.wait_for_function(
        "(id) => window.changes.some((s) => s.id === id && s.stage === 'ai_fetching')", arg=execution_id
    )
    late = context.new_page()
    late.goto(h.url + "/healthz")
    late.evaluate(FEED, {"token": token})
    late.wait_for_function("window.snapshots.length === 1", timeout=5000)
    [row] = [s for s in late.evaluate("window.snapshots[0]") if s["id"] == execution_id]
    assert (row["status"], row["progress"], row["stage"]) == ("running", 40, "ai_fetching"), "the latest state"
    assert first.evaluate("window.snapshots.length") == 1, "the holder's rows, not a new snapshot from the server"
    assert sum(connections(h).values()) == 1
    h.publish(execution_id, [{"event": "complete", "data": {"result": None}}], token)
    for page in (first, late):
        page.wait_for_function(
            "(id) => window.changes.some((s) => s.id === id && s.status === 'succeeded')", arg=execution_id
        )


@pytest.mark.parametrize(("transport", "leaving"), [("sse", "close"), ("websocket", "close"), ("sse", "freeze")])
def test_the_holding_tab_leaving_hands_the_feed_over(context, request, transport: str, leaving: str):
    h: BrowserHerald = request.getfixturevalue("sse_only_herald" if transport == "sse" else "browser_herald")
    token = h.mint(sub=f"feed-takeover-{transport}-{leaving}")
    pages = open_dashboards(context, h, token, 4)
    run_one(h, pages, token)
    holder = pages[1].evaluate(FEED_HOLDER)
    assert holder not in (None, "several")
    # The first tab took the lock: it holds the feed.
    if leaving == "close":
        pages[0].close()
    else:  # as Chromium freezes a background tab: `freeze` fires, then its timers stop
        context.new_cdp_session(pages[0]).send("Page.setWebLifecycleState", {"state": "frozen"})
    closed_at = time.monotonic()
    pages[1].wait_for_function(f"({FEED_HOLDER})().then((c) => c !== null && c !== {holder!r})", timeout=5000)
    assert time.monotonic() - closed_at < 3, "taken over within moments"
    run_one(h, pages[1:], token)
    assert settled_connections(h, lambda n: n <= 1) <= 1
    for page in pages[1:]:
        assert page.locator("#feed-badge").get_attribute("data-transport") == transport


def test_share_false_gives_each_tab_its_own_feed(context, sse_only_herald: BrowserHerald):
    h = sse_only_herald
    token = h.mint(sub="feeds-of-their-own")
    settled_connections(h, lambda n: n == 0)
    pages = open_dashboards(context, h, token, 3, query="&share=false")
    assert settled_connections(h, lambda n: n == 3) == 3
    assert pages[0].evaluate(FEED_HOLDER) is None, "no tab holds a shared feed"
    run_one(h, pages, token)


def test_without_web_locks_each_tab_has_its_own_feed(chromium, sse_only_herald: BrowserHerald):
    h = sse_only_herald
    token = h.mint(sub="no-web-locks")
    settled_connections(h, lambda n: n == 0)
    context = chromium.new_context()
    try:
        context.add_init_script("Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined })")
        pages = open_dashboards(context, h, token, 2)
        assert pages[0].evaluate("import('/static/herald.js').then((m) => m.canShare())") is False
        assert settled_connections(h, lambda n: n == 2) == 2
        run_one(h, pages, token)
    finally:
        context.close()
