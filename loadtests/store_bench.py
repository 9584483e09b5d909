"""Publish throughput and publish-to-deliver latency, embedded store vs MongoStore.

Runs ``Core.publish`` in this process (no HTTP) so the figures are the store's and the
group commit's, and counts MongoStore's database round trips per published event: the
number that carries over to a real MongoDB. The MongoDB figures are measured on
SecantusDB (a MongoDB wire-protocol server, started here on a free 127.0.0.1 port), not
on MongoDB. Usage: ``.venv/bin/python loadtests/store_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.auth import Authenticator
from core.broker.local import LocalBroker
from core.codec import Encoded
from core.model import Execution, PublishItem
from core.service import Core
from core.settings import Settings
from core.store.base import Store
from core.store.memory import MemoryStore
from core.store.mongo import MongoStore

ITEM = PublishItem("token", {"text": "lorem ipsum "})


class TimingSink:
    """A subscriber that records when each seq arrived."""

    transport = "bench"

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}

    def send_events(self, batch: list[Encoded]) -> None:
        now = time.perf_counter()
        for e in batch:
            self.arrived[e.seq] = now

    def send_reset(self, execution: Execution) -> None:
        raise AssertionError("no retention in the benchmark")

    def end_stream(self) -> None:
        return None


def round_trips(store: Store) -> int:
    return getattr(store, "round_trips", 0)


async def throughput(
    core: Core, executions: list[str], publishers: int, batch: int, total: int, direct: bool = False
) -> tuple[float, float]:
    """events/s and round trips per event for ``publishers`` concurrent loops, each
    publishing ``batch`` events per call, spread over ``executions``. ``direct`` calls
    ``store.append`` itself: one append per call, no group commit."""
    per = max(1, total // (publishers * batch))
    items = [ITEM] * batch
    rt0 = round_trips(core.store)

    async def loop(i: int) -> None:
        execution_id = executions[i % len(executions)]
        for _ in range(per):
            if direct:
                await core.store.append(execution_id, items)
            else:
                await core.publish(execution_id, items)

    start = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(publishers)))
    elapsed = time.perf_counter() - start
    events = per * publishers * batch
    return events / elapsed, (round_trips(core.store) - rt0) / events


async def latency(core: Core, execution_id: str, count: int, interval: float) -> tuple[float, float]:
    """p50/p99 ms from the call to ``publish`` to the subscriber receiving the event,
    one event every ``interval`` seconds."""
    execution = await core.get_execution(execution_id)
    sink = TimingSink()
    sub = core.follow(execution_id, execution.last_seq, sink)
    await sub.start(execution)
    sent: dict[int, float] = {}

    async def one() -> None:
        t = time.perf_counter()
        [seq] = await core.publish(execution_id, [ITEM])
        sent[seq] = t

    tasks = []
    for _ in range(count):
        tasks.append(asyncio.ensure_future(one()))
        await asyncio.sleep(interval)
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.05)
    sub.close()
    ms = sorted((sink.arrived[s] - t) * 1000 for s, t in sent.items())
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


async def new_executions(core: Core, n: int) -> list[str]:
    return [(await core.create_execution("bench", "chat", {}, None)).id for _ in range(n)]


async def bench(store: Store, quick: bool) -> list[tuple[str, str, str]]:
    settings = Settings(coalesce_ms=0)
    core = Core(settings, store, LocalBroker(), Authenticator(secret=secrets.token_hex(16)))
    await core.start()
    scale = 0.25 if quick else 1.0
    n = int(2000 * scale)
    rows: list[tuple[str, str, str]] = []

    def row(name: str, result: tuple[float, float]) -> None:
        rate, rts = result
        rows.append((name, f"{rate:,.0f}", f"{rts:.3f}" if isinstance(store, MongoStore) else "-"))

    try:
        one = await new_executions(core, 1)
        row("1 execution, 1 publisher, 1 event per call", await throughput(core, one, 1, 1, n // 2))
        one = await new_executions(core, 1)
        row("1 execution, 1 publisher, 100 events per call", await throughput(core, one, 1, 100, n * 10))
        one = await new_executions(core, 1)
        row(
            "1 execution, 50 publishers, 1 event: one append per event",
            await throughput(core, one, 50, 1, n, direct=True),
        )
        one = await new_executions(core, 1)
        row("1 execution, 50 publishers, 1 event: group commit", await throughput(core, one, 50, 1, n))
        hundred = await new_executions(core, 100)
        row("100 executions, 100 publishers, 1 event per call", await throughput(core, hundred, 100, 1, n * 2))
        hundred = await new_executions(core, 100)
        row("100 executions, 100 publishers, 10 events per call", await throughput(core, hundred, 100, 10, n * 5))
        one = await new_executions(core, 1)
        p50, p99 = await latency(core, one[0], int(400 * scale), 0.005)
        rows.append(("publish-to-deliver latency, 200 events/s (p50 / p99 ms)", f"{p50:.2f} / {p99:.2f}", ""))
    finally:
        await core.stop()
    return rows


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    print(f"\n### {title}\n")
    print("| scenario | events/s | DB round trips per event |")
    print("|---|---:|---:|")
    for name, rate, rts in rows:
        print(f"| {name} | {rate} | {rts} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the events (smoke run)")
    parser.add_argument("--mongo-uri", help="use this server instead of starting SecantusDB")
    parser.add_argument("--write-concern", default="majority")
    args = parser.parse_args()

    print_table("Embedded store (MemoryStore)", asyncio.run(bench(MemoryStore(), args.quick)))

    server: Any = None
    uri = args.mongo_uri
    if uri is None:
        from tests.services import SecantusServer

        server = SecantusServer()
        server.start()
        uri = server.uri
    try:

        async def on_mongo() -> list[tuple[str, str, str]]:
            store = MongoStore(uri, "herald_bench_" + secrets.token_hex(4), args.write_concern)
            return await bench(store, args.quick)

        label = "MongoStore on SecantusDB 0.7.0b3 (in-memory, not MongoDB)" if server else f"MongoStore on {uri}"
        print_table(f"{label}, write concern {args.write_concern} + j", asyncio.run(on_mongo()))
    finally:
        if server is not None:
            server.kill()


Runner = Callable[[], Awaitable[Any]]

if __name__ == "__main__":
    main()
