"""Chaos benchmark: does every subscriber get every event once, in order, while
connections die, processes restart and get killed?

``python loadtests/chaos.py [chaos|rolling|kill] [options]`` prints one table.

Plain asyncio clients on bare sockets (no Locust, no client library): each subscriber
speaks WebSocket, SSE or long-poll to Herald itself, keeps its cursor and resumes with
it, as the anycable/nodejs-websocket-bench clients do. Publishers publish at a fixed
rate to several executions, each event with an idempotency key and retried until it is
acknowledged (``202``), then end each execution with ``complete``.

**chaos** (default): N subscribers split over the transports follow the executions;
each kills its own connection abruptly (no close frame: a FIN, or a TCP reset) every
``--kill-every`` seconds, stays offline ``--offline`` seconds, and resumes with its
cursor. ``--nodes N`` runs N ``server.py`` behind the project's nginx config on
SecantusDB and Redis; ``--store mongo`` puts a single process on SecantusDB.

**rolling**: 2 processes behind nginx round-robin; subscribers stay connected and
reconnect by themselves (with the server's retry hint) when their process drains;
``SIGTERM`` one process, start it again, then the other, publishing throughout.

**kill**: 3 processes behind nginx on SecantusDB and Redis; the subscribers connect
straight to the victim, a publisher publishes through the two others; ``kill -9`` the
victim; the subscribers resume through nginx.

What is measured, per transport:

- *delivered*: distinct events each subscriber got, over every event of its execution
  (the terminal one included), summed; *duplicates*: events at or below the cursor;
  *order*: events past ``cursor + 1`` (a skipped event).
- *replay*: from the moment a subscriber reconnects (after its offline time) until it
  holds every event acknowledged before that moment.
- *lost*: acknowledged events a subscriber never got; *stuck*: subscribers without the
  terminal event ``--settle`` seconds after it was acknowledged.
- *reconnect*: from the end of a connection the subscriber did not end itself (a drain,
  a dead process) until its next connection serves (``ready``, or a long-poll answer).
- *first event* (kill): from the ``kill -9`` until a victim's subscriber gets an event again.
- the servers' ``herald_resumes_total``: resumes served from memory, from the store.

Everything runs on 127.0.0.1 and is bounded by the run's duration and ``--settle``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import enum
import itertools
import json
import os
import random
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loadtests.launcher import SECRET, Deployment, HeraldServer

TRANSPORTS = ("websocket", "sse", "longpoll")
TERMINAL = {b"complete", b"error", b"cancelled"}
SEQ = re.compile(rb'"seq":(\d+),"event":"([a-z0-9_.-]+)"')
RETRY_HINT = re.compile(r"retry=(\d+)")
LONGPOLL_WAIT = 25
#: Server options for a benchmark: no per-subject or rate limits in the way.
SERVER_ARGS = ("--max-connections-per-subject", "0", "--publish-rate", "0", "--log-level", "warning")


def now() -> float:
    return time.monotonic()


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# --- the wire: HTTP/1.1 and WebSocket on asyncio streams --------------------------------


class Kill(enum.Enum):
    """How a subscriber ends its own connection: never politely."""

    FIN = "fin"  # the socket closed without a close frame or the end of a request
    RESET = "reset"  # a TCP reset (SO_LINGER 0)


def kill_socket(writer: asyncio.StreamWriter, how: Kill) -> None:
    sock = writer.get_extra_info("socket")
    if how is Kill.RESET and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def open_stream(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    return await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 5)


def request_head(method: str, url: str, path: str, headers: dict[str, str]) -> bytes:
    host = urlsplit(url).netloc
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n".encode()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", ""):
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return bytes(body)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


class Dechunk:
    """Incremental HTTP/1.1 chunked decoding: ``feed`` bytes, get the body's bytes;
    ``ended`` once the terminating chunk arrived."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.left = 0  # bytes of the current chunk still to come (+2 for its CRLF)
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while self.buffer and not self.ended:
            if self.left > 0:
                take = min(self.left, len(self.buffer))
                out += self.buffer[:take]
                del self.buffer[:take]
                self.left -= take
                if self.left == 0:
                    self.left = -2  # the CRLF after the chunk
                continue
            if self.left < 0:
                if len(self.buffer) < 2:
                    break
                del self.buffer[:2]
                self.left = 0
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
            del self.buffer[: line_end + 2]
            if size == 0:
                self.ended = True
            else:
                self.left = size
        return bytes(out)


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def ws_frames(buffer: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete server frames (unmasked, unfragmented) at the front of ``buffer``, and
    how many bytes they took."""
    frames = []
    pos, size = 0, len(buffer)
    while size - pos >= 2:
        opcode, n = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F
        at = pos + 2
        if n == 126:
            if size - at < 2:
                break
            n, at = int.from_bytes(buffer[at : at + 2], "big"), at + 2
        elif n == 127:
            if size - at < 8:
                break
            n, at = int.from_bytes(buffer[at : at + 8], "big"), at + 8
        if size - at < n:
            break
        frames.append((opcode, bytes(buffer[at : at + n])))
        pos = at + n
    return frames, pos


# --- the run's shared state -------------------------------------------------------------


@dataclass
class Stream:
    """One execution being published."""

    id: str
    acked: int = 0  # highest acknowledged seq
    acked_seqs: set[int] = field(default_factory=set)
    terminal: int | None = None  # seq of the terminal event once acknowledged
    terminal_at: float | None = None


@dataclass
class TransportStats:
    subscribers: int = 0
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    order: int = 0
    lost: int = 0
    stuck: int = 0
    kills: int = 0
    refused: int = 0
    replay: list[float] = field(default_factory=list)
    reconnect: list[float] = field(default_factory=list)
    first_event: list[float] = field(default_factory=list)


class Ending(enum.Enum):
    KILLED = "killed"  # the subscriber ended it
    SERVER = "server"  # the server or the network ended it
    DONE = "done"  # the terminal event arrived


class Run:
    """What every client of one run shares: the clock, the executions, the options."""

    def __init__(self, options: argparse.Namespace, url: str) -> None:
        self.options = options
        self.url = url
        self.rng = random.Random(options.seed)
        self.streams: list[Stream] = []
        self.stopping = False
        self.killed_at: float | None = None  # kill mode: when the victim died
        self.ack_latency: list[tuple[float, float]] = []  # (acknowledged at, seconds)
        self.publish_retries = 0

    def token(self, sub: str, execution: str | None = None) -> str:
        """The publisher's token, or a subscriber's: a share token for its execution."""
        claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 6 * 3600}
        if execution is None:
            claims["scope"] = "executions:read executions:write events:publish"
        else:
            claims["executions"] = [execution]
        return jwt.encode(claims, SECRET, algorithm="HS256")


# --- subscribers ----------------------------------------------------------------------


class Subscriber:
    """One client following one execution on one transport, resuming with its cursor."""

    def __init__(
        self,
        run: Run,
        index: int,
        transport: str,
        stream: Stream,
        first_url: str | None = None,
        on_victim: bool = False,
    ) -> None:
        self.run = run
        self.on_victim = on_victim  # kill mode: connected to the process that is killed
        self.index = index
        self.transport = transport
        self.stream = stream
        self.token = run.token(f"sub-{index}", stream.id)
        self.url = first_url or run.url
        self.after = 0
        self.got: set[int] = set()
        self.stats = TransportStats()
        self.done = False
        self.replaying: tuple[float, int] | None = None  # (reconnected at, seq to reach)
        self.lost_at: float | None = None  # when the server ended the last connection
        self.hint_ms: int | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.killing = False

    # cursor rules
    def on_event(self, seq: int, terminal: bool) -> None:
        if self.on_victim and self.run.killed_at is not None and not self.stats.first_event:
            self.stats.first_event.append(now() - self.run.killed_at)
        if seq <= self.after:
            self.stats.duplicates += 1
            return
        if seq > self.after + 1:
            self.stats.order += 1
        self.after = seq
        self.got.add(seq)
        if self.replaying is not None and seq >= self.replaying[1]:
            self.stats.replay.append(now() - self.replaying[0])
            self.replaying = None
        if terminal:
            self.done = True

    def on_served(self) -> None:
        """The connection serves (ready, or a long-poll answer)."""
        if self.lost_at is not None:
            self.stats.reconnect.append(now() - self.lost_at)
            self.lost_at = None

    async def life(self) -> None:
        options = self.run.options
        failures = 0
        first = True
        while not self.done and not self.run.stopping:
            if not first and options.mode == "chaos":
                target = self.stream.acked
                self.replaying = (now(), target) if target > self.after else None
            first = False
            kill_in = self.run.rng.uniform(*options.kill_every) if options.mode == "chaos" else None
            self.hint_ms = None
            try:
                ending = await self.connection(kill_in)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                ending = Ending.SERVER
                if isinstance(exc, Refused):
                    self.stats.refused += 1
            finally:
                self.writer = None
            if ending is Ending.DONE or self.done:
                return
            self.url = self.run.url  # a reconnect goes through the deployment's front
            if ending is Ending.KILLED:
                self.stats.kills += 1
                failures = 0
                await asyncio.sleep(options.offline)
                continue
            if self.lost_at is None:
                self.lost_at = now()
            if self.hint_ms is not None:
                await asyncio.sleep(self.hint_ms / 1000)
                failures = 0
            else:
                # Backoff with full jitter, first 0.2 s (client/follow.py's).
                await asyncio.sleep(self.run.rng.uniform(0, min(5.0, 0.2 * 2**failures)))
                failures += 1

    async def connection(self, kill_in: float | None) -> Ending:
        body = {"websocket": self._websocket, "sse": self._sse, "longpoll": self._longpoll}[self.transport]
        if kill_in is None:
            return await body()
        task = asyncio.ensure_future(body())
        done, _ = await asyncio.wait([task], timeout=kill_in)
        if task in done:
            return task.result()
        self.killing = True
        if self.writer is not None:
            kill_socket(self.writer, self.run.rng.choice(list(Kill)))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError, asyncio.IncompleteReadError, ValueError):
            await task
        self.killing = False
        return Ending.KILLED

    def path(self, **query: int) -> str:
        q = "&".join(f"{k}={v}" for k, v in {"after": self.after, **query}.items())
        return f"/api/executions/{self.stream.id}/events?{q}"

    async def _websocket(self) -> Ending:
        reader, writer = await open_stream(self.url)
        self.writer = writer
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            headers = {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Protocol": "herald.v1",
                "Authorization": f"Bearer {self.token}",
            }
            writer.write(request_head("GET", self.url, self.path(), headers))
            status, head = await asyncio.wait_for(read_head(reader), 10)
            if status != 101:
                await read_body(reader, head)
                raise Refused(status)
            buffer = bytearray()
            while True:
                data = await reader.read(65536)
                if not data:
                    return Ending.SERVER
                buffer += data
                frames, used = ws_frames(buffer)
                del buffer[:used]
                for opcode, payload in frames:
                    if opcode == 0x1:
                        if payload.startswith(b'{"control"'):
                            if b'"ready"' in payload:
                                self.on_served()
                            continue
                        match = SEQ.search(payload)
                        if match:
                            self.on_event(int(match[1]), match[2] in TERMINAL)
                    elif opcode == 0x9:
                        writer.write(ws_frame(0xA, payload))
                    elif opcode == 0x8:
                        reason = payload[2:].decode("utf-8", "replace")
                        hint = RETRY_HINT.search(reason)
                        self.hint_ms = int(hint[1]) if hint else None
                        return Ending.DONE if self.done else Ending.SERVER
                if self.done:
                    return Ending.DONE
        finally:
            if not self.killing:
                writer.transport.abort()

    async def _sse(self) -> Ending:
        reader, writer = await open_stream(self.url)
        self.writer = writer
        try:
            headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {self.token}"}
            headers["Last-Event-ID"] = str(self.after)
            writer.write(request_head("GET", self.url, self.path(), headers))
            status, head = await asyncio.wait_for(read_head(reader), 10)
            if status == 204:
                self.done = True
                return Ending.DONE
            if status != 200:
                await read_body(reader, head)
                raise Refused(status)
            dechunk = Dechunk() if "chunked" in head.get("transfer-encoding", "") else None
            text = bytearray()
            ready = False
            while True:
                data = await reader.read(65536)
                if not data:
                    return Ending.SERVER
                text += dechunk.feed(data) if dechunk is not None else data
                blocks = bytes(text).split(b"\n\n")
                text = bytearray(blocks.pop())
                for block in blocks:
                    if block.startswith(b"id: "):
                        match = SEQ.search(block)
                        if match:
                            self.on_event(int(match[1]), match[2] in TERMINAL)
                    elif block.startswith(b"retry: ") and ready:
                        self.hint_ms = int(block[7:].strip() or 0)
                    elif b'"control":"ready"' in block:
                        ready = True
                        self.on_served()
                if self.done:
                    return Ending.DONE
                if dechunk is not None and dechunk.ended:
                    return Ending.SERVER
        finally:
            if not self.killing:
                writer.transport.abort()

    async def _longpoll(self) -> Ending:
        reader, writer = await open_stream(self.url)
        self.writer = writer
        try:
            wait = 0  # the first poll answers at once: it is this connection's "ready"
            while True:
                headers = {"Accept": "application/json", "Authorization": f"Bearer {self.token}"}
                writer.write(request_head("GET", self.url, self.path(wait=wait, limit=1000), headers))
                status, head = await asyncio.wait_for(read_head(reader), wait + 15)
                body = await asyncio.wait_for(read_body(reader, head), 15)
                if status != 200:
                    raise Refused(status)
                self.on_served()
                page = json.loads(body)
                for event in page["events"]:
                    self.on_event(event["seq"], event["event"].encode() in TERMINAL)
                if page["reset"] is not None:
                    self.after = max(self.after, page["reset"]["last_seq"])
                if page["done"] or self.done:
                    self.done = True
                    return Ending.DONE
                if head.get("connection", "").lower() == "close":
                    return Ending.SERVER
                wait = LONGPOLL_WAIT
        finally:
            if not self.killing:
                writer.transport.abort()


class Refused(OSError):
    """The server answered a connection with an error status (503 draining, 502...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


# --- publishers -------------------------------------------------------------------------


class HttpClient:
    """One keep-alive HTTP/1.1 connection, opened again when it was closed."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: Any, timeout: float = 10.0) -> tuple[int, Any]:
        if self.conn is None:
            self.conn = await open_stream(self.url)
        reader, writer = self.conn
        data = json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
        }
        try:
            writer.write(request_head("POST", self.url, path, headers) + data)
            status, head = await asyncio.wait_for(read_head(reader), timeout)
            answer = await asyncio.wait_for(read_body(reader, head), timeout)
        except BaseException:
            self.close()
            raise
        if head.get("connection", "").lower() == "close":
            self.close()
        return status, json.loads(answer) if answer else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].transport.abort()
            self.conn = None


async def create_executions(run: Run, url: str, n: int) -> None:
    client = HttpClient(url, run.token("publisher"))
    try:
        for _ in range(n):
            status, body = await client.post("/api/executions", {"kind": "chaos"})
            if status != 201:
                raise RuntimeError(f"creating an execution answered {status}: {body}")
            run.streams.append(Stream(body["id"]))
    finally:
        client.close()


class Publisher:
    """Publishes one execution at ``--rate`` events per second on schedule, however long
    each acknowledgement takes (a publish does not wait for the one before: each is on
    a keep-alive connection of its own from a pool), every event keyed and retried
    until acknowledged, each try to ``urls()``; ``complete`` last, once every other
    event is acknowledged, so the terminal seq counts them all."""

    def __init__(self, run: Run, stream: Stream, urls: Callable[[], str]) -> None:
        self.run = run
        self.stream = stream
        self.urls = urls
        self.idle: dict[str, list[HttpClient]] = {}

    async def run_until(self, stop: Callable[[], bool]) -> None:
        period = 1.0 / self.run.options.rate
        in_flight: set[asyncio.Task[None]] = set()
        i = 0
        next_at = now()
        while not stop():
            task = asyncio.ensure_future(self.publish({"event": "token", "data": {"text": "x"}, "key": f"k{i}"}))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - now()))
        await asyncio.gather(*in_flight)
        await self.publish({"event": "complete", "data": {"result": {"events": i}}, "key": "end"}, terminal=True)
        for clients in self.idle.values():
            for client in clients:
                client.close()

    async def publish(self, item: dict[str, Any], terminal: bool = False) -> None:
        run, stream = self.run, self.stream
        while True:
            url = self.urls()
            pool = self.idle.setdefault(url, [])
            client = pool.pop() if pool else HttpClient(url, run.token("publisher"))
            sent = now()
            try:
                status, answer = await client.post(f"/api/executions/{stream.id}/events", item)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                status, answer = 0, None
            pool.append(client)
            if status == 202:
                seq = answer["seq"][0]
                acked = now()
                run.ack_latency.append((acked, acked - sent))
                stream.acked_seqs.add(seq)
                stream.acked = max(stream.acked, seq)
                if terminal:
                    stream.terminal, stream.terminal_at = seq, acked
                return
            run.publish_retries += 1
            await asyncio.sleep(0.05)


async def publish(run: Run, stream: Stream, urls: Callable[[], str], stop: Callable[[], bool]) -> None:
    """Publish ``stream`` at ``--rate`` until ``stop()``, then ``complete``."""
    await Publisher(run, stream, urls).run_until(stop)


# --- the three modes ----------------------------------------------------------------------


def resumes(nodes: Sequence[HeraldServer], out: dict[str, float] | None = None) -> dict[str, float]:
    """``herald_resumes_total`` by outcome, summed over the running processes (added
    to ``out``)."""
    out = {} if out is None else out
    for node in nodes:
        if not node.running:
            continue
        for line in node.metrics().splitlines():
            match = re.match(r'herald_resumes_total\{outcome="(\w+)"\} ([0-9.e+]+)', line)
            if match:
                out[match[1]] = out.get(match[1], 0.0) + float(match[2])
    return out


def make_subscribers(run: Run, n: int, victim: str | None = None) -> list[Subscriber]:
    """``n`` subscribers, transports and executions in turn (connected first to
    ``victim`` when given)."""
    transports = run.options.transports
    return [
        Subscriber(
            run, i, transports[i % len(transports)], run.streams[i % len(run.streams)], victim, victim is not None
        )
        for i in range(n)
    ]


async def settle(run: Run, subscribers: list[Subscriber], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every subscriber has its terminal event, at most ``--settle`` s after
    the last terminal event was acknowledged."""
    last = max(s.terminal_at or now() for s in run.streams)
    while not all(s.done for s in subscribers) and now() < last + run.options.settle:
        await asyncio.sleep(0.1)
    run.stopping = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def tally(run: Run, subscribers: list[Subscriber]) -> dict[str, TransportStats]:
    by_transport = {name: TransportStats() for name in run.options.transports}
    for sub in subscribers:
        total = by_transport[sub.transport]
        stream = sub.stream
        terminal = stream.terminal or stream.acked
        total.subscribers += 1
        total.expected += terminal
        total.delivered += sum(1 for seq in sub.got if seq <= terminal)
        total.lost += len(stream.acked_seqs - sub.got)
        total.stuck += 0 if sub.done else 1
        for name in ("duplicates", "order", "kills", "refused"):
            setattr(total, name, getattr(total, name) + getattr(sub.stats, name))
        total.replay += sub.stats.replay
        total.reconnect += sub.stats.reconnect
        total.first_event += sub.stats.first_event
    return by_transport


async def chaos(options: argparse.Namespace) -> Report:
    args = [*SERVER_ARGS, *options.server_args]
    with Deployment(options.nodes, mongo=options.store == "mongo", args=args) as deployment:
        run = Run(options, deployment.url)
        await create_executions(run, deployment.url, options.executions)
        subscribers = make_subscribers(run, options.subscribers)
        tasks = [asyncio.ensure_future(s.life()) for s in subscribers]
        await asyncio.sleep(1.0)  # everyone connected and replayed from 0
        began = now()
        end = began + options.duration
        await asyncio.gather(*(publish(run, s, lambda: deployment.url, lambda: now() >= end) for s in run.streams))
        await settle(run, subscribers, tasks)
        return Report(options, run, tally(run, subscribers), resumes(deployment.nodes), now() - began)


async def rolling(options: argparse.Namespace) -> Report:
    args = [*SERVER_ARGS, "--drain-timeout", str(options.drain_timeout), *options.server_args]
    with Deployment(2, args=args) as deployment:
        run = Run(options, deployment.url)
        await create_executions(run, deployment.url, options.executions)
        subscribers = make_subscribers(run, options.subscribers)
        tasks = [asyncio.ensure_future(s.life()) for s in subscribers]
        await asyncio.sleep(1.0)
        began = now()
        restarted = asyncio.Event()
        publishing = asyncio.gather(*(publish(run, s, lambda: deployment.url, restarted.is_set) for s in run.streams))
        loop = asyncio.get_running_loop()
        resumed: dict[str, float] = {}
        notes = []
        await asyncio.sleep(options.warmup)
        for node in deployment.nodes:
            resumes([node], resumed)  # its count dies with it
            signalled = now()
            node.terminate()
            code = await loop.run_in_executor(None, node.wait, options.drain_timeout + 5)
            notes.append(f"process :{node.port}: SIGTERM, exit code {code} after {now() - signalled:.2f} s")
            await loop.run_in_executor(None, node.start)
            await asyncio.sleep(options.warmup)
        restarted.set()  # each publisher's next event is its ``complete``
        await publishing
        await settle(run, subscribers, tasks)
        report = Report(options, run, tally(run, subscribers), resumes(deployment.nodes, resumed), now() - began)
        report.notes += notes
        return report


async def kill(options: argparse.Namespace) -> Report:
    args = [*SERVER_ARGS, *options.server_args]
    with Deployment(3, args=args) as deployment:
        victim, survivors = deployment.nodes[0], deployment.nodes[1:]
        run = Run(options, deployment.url)
        await create_executions(run, survivors[0].url, options.executions)
        subscribers = make_subscribers(run, options.subscribers, victim=victim.url)
        tasks = [asyncio.ensure_future(s.life()) for s in subscribers]
        await asyncio.sleep(1.0)
        began = now()
        end = began + options.duration
        turn = iter(range(10**9))

        def through_survivors() -> str:
            return survivors[next(turn) % len(survivors)].url

        publishing = asyncio.gather(*(publish(run, s, through_survivors, lambda: now() >= end) for s in run.streams))
        await asyncio.sleep(options.warmup)
        run.killed_at = now()
        victim.kill()
        await publishing
        await settle(run, subscribers, tasks)
        report = Report(options, run, tally(run, subscribers), resumes(survivors), now() - began)
        window = [lat for at, lat in run.ack_latency if run.killed_at - 1 <= at <= run.killed_at + 5]
        acks = sorted(at for at, _ in run.ack_latency if at >= run.killed_at - 1)
        gaps = [b - a for a, b in itertools.pairwise(acks) if a <= run.killed_at + 5]
        report.notes.append(
            f"publish ack latency from 1 s before to 5 s after the kill (n={len(window)}): "
            f"{fmt_dist(window, (50, 99, 100))}; longest time without an ack {fmt_s(max(gaps, default=None))}"
        )
        return report


# --- the report ---------------------------------------------------------------------------


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def fmt_dist(values: Sequence[float], ps: Sequence[float]) -> str:
    return "/".join(fmt_s(percentile(values, p)) for p in ps)


class Report:
    """The run's figures, per transport, and the table that prints them."""

    def __init__(
        self,
        options: argparse.Namespace,
        run: Run,
        stats: dict[str, TransportStats],
        resumes: dict[str, float],
        seconds: float,
    ) -> None:
        self.options = options
        self.run = run
        self.stats = stats
        self.resumes = resumes
        self.seconds = seconds
        self.notes: list[str] = []

    def delivered_pct(self, transport: str) -> float:
        s = self.stats[transport]
        return 100.0 * s.delivered / s.expected if s.expected else 0.0

    @property
    def from_memory_pct(self) -> float | None:
        total = sum(self.resumes.values())
        return None if not total else 100.0 * self.resumes.get("from_memory", 0.0) / total

    def table(self) -> str:
        o = self.options
        where = {
            "chaos": f"{o.nodes} process(es), "
            + (f"{o.store} store" if o.nodes == 1 else "behind nginx on SecantusDB"),
            "rolling": "2 processes behind nginx on SecantusDB, SIGTERM and restart each in turn",
            "kill": "3 processes behind nginx on SecantusDB, kill -9 of the one the subscribers are on",
        }[o.mode]
        if o.mode == "chaos":
            where += f"; each subscriber kills its connection every {o.kill_every[0]:g}-{o.kill_every[1]:g} s"
            where += f", offline {o.offline:g} s"
        lines = [
            f"mode {o.mode}: {o.subscribers} subscribers, {o.executions} executions at {o.rate:g} events/s, "
            f"{self.seconds:.0f} s; {where}",
            "",
            f"{'transport':<10} {'subs':>5} {'kills':>6} {'delivered':>10} {'dup':>4} {'order':>5} {'lost':>5} "
            f"{'stuck':>5} {'replay p50/p99/max s':>21} {'reconnect p50/p95/max s':>24} "
            f"{'first event p50/p95/max s':>26}",
        ]
        for name, s in self.stats.items():
            lines.append(
                f"{name:<10} {s.subscribers:>5} {s.kills:>6} {self.delivered_pct(name):>9.2f}% {s.duplicates:>4} "
                f"{s.order:>5} {s.lost:>5} {s.stuck:>5} {fmt_dist(s.replay, (50, 99, 100)):>21} "
                f"{fmt_dist(s.reconnect, (50, 95, 100)):>24} {fmt_dist(s.first_event, (50, 95, 100)):>26}"
            )
        published = sum(len(s.acked_seqs) for s in self.run.streams)
        lines += [
            "",
            f"published {published} events (acknowledged), ack p50/p99/max "
            f"{fmt_dist([lat for _, lat in self.run.ack_latency], (50, 99, 100))} s, "
            f"{self.run.publish_retries} publishes retried",
            "resumes (herald_resumes_total): "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.resumes.items()))
            + (f" — {self.from_memory_pct:.1f} % from memory" if self.from_memory_pct is not None else ""),
            *self.notes,
        ]
        return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    def interval(text: str) -> tuple[float, float]:
        low, _, high = text.partition(":")
        return float(low), float(high or low)

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("mode", nargs="?", choices=("chaos", "rolling", "kill"), default="chaos")
    p.add_argument("--subscribers", type=int, help="default: 600 (chaos, rolling), 100 (kill)")
    p.add_argument("--executions", type=int, default=4, help="executions published and followed (default 4)")
    p.add_argument("--rate", type=float, default=20.0, help="events per second per execution (default 20)")
    p.add_argument("--duration", type=float, help="seconds of publishing (default: chaos 60, kill 10 after the kill)")
    p.add_argument("--kill-every", type=interval, default=(8.0, 15.0), help="MIN:MAX seconds (default 8:15)")
    p.add_argument("--offline", type=float, default=2.0, help="seconds offline after a kill (default 2)")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="subscribers split over these")
    p.add_argument("--nodes", type=int, default=1, help="chaos: server.py processes (>1: nginx, SecantusDB, Redis)")
    p.add_argument("--store", choices=("memory", "mongo"), default="memory", help="chaos with 1 process")
    p.add_argument("--warmup", type=float, default=5.0, help="rolling, kill: seconds before each restart / the kill")
    p.add_argument("--drain-timeout", type=float, default=10.0, help="rolling: the processes' --drain-timeout")
    p.add_argument("--settle", type=float, default=30.0, help="seconds to wait for the terminal events (default 30)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--server-arg", dest="server_args", action="append", default=[], help="extra server.py option")
    options = p.parse_args(argv)
    options.transports = tuple(t for t in options.transports.split(",") if t)
    if any(t not in TRANSPORTS for t in options.transports):
        p.error(f"--transports: choose from {', '.join(TRANSPORTS)}")
    if options.subscribers is None:
        options.subscribers = 100 if options.mode == "kill" else 600
    if options.duration is None:
        options.duration = options.warmup + 10 if options.mode == "kill" else 60.0
    return options


async def main(options: argparse.Namespace) -> Report:
    return await {"chaos": chaos, "rolling": rolling, "kill": kill}[options.mode](options)


if __name__ == "__main__":
    print(asyncio.run(main(parse_args())).table())
