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
    events = [*_events(3), Event("ex_a", 4, "complete", {"result": [1, {"x": None}]}, 1.5, "k")]
    assert decode_events(encode_events(events, "p1")) == ("p1", events)


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


def test_a_broker_never_echoes_its_own_publishes(make_broker) -> None:
    """The publishing process delivers to its own subscribers itself; the broker only
    carries to the others (for the in-process broker there are none)."""

    async def run() -> None:
        broker = make_broker()
        await broker.start()
        await _until(lambda: broker.healthy)
        got: list[Event] = []
        broker.subscribe("ex_a", got.extend)
        await asyncio.sleep(0.1)  # Redis subscribes asynchronously
        await broker.publish("ex_a", _events(3))
        await asyncio.sleep(0.2)
        assert got == []
        await broker.ping()
        await broker.close()

    asyncio.run(run())


def test_other_processes_hear_each_channel_in_order(redis_server) -> None:
    """Two brokers on one Redis are two Herald processes: one publishes, the other hears
    the channels it subscribed to, in order, until it unsubscribes."""

    async def run() -> None:
        a, b = RedisBroker(redis_server.url), RedisBroker(redis_server.url)
        await a.start()
        await b.start()
        await _until(lambda: a.healthy and b.healthy)
        got: list[Event] = []
        other: list[Event] = []
        b.subscribe("ex_a", got.extend)
        b.subscribe("ex_b", other.extend)
        await asyncio.sleep(0.1)
        for i in range(0, 30, 3):
            await a.publish("ex_a", _events(3, i + 1))
        await _until(lambda: len(got) == 30)
        assert [e.seq for e in got] == list(range(1, 31))
        assert other == []
        b.unsubscribe("ex_a")
        await asyncio.sleep(0.1)
        await a.publish("ex_a", _events(1, 31))
        await asyncio.sleep(0.1)
        assert len(got) == 30
        await a.close()
        await b.close()

    asyncio.run(run())


def test_a_redis_outage_is_noticed_and_logged_once(redis_server, caplog) -> None:
    async def run() -> None:
        broker = RedisBroker(redis_server.url, reconnect_delay=0.05)
        await broker.start()
        await _until(lambda: broker.healthy)
        redis_server.stop()
        await _until(lambda: not broker.healthy, timeout=3)
        for _ in range(20):  # publishes while Redis is away are skipped quickly, silently
            await asyncio.wait_for(broker.publish("ex_a", _events(1)), 0.5)
        await asyncio.sleep(0.5)  # many reconnect attempts
        redis_server.start()
        await _until(lambda: broker.healthy, timeout=5)
        await broker.close()

    with caplog.at_level("WARNING", logger="herald.redis"):
        asyncio.run(run())
    lines = [r.getMessage() for r in caplog.records if r.name == "herald.redis"]
    assert len(lines) == 2, lines  # one when it went away, one when it came back
    assert "unreachable" in lines[0] and "reachable again" in lines[1]


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
