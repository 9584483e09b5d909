"""One connection per browser (issue 15), in Debian's Chromium against a real
``server.py``: eight pages of one browser context each follow a different execution
with the default ``Herald.follow`` (shared: one tab holds the connection to
``/api/streams`` under a Web Lock, the others talk to it over ``BroadcastChannel``).

- With ``--transports sse`` every page gets all its events in order — eight SSE streams
  of their own would exceed Chromium's six connections per host, and pages 7 and 8
  would starve — and the server holds at most 2 connections from the browser.
- Closing the tab that holds the connection: another takes over within about a second
  and every page goes on with no loss and no duplicate; the same over WebSocket.
- A follow that is closed stops receiving its execution only.

Connections are counted on the server (``/metrics``' ``herald_connections``). Bounds
are loose: the machine is a loaded 2-core VM."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald
from tests.test_browser import tokens

pytestmark = pytest.mark.browser

PAGES = 8

# Follows each id given on the page; the page collects events per execution.
FOLLOW = """async ({ids, token, options}) => {
  const { Herald } = await import('/static/herald.js');
  window.got = window.got || {}; window.states = window.states || []; window.handles = window.handles || {};
  for (const id of ids) {
    window.got[id] = [];
    window.handles[id] = Herald.follow(id, { token, ...options,
      onEvent: (e) => window.got[id].push(e.seq),
      onState: (s) => window.states.push([id, s.state, s.transport]),
    });
  }
}"""


def open_pages(context: Any, h: BrowserHerald, ids: list[str], token: str, **options: Any) -> list[Any]:
    pages = []
    for execution_id in ids:
        page = context.new_page()
        page.goto(h.url + "/healthz")
        page.evaluate(FOLLOW, {"ids": [execution_id], "token": token, "options": options})
        pages.append(page)
    return pages


def connections(h: BrowserHerald) -> dict[str, float]:
    """Open connections by transport, as the server counts them."""
    with urllib.request.urlopen(h.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'^herald_connections\{transport="(\w+)"\} ([0-9.e+]+)$', text, re.MULTILINE)
    return {transport: float(value) for transport, value in found}


def wait_for_seqs(page: Any, execution_id: str, last: int, timeout: float = 10_000) -> list[int]:
    page.wait_for_function(
        "([id, last]) => window.got[id].length && window.got[id][window.got[id].length - 1] >= last",
        arg=[execution_id, last],
        timeout=timeout,
    )
    return page.evaluate("(id) => window.got[id]", execution_id)


def publish_round(h: BrowserHerald, ids: list[str], count: int, token: str) -> dict[str, int]:
    """``count`` token events to every execution; the last seq of each."""
    return {execution_id: h.publish(execution_id, tokens(count), token)[-1] for execution_id in ids}


def test_eight_tabs_on_an_sse_only_network_share_one_connection(context, sse_only_herald: BrowserHerald):
    h = sse_only_herald
    token = h.mint(sub="eight-tabs")
    ids = [h.create(token=token) for _ in range(PAGES)]
    for execution_id in ids:
        h.publish(execution_id, tokens(2), token)  # stored before the pages follow: a replay
    pages = open_pages(context, h, ids, token, connectTimeout=3000)
    for round_ in range(3):  # live events, some in batches
        last = publish_round(h, ids, round_ + 1, token)
    for page, execution_id in zip(pages, ids, strict=True):
        assert wait_for_seqs(page, execution_id, last[execution_id]) == list(range(1, last[execution_id] + 1))
    open_now = connections(h)
    assert open_now.get("sse", 0) <= 2 and sum(open_now.values()) <= 2, open_now
    states = pages[-1].evaluate("window.states")
    assert [s for s in states if s[1] == "open"][-1][2] == "sse"
    # Every page finishes with its terminal event, and the connection is given back.
    for execution_id in ids:
        h.publish(execution_id, [{"event": "complete", "data": {"result": None}}], token)
    for page, execution_id in zip(pages, ids, strict=True):
        page.wait_for_function("(id) => window.states.some(s => s[0] === id && s[1] === 'done')", arg=execution_id)
    deadline = time.monotonic() + 5
    while sum(connections(h).values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(connections(h).values()) == 0, "no execution is followed: no connection is held"


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_closing_the_holding_tab_hands_the_connection_over(context, browser_herald: BrowserHerald, transport: str):
    h = browser_herald
    token = h.mint(sub=f"takeover-{transport}")
    ids = [h.create(token=token) for _ in range(4)]
    pages = open_pages(context, h, ids, token, transports=[transport], connectTimeout=3000)
    last = publish_round(h, ids, 2, token)
    for page, execution_id in zip(pages, ids, strict=True):
        wait_for_seqs(page, execution_id, last[execution_id])
    assert pages[0].evaluate("navigator.locks.query().then(q => q.held.length)") == 1
    pages[0].close()  # the first page took the lock: it holds the connection
    closed_at = time.monotonic()
    last = publish_round(h, ids, 3, token)
    for page, execution_id in zip(pages[1:], ids[1:], strict=True):
        got = wait_for_seqs(page, execution_id, last[execution_id], timeout=5000)
        assert got == list(range(1, last[execution_id] + 1)), "no loss, no duplicate"
    assert time.monotonic() - closed_at < 5, "taken over and delivered within moments"
    assert sum(connections(h).values()) <= 2
    states = [s for s in pages[1].evaluate("window.states") if s[1] == "open"]
    assert {s[2] for s in states} == {transport}


def test_a_closed_follow_stops_its_execution_only(context, browser_herald: BrowserHerald):
    h = browser_herald
    token = h.mint(sub="unsubscribe")
    a, b = h.create(token=token), h.create(token=token)
    first = context.new_page()
    first.goto(h.url + "/healthz")
    first.evaluate(FOLLOW, {"ids": [a, b], "token": token, "options": {}})
    [second] = open_pages(context, h, [a], token)
    seqs = publish_round(h, [a, b], 1, token)
    wait_for_seqs(first, b, seqs[b])
    wait_for_seqs(second, a, seqs[a])
    first.evaluate("(id) => window.handles[id].close()", a)
    seqs = publish_round(h, [a, b], 2, token)
    assert wait_for_seqs(first, b, seqs[b]) == list(range(1, seqs[b] + 1))
    assert wait_for_seqs(second, a, seqs[a]) == list(range(1, seqs[a] + 1))
    time.sleep(0.3)  # anything of a's still on its way to the first page would be here by now
    assert first.evaluate("(id) => window.got[id]", a) == list(range(1, 3))
    states = first.evaluate("window.states")
    assert [s[1] for s in states if s[0] == a][-1] == "closed"
    assert [s[1] for s in states if s[0] == b][-1] == "open"


def test_a_shared_stream_whose_executions_all_ended_is_not_reopened(context, sse_only_herald: BrowserHerald):
    """The server ends ``/api/streams`` once every execution it carried has ended. The
    holding tab must not reconnect it (it would name no execution: a ``400``), even when
    its retry comes before the debounced close — ``backoffFirst: 1`` makes it always
    come first (with the default 1 s full-jitter backoff, about one run in thirty)."""
    h = sse_only_herald
    token = h.mint(sub="all-ended")
    execution_id = h.create(token=token)
    [page] = open_pages(context, h, [execution_id], token, connectTimeout=3000, backoffFirst=1)
    last = publish_round(h, [execution_id], 2, token)
    wait_for_seqs(page, execution_id, last[execution_id])
    log = Path(h.process.log_path)
    log_from = log.stat().st_size
    h.publish(execution_id, [{"event": "complete", "data": {"result": None}}], token)
    page.wait_for_function("(id) => window.states.some(s => s[0] === id && s[1] === 'done')", arg=execution_id)
    time.sleep(0.5)  # a reconnect would have been made by now
    after = log.read_bytes()[log_from:].decode()
    # The stream that ended is logged as it ends; a reconnect would ask a new ticket first.
    assert "POST /api/tickets" not in after and " 400 " not in after, after
