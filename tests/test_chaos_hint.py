"""The drain's retry hint reaches the clients (issue 13): a ``server.py`` gets
``SIGTERM`` while Herald's own clients follow a stream on it, and each takes the hint
(WebSocket close reason ``server_shutdown retry=<ms>``, SSE ``retry:`` after
``ready``) as its wait before reconnecting instead of its backoff: the Python client
(client/follow.py) and the browser client (static/herald.js, in Debian's Chromium)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from client.api import HeraldClient
from client.follow import Follower
from core.auth import ALL_SCOPES, Authenticator
from tests.fixtures_browser import start_herald
from tests.services import HeraldProcess

pytestmark = pytest.mark.timeout(90)

FOLLOW = """async ({id, token}) => {
  const { Herald } = await import('/static/herald.js');
  window.states = [];
  window.handle = Herald.follow(id, { token, share: false, backoffFirst: 20000, backoffCap: 30000,
    onEvent: () => {}, onState: (s) => window.states.push(s) });
}"""


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_python_client_waits_the_hint_not_its_backoff(transport: str) -> None:
    server = HeraldProcess("--log-level", "warning")
    server.start()
    try:
        token = Authenticator(secret=server.secret).mint("alice", ALL_SCOPES, ttl=600)

        async def scenario() -> tuple[float | None, int]:
            client = HeraldClient(server.base_url, token)
            ex = (await client.create("chat"))["id"]
            await client.publish(ex, "token", {"text": "a"})
            follower = Follower(client, ex, transport=transport, first_delay=20.0)
            got: list[int] = []

            async def follow() -> None:
                async for event in follower.events():
                    got.append(event["seq"])

            task = asyncio.ensure_future(follow())
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            hint = None
            deadline = time.monotonic() + 5
            while hint is None and time.monotonic() < deadline:
                hint = follower._retry_hint  # noqa: SLF001 - what the follower took from the close
                await asyncio.sleep(0.005)
            task.cancel()
            client.close()
            return hint, len(got)

        hint, seen = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        server.kill()
    assert seen == 2
    assert hint is not None and 0 <= hint <= 1.0, f"the follower did not take the drain's hint: {hint!r}"


@pytest.mark.browser
@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_browser_client_waits_the_hint_not_its_backoff(page: Any, transport: str) -> None:
    herald = start_herald("--transports", transport)
    try:
        ex = herald.create()
        herald.publish(ex, [{"event": "token", "data": {"text": "a"}}])
        page.goto(herald.url + "/healthz")
        page.evaluate(FOLLOW, {"id": ex, "token": herald.mint()})
        page.wait_for_function("window.states.some(s => s.state === 'open')", timeout=10_000)
        assert herald.process.process is not None
        herald.process.process.send_signal(signal.SIGTERM)
        page.wait_for_function("window.states.some(s => /drained by the server/.test(s.reason))", timeout=10_000)
        drained = page.evaluate("window.states.find(s => /drained by the server/.test(s.reason))")
    finally:
        herald.process.stop()
    assert drained["state"] == "waiting" and drained["transport"] == transport, drained
    assert 0 <= drained["retryIn"] <= 1000, drained  # the hint, not a 20 s backoff
