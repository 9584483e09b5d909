"""A plain browser ``EventSource`` (no project code in the page) in Debian's Chromium,
against ``server.py`` processes on the MongoDB store (SecantusDB): docs/browser.md's
``eventsource.html`` as written follows a stream with the ticket URL it was opened
with across a ``kill -9`` and restart of Herald, gets every event exactly once and in
order, and stops after ``complete`` with at most one more request (answered ``204``);
from Herald's own origin and from another one. And the stream's first line, ``id:
<cursor>``, is what makes a reconnect before any event resume from the right place
(Chromium sends it back as ``Last-Event-ID``, and the ticket's rebinding needs it)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald, start_herald
from tests.test_browser import tokens
from tests.test_browser_cross_origin import PageServer, expected, listed_events, snippet

pytestmark = [pytest.mark.browser, pytest.mark.mongo]


class StreamRequests:
    """When the page asked for one execution's stream. (Chromium adds ``Last-Event-ID``
    below what Playwright reports, so its value shows in what the server answered: a
    resume from the wrong place would repeat or skip events, and a reconnect without it
    would not be accepted with the stream's ticket.)"""

    def __init__(self, page: Any, execution_id: str) -> None:
        self.seen: list[float] = []
        path = f"/api/executions/{execution_id}/events"
        page.on("request", lambda r: self.seen.append(time.monotonic()) if path in r.url else None)

    def since(self, moment: float) -> int:
        return sum(1 for at in self.seen if at >= moment)


def wait_listed(page: Any, count: int, timeout: float = 20_000) -> None:
    page.wait_for_function(f"document.querySelectorAll('#events li').length >= {count}", timeout=timeout)


def wait_state(page: Any, text: str, timeout: float = 20_000) -> None:
    """Until the snippet's state line starts with ``text``."""
    page.wait_for_function(f"document.getElementById('state').textContent.startsWith({text!r})", timeout=timeout)


def restart(herald: BrowserHerald, *args: str) -> BrowserHerald:
    """``kill -9``, a moment down (the EventSource's retries fail meanwhile), then the
    same port and database."""
    port = herald.process.port
    herald.process.kill()
    time.sleep(1.5)
    return start_herald(*args, port=port)


@pytest.mark.parametrize("where", ["same origin", "another origin"])
def test_eventsource_snippet_survives_kill_and_restart_and_stops_after_complete(page, mongo_target, where: str):
    app = PageServer()
    store = ("--mongo-uri", mongo_target.uri, "--mongo-database", mongo_target.database)
    args = (*store, "--allowed-origins", app.origin)
    herald = start_herald(*args)
    try:
        ex = herald.create()
        herald.publish(ex, tokens(5))  # seq 1 status, 2..6 tokens
        html = snippet("eventsource.html", herald.url, ex, herald.mint())
        if where == "same origin":  # the page at Herald's own origin (Playwright answers it)
            url = herald.url + "/app/eventsource.html"
            page.route(url, lambda route: route.fulfill(status=200, content_type="text/html", body=html))
        else:
            url = app.serve("/eventsource.html", html)
        requests = StreamRequests(page, ex)
        page.goto(url)
        wait_listed(page, 6)
        assert page.evaluate("location.origin") == (herald.url if where == "same origin" else app.origin)
        assert requests.since(0) == 1

        herald = restart(herald, *args)
        herald.publish(ex, tokens(4))
        wait_listed(page, 10)  # the EventSource reconnected by itself, with its ticket URL
        [last] = herald.publish(ex, [{"event": "complete", "data": {"result": "ok"}}])
        wait_state(page, "ended: complete")
        ended = time.monotonic()
        assert listed_events(page) == expected(last), "every event once, in order"

        # The stream ended: the EventSource reconnects once with Last-Event-ID at the end,
        # is answered 204, and stops for good.
        wait_state(page, "ended: complete, closed", timeout=10_000)
        time.sleep(3)  # three times its retry interval: it would have tried again by now
        assert requests.since(ended) <= 1
        with open(herald.process.log_path) as log:
            assert f"204 GET /api/executions/{ex}/events" in log.read(), "the reconnect after the end was a 204"
        assert page.evaluate("document.getElementById('state').textContent") == "ended: complete, closed"
        assert listed_events(page) == expected(last)
    finally:
        herald.process.stop()
        app.close()


def test_first_id_line_resumes_a_reconnect_before_any_event(page, mongo_target):
    """A page opens its EventSource at the end of what exists (``after=6``), and the
    server is killed before a new event arrives: the reconnect still sends
    ``Last-Event-ID: 6`` (from the stream's first line), so its ticket is accepted as
    the same stream's reconnect and it resumes at seq 7."""
    store = ("--mongo-uri", mongo_target.uri, "--mongo-database", mongo_target.database)
    herald = start_herald(*store)
    try:
        ex = herald.create()
        herald.publish(ex, tokens(5))  # up to seq 6
        ticket = herald.api("POST", "/api/tickets")["ticket"]
        requests = StreamRequests(page, ex)
        page.goto(herald.url + "/healthz")
        page.evaluate(
            """([url]) => {
              window.got = []; window.firstId = null;
              const source = new EventSource(url);
              source.addEventListener('control', (m) => { window.firstId ??= m.lastEventId; });
              source.onmessage = (m) => window.got.push(JSON.parse(m.data).seq);
            }""",
            [f"{herald.url}/api/executions/{ex}/events?events=message&after=6&ticket={ticket}"],
        )
        page.wait_for_function("window.firstId !== null", timeout=10_000)
        assert page.evaluate("window.firstId") == "6", "the ready message already carries the cursor"
        herald = restart(herald, *store)
        seqs = herald.publish(ex, [*tokens(2), {"event": "complete", "data": {}}])
        page.wait_for_function(f"window.got.length >= {len(seqs)}", timeout=20_000)
        assert page.evaluate("window.got") == seqs == [7, 8, 9]
        assert requests.since(0) >= 2  # it did reconnect (and its ticket was taken back)
    finally:
        herald.process.stop()
