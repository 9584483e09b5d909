"""Serving a queue over an outgoing WebSocket, with reconnects.

The runner connects to ``/api/workers/connect``, says its capacity, runs each
``execute`` it receives as a task, and cancels the task on ``{"op": "cancel"}``.
Heartbeats go both ways: the server pings (Tornado's client answers), and the runner
pings the server every ``heartbeat`` seconds and drops a connection that stops
answering. When the connection ends, running tasks are cancelled (the server gives
their executions back to the queue, so another worker — or this one, reconnected —
runs them again from the start) and the runner reconnects with exponential backoff
and jitter (``core.timing.backoff_delay``). Refusals that retrying cannot fix
(``4400`` bad request, ``4403`` forbidden, ``4401`` without a token provider) raise
``FatalRefusal``; ``4409`` (name still taken, e.g. by our own dead connection the
server has not noticed yet) is retried.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from core.timing import backoff_delay
from worker.base import Emit, Send, Worker, run_execution

log = logging.getLogger("herald.worker")
FATAL_CLOSE = {4400, 4403}


class FatalRefusal(Exception):
    """The server refused this worker in a way reconnecting will not fix."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class WorkerRunner:
    """One worker process's connection to one Herald, kept alive."""

    def __init__(
        self,
        worker: Worker,
        base_url: str,
        token: str,
        *,
        queue: str | None = None,
        name: str | None = None,
        capacity: int | None = None,
        heartbeat: float = 15.0,
        first_delay: float = 1.0,
        max_delay: float = 30.0,
        token_provider: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.worker = worker
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.queue = queue or worker.queue
        self.name = name or f"{self.queue}-{int(time.time() * 1000) % 100000}"
        self.capacity = capacity or worker.capacity
        self.heartbeat = heartbeat
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.token_provider = token_provider
        self.tasks: dict[str, asyncio.Task] = {}
        #: How many times a connection was made (tests and logs read it).
        self.connections = 0
        self.connected = asyncio.Event()
        self._conn: WebSocketClientConnection | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        ws = self.base_url.replace("http", "ws", 1)
        return f"{ws}/api/workers/connect?" + urlencode({"queue": self.queue, "name": self.name})

    async def serve_forever(self) -> None:
        """Connect, serve, reconnect with backoff; until ``stop()`` or a fatal refusal."""
        failures = 0
        while not self._stopping:
            served = await self._serve_once()
            if self._stopping:
                return
            failures = 0 if served else failures + 1
            delay = backoff_delay(failures, first=self.first_delay, cap=self.max_delay)
            log.info("worker %s reconnecting in %.2fs", self.name, delay)
            await asyncio.sleep(delay)

    def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        self._stopping = True
        if self._conn is not None:
            self._conn.close(1000, "worker stopping")

    async def _serve_once(self) -> bool:
        """One connection's life; True when it got as far as ``ready``."""
        request = HTTPRequest(
            self.url, headers={"Authorization": f"Bearer {self.token}"}, connect_timeout=10, request_timeout=10
        )
        try:
            conn = await websocket_connect(
                request,
                subprotocols=["herald.v1"],
                ping_interval=self.heartbeat,
                # Tornado caps the timeout at the interval (and warns when it is longer):
                # a pong missing for one heartbeat means a dead server.
                ping_timeout=self.heartbeat,
            )
        except (OSError, HTTPClientError, TimeoutError) as exc:
            log.warning("worker %s could not connect: %s", self.name, exc)
            return False
        self._conn = conn
        stream = conn.protocol.stream if conn.protocol is not None else None
        if stream is not None:
            stream.set_nodelay(True)  # a lone token must not wait for Nagle
        ready = False
        pinger = asyncio.ensure_future(self._ping_forever(conn))
        try:
            while True:
                message = await conn.read_message()
                if message is None:
                    break
                op = json.loads(message)
                if op.get("control") == "ready":
                    ready = True
                    self.connections += 1
                    self.connected.set()
                    if self.capacity != 1:
                        await conn.write_message(json.dumps({"op": "ready", "capacity": self.capacity}))
                    log.info("worker %s serving queue %s", self.name, self.queue)
                else:
                    self._on_message(conn, op)
        finally:
            pinger.cancel()
            self._conn = None
            self.connected.clear()
            self._drop_tasks()
        await self._after_close(conn.close_code, conn.close_reason or "")
        return ready

    async def _after_close(self, code: int | None, reason: str) -> None:
        if self._stopping:
            return
        if code in FATAL_CLOSE:
            raise FatalRefusal(code, reason)
        if code == 4401:
            if self.token_provider is None:
                raise FatalRefusal(code, reason)
            self.token = await self.token_provider()
        log.info("worker %s disconnected (%s %s)", self.name, code, reason)

    async def _ping_forever(self, conn: WebSocketClientConnection) -> None:
        """Application-level heartbeat (the server answers ``pong``); protocol pings
        with a timeout (``ping_timeout``) notice a dead server."""
        try:
            while True:
                await asyncio.sleep(self.heartbeat)
                await conn.write_message(json.dumps({"op": "ping"}))
        except (WebSocketClosedError, asyncio.CancelledError):
            pass

    def _forget(self, execution_id: str, _task: asyncio.Task) -> None:
        self.tasks.pop(execution_id, None)

    def _on_message(self, conn: WebSocketClientConnection, op: dict[str, Any]) -> None:
        name = op.get("op")
        if name == "execute":
            execution = op["execution"]
            execution_id = execution["id"]
            emit = Emit(execution_id, self._sender(conn, execution_id))
            task = asyncio.ensure_future(run_execution(self.worker, execution, emit))
            self.tasks[execution_id] = task
            task.add_done_callback(functools.partial(self._forget, execution_id))
        elif name == "cancel":
            running = self.tasks.pop(op.get("execution_id", ""), None)
            if running is not None:
                running.cancel()
        elif op.get("control") == "error":
            log.warning("worker %s: server refused a message: %s", self.name, op)

    def _sender(self, conn: WebSocketClientConnection, execution_id: str) -> Send:
        async def send(item: dict[str, Any]) -> None:
            frame = {"op": "event", "execution_id": execution_id, **item}
            try:
                await conn.write_message(json.dumps(frame, separators=(",", ":")))
            except WebSocketClosedError:
                # The connection is gone; the server requeues the execution.
                raise asyncio.CancelledError from None

        return send

    def _drop_tasks(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()


async def serve(worker: Worker, base_url: str, token: str, **options: Any) -> None:
    """Serve ``worker`` over WebSocket until stopped; see ``WorkerRunner``."""
    await WorkerRunner(worker, base_url, token, **options).serve_forever()
