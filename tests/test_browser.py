"""The browser client and pages in a real headless Chromium (Debian's), against a real
``server.py`` process: every event exactly once and in order on each forced transport,
the dashboard running a demo to completion, and token expiry handled by the callback."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald

pytestmark = pytest.mark.browser

# Starts Herald.follow in the page; the page collects events and states on `window`.
FOLLOW = """async ({id, token, options, freshTokens}) => {
  const { Herald } = await import('/static/herald.js');
  window.got = []; window.states = []; window.finished = null; window.refreshes = 0;
  const fresh = freshTokens || [];
  window.handle = Herald.follow(id, { token, ...options,
    onEvent: (e) => window.got.push([e.seq, e.event, e.data]),
    onState: (s) => {
      window.states.push(s);
      if (s.state === 'done' || s.state === 'failed') window.finished = s.state;
    },
    onTokenExpired: async () => { window.refreshes++; return fresh.shift(); },
  });
}"""


def follow(page: Any, origin: str, execution_id: str, token: str, fresh: list[str] | None = None, **options: Any):
    page.goto(origin + "/healthz")
    page.evaluate(FOLLOW, {"id": execution_id, "token": token, "options": options, "freshTokens": fresh or []})


def wait_for_events(page: Any, count: int, timeout: float = 10_000) -> None:
    page.wait_for_function(f"window.got.length >= {count}", timeout=timeout)


def wait_finished(page: Any, timeout: float = 15_000) -> str:
    page.wait_for_function("window.finished !== null", timeout=timeout)
    return page.evaluate("window.finished")


def tokens(n: int) -> list[dict[str, Any]]:
    return [{"event": "token", "data": {"text": f"t{i} "}} for i in range(n)]


def assert_exactly_once(page: Any, last_seq: int) -> list[Any]:
    got = page.evaluate("window.got")
    assert [g[0] for g in got] == list(range(1, last_seq + 1)), "every event once, in order"
    assert got[-1][1] == "complete"
    return got


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_every_event_in_order_on_each_forced_transport(page, browser_herald: BrowserHerald, transport: str):
    h = browser_herald
    token = h.mint()
    ex = h.create()
    h.publish(ex, tokens(5))  # seq 1 is the server's status: running; 2..6 tokens
    follow(page, h.url, ex, token, transports=[transport], connectTimeout=2000)
    wait_for_events(page, 6)
    for i in range(4):  # live events, some in batches
        h.publish(ex, tokens(i + 1))
    h.publish(ex, [{"event": "progress", "data": {"progress": 90, "stage": "writing"}}])
    seqs = h.publish(ex, [{"event": "complete", "data": {"result": {"ok": True}}}])
    assert wait_finished(page) == "done"
    got = assert_exactly_once(page, seqs[0])
    assert got[1][2] == {"text": "t0 "}
    states = page.evaluate("window.states")
    assert {s["transport"] for s in states if s["state"] == "open"} == {transport}
    assert "forced" in states[-1]["reason"]
    assert page.evaluate("window.handle.cursor") == seqs[0]


def test_resumes_from_a_cursor(page, browser_herald: BrowserHerald):
    h = browser_herald
    ex = h.create()
    h.publish(ex, tokens(4))
    follow(page, h.url, ex, h.mint(), after=3)
    seqs = h.publish(ex, [{"event": "complete", "data": {"result": None}}])
    assert wait_finished(page) == "done"
    assert [g[0] for g in page.evaluate("window.got")] == list(range(4, seqs[0] + 1))


def test_dashboard_runs_a_demo_to_completion(page, browser_herald: BrowserHerald):
    h = browser_herald
    token = h.mint(sub="dana")
    page.goto(f"{h.url}/?speed=20#token={token}")
    page.wait_for_selector("#feed-badge[data-state=open]")
    assert "#token" not in page.url, "the token leaves the address bar"
    page.click("#start-demo")
    row = page.locator("#executions tr").first
    row.locator("[data-col=status][data-status=running]").wait_for(timeout=5000)
    row.locator("[data-col=status][data-status=succeeded]").wait_for(timeout=10_000)
    assert row.locator("[data-col=percent]").inner_text() == "100%"
    assert page.locator("#feed-badge").get_attribute("data-transport") == "websocket"
    # The execution page shows the streamed answer, the outcome and the transport.
    execution_id = row.get_attribute("data-id")
    page.goto(f"{h.url}/executions/{execution_id}")
    page.wait_for_selector("#outcome.ok")
    assert "pricing" in page.locator("#stream-text").inner_text()
    assert page.locator("#phases li.current").inner_text().lower() == "done"
    assert page.locator("#transport-badge").inner_text().startswith("websocket")


@pytest.mark.parametrize("transport", ["sse", "longpoll"])
def test_dashboard_feed_lists_changes_live(page, browser_herald: BrowserHerald, transport: str):
    h = browser_herald
    token = h.mint(sub=f"feed-{transport}")
    page.goto(f"{h.url}/?transport={transport}#token={token}")
    page.wait_for_selector(f"#feed-badge[data-state=open][data-transport={transport}]")
    ex = h.create(token=token)
    page.wait_for_selector(f"tr[data-id={ex}] [data-status=pending]")
    h.publish(ex, [{"event": "progress", "data": {"progress": 40, "stage": "ai_fetching"}}], token)
    page.wait_for_selector(f"tr[data-id={ex}] [data-col=stage]:text('ai_fetching')")
    h.publish(ex, [{"event": "error", "data": {"error_type": "model_down", "message": "no model"}}], token)
    page.wait_for_selector(f"tr[data-id={ex}] [data-status=failed]")


def test_websocket_token_refreshed_in_band_before_exp(page, browser_herald: BrowserHerald):
    h = browser_herald
    ex = h.create()
    follow(page, h.url, ex, h.mint(ttl=3), fresh=[h.mint(ttl=60)], transports=["websocket"])
    wait_for_events(page, 0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # past the first token's exp
        h.publish(ex, tokens(1))
        time.sleep(0.25)
    seqs = h.publish(ex, [{"event": "complete", "data": {"result": 1}}])
    assert wait_finished(page) == "done"
    assert_exactly_once(page, seqs[0])
    assert page.evaluate("window.refreshes") == 1
    assert page.evaluate("window.handle.reconnects") == 0, "refreshed in band: the stream never dropped"


def test_sse_token_expiry_asks_the_callback_and_resumes(page, browser_herald: BrowserHerald):
    h = browser_herald
    ex = h.create()
    follow(page, h.url, ex, h.mint(ttl=2), fresh=[h.mint(ttl=60)], transports=["sse"])
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # the server ends the stream with token_expired
        h.publish(ex, tokens(1))
        time.sleep(0.2)
    seqs = h.publish(ex, [{"event": "complete", "data": {"result": 1}}])
    assert wait_finished(page) == "done"
    assert_exactly_once(page, seqs[0])
    assert page.evaluate("window.refreshes") == 1
    reasons = [s["reason"] for s in page.evaluate("window.states")]
    assert any("fresh token" in r and "token_expired" in r for r in reasons)


def test_websocket_that_connects_but_never_delivers_falls_back(page, browser_herald: BrowserHerald):
    """A middlebox that completes the upgrade and then swallows everything: the page's
    WebSocket opens (Playwright answers the handshake and forwards nothing), `ready`
    never comes, and the client moves on to SSE within the connect timeout."""
    h = browser_herald
    opened: list[str] = []
    page.route_web_socket("**/api/**", lambda ws: opened.append(ws.url))  # a stream, shared or not
    ex = h.create()
    h.publish(ex, tokens(2))
    follow(page, h.url, ex, h.mint(), connectTimeout=1000)
    wait_for_events(page, 3)
    seqs = h.publish(ex, [{"event": "complete", "data": {"result": None}}])
    assert wait_finished(page) == "done"
    assert_exactly_once(page, seqs[0])
    assert opened, "the WebSocket did connect"
    reason = next(s["reason"] for s in page.evaluate("window.states") if s["state"] == "open")
    assert reason.startswith("websocket failed (no ready within 1000 ms); fell back to sse")
