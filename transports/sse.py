"""Server-Sent Events transport.

The response opens with ``retry:``, a 2 KiB comment (old proxies flush after a
threshold) and the ``ready`` control message; each event is ``id``/``event``/``data``;
control messages are ``event: control`` without ``id`` so ``Last-Event-ID`` only ever
names a real event. Heartbeats are ``ping`` control messages, visible to the page.
Errors before the stream starts are ordinary JSON errors.
"""

from __future__ import annotations

import asyncio
import logging

from tornado.iostream import StreamClosedError
from tornado.routing import Rule

from core.auth import may_read
from core.codec import Encoded, control, http_chunk, sse_control
from core.errors import ErrorCode, HeraldError, forbidden
from core.model import Execution
from core.stream import Core, Subscription
from transports.base import (
    STREAM_PATH,
    FastWriter,
    HeraldRequestHandler,
    RequestMatches,
    shed_handshake,
    wants_event_stream,
)

NAME = "sse"
RETRY_MS = 1000
PADDING = b":" + b" " * 2048 + b"\n\n"
log = logging.getLogger("herald.sse")


async def open_event_stream(handler: HeraldRequestHandler) -> None:
    """Start an event stream the way every Herald SSE response starts (an execution's
    stream and the dashboard feed): headers that stop caches and nginx buffering,
    ``retry:``, 2 KiB of padding for proxies that flush at a threshold, the ``ready``
    control message; flushed, with Nagle off, and the handshake state shed."""
    handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.set_header("Cache-Control", "no-cache")
    handler.set_header("X-Accel-Buffering", "no")
    ready = sse_control(control("ready", transport=NAME))
    handler.write(b"retry: %d\n\n" % RETRY_MS + PADDING + ready)
    await handler.flush()
    handler.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]
    shed_handshake(handler)  # headers are on the wire; the stream may last hours


class SseTransport(HeraldRequestHandler):
    """Follows one execution's stream as ``text/event-stream``."""

    transport = NAME

    def initialize(self, core: Core) -> None:  # type: ignore[override]
        super().initialize(core)
        self.expires_at = float("inf")
        self.subscription: Subscription | None = None
        self.writer: FastWriter | None = None
        self._chunked = False
        self._ended: asyncio.Future | None = None

    async def get(self, execution_id: str) -> None:
        principal = self.authenticate()
        execution = await self.core.get_execution(execution_id)
        if not may_read(principal, execution):
            raise forbidden("this token may not read that execution")
        after = self.cursor(header=True)
        self.core.check_cursor(execution, after)
        if not self.core.admit(self):
            raise HeraldError(ErrorCode.TOO_MANY_CONNECTIONS, 429, "too many connections", retry_after=5)
        self.expires_at = principal.exp
        self._ended = asyncio.get_running_loop().create_future()
        try:
            await open_event_stream(self)
            connection = self.request.connection
            self._chunked = bool(getattr(connection, "_chunking_output", False))
            self.writer = FastWriter(
                connection.stream,  # type: ignore[attr-defined]
                self.core.settings.max_buffer_bytes,
                "sse_chunk" if self._chunked else "sse",
                self._close_slow,
            )
            self.subscription = self.core.follow(execution_id, after, self)
            await self.subscription.start(execution)
            await self._ended
        except StreamClosedError:
            pass
        finally:
            if self.subscription is not None:
                self.subscription.close()
            self.core.release(self)
        if not self.request.connection.stream.closed():  # type: ignore[attr-defined]
            sent = self.finish()
            if not self._chunked:
                # Neither chunked nor sized (HTTP/1.0): only closing the connection
                # tells the client the stream ended, even if it asked for keep-alive.
                try:
                    await sent
                except StreamClosedError:
                    pass
                self.request.connection.stream.close()  # type: ignore[attr-defined]

    def _write(self, data: bytes) -> None:
        if self.writer is None:
            return
        if not self.writer.write(http_chunk(data) if self._chunked else data):
            self._close_slow()

    def _close_slow(self) -> None:
        """Its buffer overflowed: end the response; EventSource reconnects with
        ``Last-Event-ID`` and misses nothing."""
        log.info("closing a slow SSE subscriber")
        if self.subscription is not None:
            self.subscription.close()
        if self.writer is not None:
            self.writer.stream.close()
        self._end()

    # --- Sink -----------------------------------------------------------------------
    def send_events(self, batch: list[Encoded]) -> None:
        if self.writer is None:
            return
        if self._chunked:
            data = batch[0].sse_chunk() if len(batch) == 1 else http_chunk(b"".join(e.sse() for e in batch))
        else:
            data = batch[0].sse() if len(batch) == 1 else b"".join(e.sse() for e in batch)
        if not self.writer.write(data):
            self._close_slow()

    def send_reset(self, execution: Execution) -> None:
        self._write(sse_control(control("reset", execution=execution.to_public())))

    def end_stream(self) -> None:
        self._end()

    def _end(self) -> None:
        # Nothing may follow the end (a heartbeat of the same timer tick, a fan-out
        # before get() resumes): stop writing and leave the stream and the timer now.
        self.writer = None
        if self.subscription is not None:
            self.subscription.close()
        self.core.release(self)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    # --- Connection (shared timer) ----------------------------------------------------
    def heartbeat(self, now: float) -> None:
        self._write(sse_control(control("ping")))

    def going_away(self) -> None:
        self._end()  # the client reconnects with Last-Event-ID

    def expire(self) -> None:
        self._write(sse_control(control("error", code="token_expired", message="the token has expired")))
        self._end()

    def on_connection_close(self) -> None:
        self._end()


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_event_stream), SseTransport, {"core": core})
