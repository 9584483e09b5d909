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


def test_changes_cross_processes_to_workers_and_dashboards(mongo_target, redis_server) -> None:
    """A worker on process B gets an execution created through A at once (not at the
    next sweep), a cancel through A reaches it at once, and a dashboard feed on B
    hears of both."""
    args = ("--mongo-uri", mongo_target.uri, "--mongo-database", mongo_target.database, "--redis-url", redis_server.url)
    a, b = HeraldProcess(*args), HeraldProcess(*args)
    a.start()
    b.start()
    try:
        auth = Authenticator(secret=a.secret)
        asyncio.run(_cross_process(a, b, auth.mint("alice"), auth.mint("gpu", ["workers"])))
    finally:
        a.stop()
        b.stop()


async def _cross_process(a: HeraldProcess, b: HeraldProcess, token: str, worker_token: str) -> None:
    from worker import Worker, serve

    started: asyncio.Queue[str] = asyncio.Queue()
    cancelled: asyncio.Queue[str] = asyncio.Queue()

    class Waits(Worker):
        async def run(self, execution, emit):
            await emit.progress(5, stage="waiting")
            started.put_nowait(execution["id"])
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.put_nowait(execution["id"])
                raise

    serving = asyncio.ensure_future(serve(Waits(), b.base_url, worker_token, queue="q", name="w1"))
    on_a, on_b = HeraldClient(a.base_url, token), HeraldClient(b.base_url, token)
    try:
        snapshot = await on_b.request("GET", "/api/executions/feed")
        await asyncio.sleep(0.5)  # the worker connects
        ex = (await on_a.create("diagnosis", queue="q"))["id"]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await asyncio.wait_for(started.get(), 5) == ex
        assert loop.time() - t0 < 0.9, "dispatched by the change channel, not the 1-second sweep"
        t1 = loop.time()
        await on_a.cancel(ex, "user")
        assert await asyncio.wait_for(cancelled.get(), 5) == ex
        assert loop.time() - t1 < 0.9
        changes = await on_b.request("GET", "/api/executions/feed", since=snapshot["version"], wait=5)
        seen = {(row["id"], row["status"]) for row in changes["executions"]}
        assert (ex, "pending") in seen or (ex, "running") in seen
        doc = await on_b.get(ex)
        assert doc["status"] == "cancelled"
    finally:
        serving.cancel()
