"""Churn leaks nothing (issue 11, item 10): a bounded soak against ``python server.py``.

Subscribers reconnect over and over across the three transports (a fresh token, and
for SSE a ticket, per connection: what browsers refreshing tokens do), publishers
stream tokens into a fixed set of executions, with a short ``--retention``. Once every
client has gone and what the server keeps on purpose for a while has passed its
horizon (a redeemed ticket until its token's ``exp``, serving that stream's
reconnects; a verified token until it has not been presented for two minutes), the
server's RSS must be back within a few MiB of where it stood after a warm-up of the
same churn followed by the same wait (the warm-up fills the bounded caches and the
allocator's arenas once). Marked ``soak`` (minutes): ``make soak`` runs it, ``make
test`` does not. Figures: docs/performance.md ("Memory under churn").
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from core.auth import VERIFIED_IDLE
from tests.fixtures_hostile import Server, herald_process

pytestmark = pytest.mark.soak

#: Seconds of churn measured (``HERALD_SOAK_SECONDS`` overrides), after a warm-up long
#: enough to fill the bounded caches (each execution's tail, the encoded events).
SOAK_SECONDS = float(os.environ.get("HERALD_SOAK_SECONDS", "180"))
WARMUP_SECONDS = 60.0
SUBSCRIBERS = 90
PUBLISHERS = 6
EXECUTIONS = 10
SUBJECTS = 10
#: Each connection's token lives this long (a browser refreshing every minute or so).
TOKEN_TTL = 60
#: Seconds after the clients have gone until nothing kept on purpose is left: the last
#: tickets die with their tokens (``TOKEN_TTL``) and are swept by the next prune; a
#: verified token not presented for two minutes is forgotten within the next minute.
HORIZON_SECONDS = float(os.environ.get("HERALD_SOAK_HORIZON", str(VERIFIED_IDLE * 1.5 + 10)))
#: RSS after the soak may exceed RSS after the warm-up by at most this many MiB.
RSS_SLACK_MB = 6.0


@dataclass
class Tally:
    connections: int = 0
    events: int = 0
    published: int = 0
    refused: dict[str, int] = field(default_factory=dict)


async def subscriber(server: Server, executions: list[str], deadline: float, tally: Tally, n: int) -> None:
    """Reconnects until ``deadline``: WebSocket, SSE (with a ticket), long-poll in turn."""
    rng = random.Random(n)
    sub = f"soak-{n % SUBJECTS}"
    transports = ("websocket", "sse", "longpoll")
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        turn = n
        while time.monotonic() < deadline:
            turn += 1
            token = server.mint(sub, ["executions:read"], ttl=TOKEN_TTL, executions=executions)  # a share token
            execution = rng.choice(executions)
            path = f"/api/executions/{execution}/events"
            held = rng.uniform(0.3, 2.0)
            try:
                transport = transports[turn % 3]
                if transport == "websocket":
                    async with connect(
                        server.ws_url + path, additional_headers={"Authorization": f"Bearer {token}"}
                    ) as ws:
                        end = time.monotonic() + held
                        while (left := end - time.monotonic()) > 0:
                            try:
                                message = json.loads(await asyncio.wait_for(ws.recv(), left))
                            except TimeoutError:
                                break
                            tally.events += "seq" in message
                elif transport == "sse":
                    ticket = (await http.post("/api/tickets", headers={"Authorization": f"Bearer {token}"})).json()
                    async with http.stream(
                        "GET", path, params={"ticket": ticket["ticket"]}, headers={"Accept": "text/event-stream"}
                    ) as stream:
                        end = time.monotonic() + held
                        async for line in stream.aiter_lines():
                            tally.events += line.startswith("id: ")
                            if time.monotonic() > end:
                                break
                else:
                    answer = await http.get(
                        path, params={"after": 0, "wait": 1}, headers={"Authorization": f"Bearer {token}"}
                    )
                    if answer.status_code == 200:
                        tally.events += len(answer.json()["events"])
                    else:
                        tally.refused[str(answer.status_code)] = tally.refused.get(str(answer.status_code), 0) + 1
                tally.connections += 1
            except (httpx.HTTPError, OSError, TimeoutError, websockets.ConnectionClosed) as exc:
                name = type(exc).__name__
                tally.refused[name] = tally.refused.get(name, 0) + 1
            await asyncio.sleep(rng.uniform(0, 0.2))


async def publisher(server: Server, executions: list[str], deadline: float, tally: Tally, n: int) -> None:
    rng = random.Random(1000 + n)
    owner = server.mint("soak-owner", ttl=3600)
    async with httpx.AsyncClient(base_url=server.url, timeout=20, headers={"Authorization": f"Bearer {owner}"}) as h:
        while time.monotonic() < deadline:
            text = "tok " * rng.randint(1, 20)
            items = [{"event": "token", "data": {"text": text}} for _ in range(rng.randint(1, 5))]
            answer = await h.post(f"/api/executions/{rng.choice(executions)}/events", json=items)
            if answer.status_code == 202:
                tally.published += len(items)
            await asyncio.sleep(rng.uniform(0.01, 0.05))


async def churn(server: Server, executions: list[str], seconds: float) -> Tally:
    """``SUBSCRIBERS`` reconnecting subscribers and ``PUBLISHERS`` publishers for ``seconds``."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(subscriber(server, executions, deadline, tally, n) for n in range(SUBSCRIBERS)),
        *(publisher(server, executions, deadline, tally, n) for n in range(PUBLISHERS)),
    )
    return tally


def settled_rss(server: Server, seconds: float) -> float:
    """RSS once the server has let go of what the clients left behind: ``seconds``
    after they have gone (see ``HORIZON_SECONDS``)."""
    time.sleep(seconds)
    return server.rss_mb()


@pytest.mark.timeout(int(WARMUP_SECONDS + SOAK_SECONDS + 2 * HORIZON_SECONDS + 240))
def test_churn_returns_memory_once_the_clients_are_gone() -> None:
    with herald_process("--retention", "20", "--heartbeat", "5") as server:
        owner = server.mint("soak-owner", ttl=3600)
        executions = [server.create(owner)["id"] for _ in range(EXECUTIONS)]
        started = server.rss_mb()
        warm = asyncio.run(churn(server, executions, WARMUP_SECONDS))
        warm_peak = server.rss_mb()
        after_warmup = settled_rss(server, HORIZON_SECONDS)
        soak = asyncio.run(churn(server, executions, SOAK_SECONDS))
        soak_peak = server.rss_mb()
        after_soak = settled_rss(server, HORIZON_SECONDS)
        log = server.log()
    print(
        f"\nsoak: RSS {started:.1f} MiB at start; warm-up {WARMUP_SECONDS:.0f} s: {warm_peak:.1f} as it ended, "
        f"{after_warmup:.1f} {HORIZON_SECONDS:.0f} s later; churn {SOAK_SECONDS:.0f} s: {soak_peak:.1f} as it "
        f"ended, {after_soak:.1f} {HORIZON_SECONDS:.0f} s later; {soak.connections} connections, "
        f"{soak.published} events published, {soak.events} delivered, refused {soak.refused}"
    )
    assert warm.connections > 0 and soak.connections > SUBSCRIBERS * 10
    assert soak.published > 1000 and soak.events > soak.published
    assert after_soak - after_warmup < RSS_SLACK_MB, (started, after_warmup, after_soak)
    assert "Traceback" not in log
