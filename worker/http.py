"""Serving a queue over plain HTTP, for networks that do not pass WebSocket.

Each of ``capacity`` loops long-polls ``POST /api/workers/claim?queue=&wait=``, runs
what it gets, and publishes with the ordinary ``POST .../events``. Events are gathered
for a few milliseconds and sent as one list (one request, one store append), so a
token stream does not cost one request per token. A publish answered ``409`` means
the execution ended elsewhere (cancelled, timed out): the run is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from client.api import ApiError, HeraldClient
from core.timing import backoff_delay
from worker.base import TERMINAL, Emit, Worker, run_execution

log = logging.getLogger("herald.worker")
GATHER_SECONDS = 0.01
MAX_BATCH = 1000


class _Batcher:
    """Events of one execution, sent in order as lists."""

    def __init__(self, client: HeraldClient, execution_id: str, run: asyncio.Task | None = None) -> None:
        self.client = client
        self.execution_id = execution_id
        self.run = run
        self.pending: list[dict[str, Any]] = []
        self.flusher: asyncio.Task | None = None

    async def send(self, item: dict[str, Any]) -> None:
        self.pending.append(item)
        if self.flusher is None:
            self.flusher = asyncio.ensure_future(self._flush())
        if item["event"] in TERMINAL or len(self.pending) >= MAX_BATCH:
            await asyncio.shield(self.flusher)

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(GATHER_SECONDS)
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                try:
                    await self.client.publish_many(self.execution_id, batch)
                except ApiError as exc:
                    if exc.status == 409 and self.run is not None:
                        self.pending.clear()
                        self.run.cancel()  # ended elsewhere
                        return
                    raise
        finally:
            self.flusher = None


class HttpWorkerRunner:
    """Claims and runs executions over HTTP until stopped."""

    def __init__(
        self,
        worker: Worker,
        base_url: str,
        token: str,
        *,
        queue: str | None = None,
        name: str | None = None,
        capacity: int | None = None,
        wait: int = 25,
        first_delay: float = 1.0,
    ) -> None:
        self.worker = worker
        self.client = HeraldClient(base_url, token, timeout=wait + 15)
        self.queue = queue or worker.queue
        self.name = name
        self.capacity = capacity or worker.capacity
        self.wait = wait
        self.first_delay = first_delay
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    async def serve_forever(self) -> None:
        await asyncio.gather(*(self._loop() for _ in range(self.capacity)))

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                answer = await self.client.request(
                    "POST", "/api/workers/claim", None, queue=self.queue, wait=self.wait, name=self.name
                )
            except ApiError as exc:
                if exc.status in (400, 401, 403):
                    raise
                answer = None
            except OSError:
                answer = None
            if answer is None:
                failures += 1
                await asyncio.sleep(backoff_delay(failures, first=self.first_delay))
                continue
            failures = 0
            execution = answer.get("execution")
            if execution is not None:
                await self.run_one(execution)

    async def run_one(self, execution: dict[str, Any]) -> None:
        batcher = _Batcher(self.client, execution["id"])
        emit = Emit(execution["id"], batcher.send)
        task = asyncio.ensure_future(run_execution(self.worker, execution, emit))
        batcher.run = task
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        if batcher.flusher is not None:
            await asyncio.gather(batcher.flusher, return_exceptions=True)


async def serve_http(worker: Worker, base_url: str, token: str, **options: Any) -> None:
    """Serve ``worker`` over HTTP claims until stopped; see ``HttpWorkerRunner``."""
    await HttpWorkerRunner(worker, base_url, token, **options).serve_forever()
