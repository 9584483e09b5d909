"""The browser client behind hostile proxies (Debian's nginx, configs in tests/nginx/)
and across a server restart: it falls back to the transport that works, and loses and
duplicates nothing."""

from __future__ import annotations

import time

import pytest

from tests.fixtures_browser import BrowserHerald, start_herald
from tests.test_browser import assert_exactly_once, follow, tokens, wait_finished, wait_for_events

pytestmark = pytest.mark.browser


def run_through_proxy(page, herald: BrowserHerald, origin: str) -> list[dict]:
    ex = herald.create()
    herald.publish(ex, tokens(3))
    follow(page, origin, ex, herald.mint(), connectTimeout=1500)
    wait_for_events(page, 4, timeout=15_000)
    for _ in range(3):
        herald.publish(ex, tokens(2))
    seqs = herald.publish(ex, [{"event": "complete", "data": {"result": "ok"}}])
    assert wait_finished(page) == "done"
    assert_exactly_once(page, seqs[0])
    return page.evaluate("window.states")


def test_proxy_refusing_websocket_falls_back_to_sse(page, browser_herald: BrowserHerald, nginx_proxy):
    proxy = nginx_proxy("no-websocket.conf", browser_herald.process.port)
    states = run_through_proxy(page, browser_herald, proxy.url)
    opened = [s for s in states if s["state"] == "open"]
    assert {s["transport"] for s in opened} == {"sse"}
    assert "websocket failed" in opened[0]["reason"] and "fell back to sse" in opened[0]["reason"]


def test_buffering_proxy_falls_back_to_longpoll(page, browser_herald: BrowserHerald, nginx_proxy):
    proxy = nginx_proxy("buffering.conf", browser_herald.process.port)
    states = run_through_proxy(page, browser_herald, proxy.url)
    opened = [s for s in states if s["state"] == "open"]
    assert {s["transport"] for s in opened} == {"longpoll"}
    reason = opened[0]["reason"]
    assert "sse failed (no ready within 1500 ms)" in reason and "fell back to longpoll" in reason


def test_server_killed_and_restarted_mid_stream_loses_nothing(page, mongo_target):
    """A ``kill -9`` of a server on SecantusDB: the client retries with backoff, keeps
    its cursor, and the restarted process (same port, same database) serves the rest."""
    store = ("--mongo-uri", mongo_target.uri, "--mongo-database", mongo_target.database)
    herald = start_herald(*store)
    port = herald.process.port
    try:
        ex = herald.create()
        herald.publish(ex, tokens(5))
        follow(page, herald.url, ex, herald.mint(), backoffFirst=300, backoffCap=1200, connectTimeout=1500)
        wait_for_events(page, 6)
        herald.process.kill()
        page.wait_for_function("window.states.filter(s => s.state === 'waiting').length >= 2", timeout=15_000)
        waiting = [s for s in page.evaluate("window.states") if s["state"] == "waiting"]
        assert all(0 <= s["retryIn"] <= 1200 for s in waiting)
        assert [s["attempt"] for s in waiting[:2]] == [0, 1], "backoff grows while the server is down"
        assert all(s["cursor"] == 6 for s in waiting), "the cursor is kept"
        time.sleep(0.5)
        herald = start_herald(*store, port=port)
        herald.publish(ex, tokens(4))
        seqs = herald.publish(ex, [{"event": "complete", "data": {"result": "ok"}}])
        assert wait_finished(page) == "done"
        assert_exactly_once(page, seqs[0])
        assert page.evaluate("window.handle.transport") == "websocket"
    finally:
        herald.process.stop()
