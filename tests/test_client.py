"""The Python client's own guarantees, against a real server."""

from __future__ import annotations

import asyncio

from tornado.httpclient import AsyncHTTPClient

from client import HeraldClient
from tests.fixtures_server import Herald


def test_a_stopped_sse_follower_frees_its_connection(herald_run) -> None:
    async def scenario(herald: Herald) -> None:
        client = HeraldClient(herald.base_url, herald.mint())
        ex = (await client.create("chat"))["id"]
        await client.publish(ex, "token", {"text": "a"})
        stream = client.follow(ex, transport="sse")
        async for event in stream:
            if event["seq"] == 2:
                break
        await stream.aclose()
        assert len(herald.core.sessions) == 1
        # The server notices at its next write: the next heartbeat at the latest.
        for _ in range(60):
            if not herald.core.sessions:
                break
            await asyncio.sleep(0.1)
        assert not herald.core.sessions

    herald_run(scenario, heartbeat=1.0)


def test_one_client_follows_more_streams_than_tornados_default_limit(herald_run) -> None:
    async def scenario(herald: Herald) -> None:
        client = HeraldClient(herald.base_url, herald.mint())
        ex = (await client.create("chat"))["id"]

        async def follow(transport: str) -> list[int]:
            return [e["seq"] async for e in client.follow(ex, transport=transport)]

        followers = [asyncio.ensure_future(follow(t)) for t in ("sse", "longpoll") * 15]
        await asyncio.sleep(0.5)
        await client.publish(ex, "complete", {"result": 1})
        for got in await asyncio.gather(*followers):
            assert got == [1]

    # Tornado's own default (10 at a time), not the test fixtures' raised limit.
    saved = AsyncHTTPClient._save_configuration()  # noqa: SLF001 - Tornado's only way to restore it
    AsyncHTTPClient.configure(None)
    try:
        herald_run(scenario)
    finally:
        AsyncHTTPClient._restore_configuration(saved)  # noqa: SLF001 - see above
