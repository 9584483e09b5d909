"""Token streaming benchmark: a real ``python server.py`` and a real worker connection.

For each transport it measures
- **first token**: from ``POST /api/executions`` (queue ``chat``) until the first
  ``token`` event reaches a subscriber that was already following the execution —
  creation, dispatch to the worker, the worker's first frame, publish, fan-out;
- **tokens/s to 100 subscribers**: a worker streams ``--tokens`` tokens (one WebSocket
  frame each, as fast as it can) to one execution followed by 100 subscribers; the
  figure is tokens × subscribers delivered per second, first token to last.

    .venv/bin/python loadtests/token_bench.py [--tokens 5000] [--subscribers 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlencode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from client import HeraldClient
from core.auth import Authenticator
from tests.services import HeraldProcess

TRANSPORTS = ("websocket", "sse", "longpoll")


async def worker_socket(base_url: str, token: str, name: str):
    url = base_url.replace("http", "ws", 1) + "/api/workers/connect?" + urlencode({"queue": "chat", "name": name})
    conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"Bearer {token}"}))
    conn.protocol.stream.set_nodelay(True)  # as the SDK does: no Nagle delay per frame
    assert json.loads(await conn.read_message())["control"] == "ready"
    return conn


async def next_execute(conn) -> str:
    while True:
        message = await conn.read_message()
        assert message is not None, (conn.close_code, conn.close_reason)
        op = json.loads(message)
        if op.get("op") == "execute":
            return op["execution"]["id"]


async def first_token(client: HeraldClient, conn, transport: str) -> float:
    """Seconds from creation to the first token at a subscriber."""
    started = time.perf_counter()
    execution_id = (await client.create("chat", queue="chat"))["id"]
    got = asyncio.get_running_loop().create_future()

    async def follow() -> None:
        async for event in client.follow(execution_id, transport=transport, wait=10):
            if event["event"] == "token" and not got.done():
                got.set_result(time.perf_counter())

    follower = asyncio.ensure_future(follow())
    created = time.perf_counter()
    assert await next_execute(conn) == execution_id
    executed = time.perf_counter()
    conn.write_message(
        json.dumps({"op": "event", "execution_id": execution_id, "event": "token", "data": {"text": "Hi"}})
    )
    at = await asyncio.wait_for(got, 10)
    if os.environ.get("BENCH_DEBUG"):
        parts = (created - started, executed - created, at - executed)
        print("create {:.1f}, execute {:.1f}, token {:.1f} ms".format(*tuple(1000 * p for p in parts)))
    conn.write_message(json.dumps({"op": "event", "execution_id": execution_id, "event": "complete", "data": {}}))
    await asyncio.wait_for(follower, 10)
    return at - started


async def fan_out(client: HeraldClient, conn, transport: str, tokens: int, subscribers: int) -> tuple[float, int]:
    """Tokens × subscribers per second, and how many deliveries were counted."""
    execution_id = (await client.create("chat", queue="chat"))["id"]
    await next_execute(conn)
    conn.write_message(
        json.dumps(
            {"op": "event", "execution_id": execution_id, "event": "log", "data": {"level": "info", "message": "start"}}
        )
    )
    counts = [0] * subscribers
    firsts: list[float] = []
    lasts: list[float] = []

    async def follow(i: int) -> None:
        async for event in client.follow(execution_id, transport=transport, after=2, wait=10, limit=1000):
            if event["event"] == "token":
                if counts[i] == 0:
                    firsts.append(time.perf_counter())
                counts[i] += 1
        lasts.append(time.perf_counter())

    followers = [asyncio.ensure_future(follow(i)) for i in range(subscribers)]
    await asyncio.sleep(1.0)  # every subscriber connected and live
    for i in range(tokens):
        conn.write_message(
            json.dumps({"op": "event", "execution_id": execution_id, "event": "token", "data": {"text": f" w{i}"}})
        )
        if i % 200 == 199:
            await asyncio.sleep(0)
    conn.write_message(json.dumps({"op": "event", "execution_id": execution_id, "event": "complete", "data": {}}))
    await asyncio.wait_for(asyncio.gather(*followers), 120)
    delivered = sum(counts)
    assert delivered == tokens * subscribers, (delivered, tokens * subscribers)
    return delivered / (max(lasts) - min(firsts)), delivered


async def main(args: argparse.Namespace) -> None:
    server = HeraldProcess(
        "--log-level", "warning", "--max-connections", "100000", "--max-connections-per-subject", "0"
    )
    server.start()
    try:
        auth = Authenticator(secret=server.secret)
        client = HeraldClient(server.base_url, auth.mint("bench", ["executions:read", "executions:write"], ttl=3600))
        conn = await worker_socket(server.base_url, auth.mint("llm", ["workers"], ttl=3600), "bench-llm")
        print(f"| transport | first token (median of {args.rounds}) | tokens/s to {args.subscribers} subscribers |")
        print("|---|---|---|")
        for transport in TRANSPORTS:
            samples = sorted([await first_token(client, conn, transport) for _ in range(args.rounds)])
            median = samples[len(samples) // 2]
            rate, _ = await fan_out(client, conn, transport, args.tokens, args.subscribers)
            print(f"| {transport} | {median * 1000:.1f} ms | {rate:,.0f} |", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=9)
    asyncio.run(main(parser.parse_args()))
