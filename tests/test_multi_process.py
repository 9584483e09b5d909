"""Two Herald processes behind one MongoDB (SecantusDB) and one Redis: the deployment
for more than one core. Publishes through either process land in one gap-free stream,
and a subscriber on either process sees all of it, in order, exactly once."""

from __future__ import annotations

import asyncio

import pytest

from client import HeraldClient
from core.auth import Authenticator
from tests.services import HeraldProcess

pytestmark = pytest.mark.mongo


def test_two_processes_share_one_stream(mongo_target, redis_server) -> None:
    args = ("--mongo-uri", mongo_target.uri, "--mongo-database", mongo_target.database, "--redis-url", redis_server.url)
    a, b = HeraldProcess(*args), HeraldProcess(*args)
    a.start()
    b.start()
    try:
        token = Authenticator(secret=a.secret).mint("alice")
        asyncio.run(_scenario(HeraldClient(a.base_url, token), HeraldClient(b.base_url, token)))
    finally:
        a.stop()
        b.stop()


async def _scenario(on_a: HeraldClient, on_b: HeraldClient) -> None:
    ex = (await on_a.create("chat"))["id"]

    async def follow(client: HeraldClient, transport: str) -> list[int]:
        return [e["seq"] async for e in client.follow(ex, transport=transport, idle_timeout=20)]

    followers = [
        asyncio.ensure_future(follow(on_a, "sse")),
        asyncio.ensure_future(follow(on_b, "websocket")),
        asyncio.ensure_future(follow(on_b, "longpoll")),
    ]
    await asyncio.sleep(0.5)

    async def publish(client: HeraldClient, tag: str) -> list[int]:
        seqs = []
        for i in range(0, 40, 4):
            seqs += await client.publish_many(
                ex, [{"event": "token", "data": {"text": f"{tag}{i + j}"}} for j in range(4)]
            )
        return seqs

    from_a, from_b = await asyncio.gather(publish(on_a, "a"), publish(on_b, "b"))
    # One status event (pending → running) and 80 tokens: seqs 1..81, none given twice.
    assert sorted(from_a + from_b) == list(range(2, 82))
    await on_b.publish(ex, "complete", {"result": "done"})
    for got in await asyncio.wait_for(asyncio.gather(*followers), 30):
        assert got == list(range(1, 83))
    doc = await on_a.get(ex)
    assert doc["status"] == "succeeded" and doc["last_seq"] == 82
