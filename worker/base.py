"""What a worker author touches: the ``Worker`` class and the ``Emit`` it is handed.

``Emit`` is transport-blind: it turns calls like ``emit.progress(50)`` into event
objects and hands them to a send function (a WebSocket frame, or a batched HTTP
publish). ``run_execution`` is the one life cycle both runners share: run, then
``complete`` with the return value, or ``error`` if ``run`` raised, unless ``run``
already ended the execution itself or the server cancelled it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("herald.worker")

TERMINAL = frozenset({"complete", "error", "cancelled"})
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Worker:
    """Subclass and implement ``run``. ``queue`` and ``capacity`` are defaults the
    runner uses when it is not given them."""

    queue: str = "default"
    #: Executions this worker runs at once (sent as ``{"op": "ready", "capacity"}``).
    capacity: int = 1

    async def run(self, execution: dict[str, Any], emit: Emit) -> Any:
        """Do the work of ``execution`` (the document: ``id``, ``kind``, ``input``...),
        reporting through ``emit``. The return value becomes ``complete``'s result.
        Cancellation (the server's ``{"op": "cancel"}``) arrives as CancelledError."""
        raise NotImplementedError


class Emit:
    """Publishes the events of one execution."""

    def __init__(self, execution_id: str, send: Send) -> None:
        self.execution_id = execution_id
        self._send = send
        self.ended = False

    async def __call__(self, event: str, data: Any = None, key: str | None = None) -> None:
        """Any event: ``await emit("stage.done", {...})``."""
        if self.ended:
            raise RuntimeError(f"execution {self.execution_id} has already ended")
        item: dict[str, Any] = {"event": event, "data": {} if data is None else data}
        if key is not None:
            item["key"] = key
        if event in TERMINAL:
            self.ended = True
        await self._send(item)

    async def progress(self, progress: float, stage: str | None = None, status_text: str | None = None) -> None:
        data: dict[str, Any] = {"progress": progress}
        if stage is not None:
            data["stage"] = stage
        if status_text is not None:
            data["status_text"] = status_text
        await self("progress", data)

    async def token(self, text: str) -> None:
        await self("token", {"text": text})

    async def result(self, data: Any) -> None:
        """A partial result."""
        await self("result", data)

    async def log(self, message: str, level: str = "info") -> None:
        await self("log", {"level": level, "message": message})

    async def complete(self, result: Any = None) -> None:
        await self("complete", {"result": result})

    async def error(self, error_type: str, message: str, details: Any = None) -> None:
        data: dict[str, Any] = {"error_type": error_type, "message": message}
        if details is not None:
            data["details"] = details
        await self("error", data)


async def run_execution(worker: Worker, execution: dict[str, Any], emit: Emit) -> None:
    """Run one execution to its end (see the module docstring)."""
    try:
        result = await worker.run(execution, emit)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("execution %s failed", execution["id"])
        if not emit.ended:
            await emit.error("worker_exception", f"{type(exc).__name__}: {exc}")
        return
    if not emit.ended:
        await emit.complete(result)
