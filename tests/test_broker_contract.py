"""One broker contract, run against the in-process broker and a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from core.broker.local import LocalBroker
from core.broker.redis import RedisBroker, decode_events, encode_events
from core.model import Event


def _events(n: int, start: int = 1) -> list[Event]:
    return [Event("ex_a", seq, "token", {"text": f"t{seq}"}, 1700000000.0 + seq) for seq in range(start, start + n)]


def test_redis_encoding_round_trips() -> None:
    events = _events(3) + [Event("ex_a", 4, "complete", {"result": [1, {"x": None}]}, 1.5, "k")]
    assert decode_events(encode_events(events)) == events


@pytest.fixture(params=["local", "redis"])
def make_broker(request):
    def make():
        if request.param == "local":
            return LocalBroker()
        server = request.getfixturevalue("redis_server")
        return RedisBroker(server.url)

    return make


async def _until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def test_publish_reaches_the_channel_listener_in_order(make_broker) -> None:
    async def run() -> None:
        broker = make_broker()
        await broker.start()
        got: list[Event] = []
        other: list[Event] = []
        broker.subscribe("ex_a", got.extend)
        broker.subscribe("ex_b", other.extend)
        await asyncio.sleep(0.1)  # Redis subscribes asynchronously
        for i in range(0, 30, 3):
            await broker.publish("ex_a", _events(3, i + 1))
        await _until(lambda: len(got) == 30)
        assert [e.seq for e in got] == list(range(1, 31))
        assert other == []
        broker.unsubscribe("ex_a")
        await asyncio.sleep(0.1)
        await broker.publish("ex_a", _events(1, 31))
        await asyncio.sleep(0.1)
        assert len(got) == 30
        await broker.ping()
        await broker.close()

    asyncio.run(run())


def test_two_redis_brokers_share_events(redis_server) -> None:
    """Two brokers on one Redis are two Herald processes: one publishes, the other hears."""

    async def run() -> None:
        a, b = RedisBroker(redis_server.url), RedisBroker(redis_server.url)
        await a.start()
        await b.start()
        got: list[Event] = []
        b.subscribe("ex_a", got.extend)
        await asyncio.sleep(0.1)
        await a.publish("ex_a", _events(5))
        await _until(lambda: len(got) == 5)
        await a.close()
        await b.close()

    asyncio.run(run())


def test_redis_restart_resubscribes_and_asks_for_resync(redis_server) -> None:
    async def run() -> None:
        broker = RedisBroker(redis_server.url, reconnect_delay=0.1)
        resyncs: list[int] = []
        broker.on_resync = lambda: resyncs.append(1)
        await broker.start()
        got: list[Event] = []
        broker.subscribe("ex_a", got.extend)
        await asyncio.sleep(0.1)
        redis_server.restart()
        await _until(lambda: bool(resyncs), timeout=5)
        publisher = RedisBroker(redis_server.url)
        await publisher.start()
        await asyncio.sleep(0.1)
        await publisher.publish("ex_a", _events(2))
        await _until(lambda: len(got) == 2)
        await publisher.close()
        await broker.close()

    asyncio.run(run())
