"""WebSocket transport: one JSON text frame per event, control frames without ``seq``.

What every Herald socket shares (auth after the upgrade, heartbeats, expiry, the
``ping`` and ``auth`` ops) is in ``transports/herald_socket.py``; this file is what
following a stream adds: the cursor, the subscription, and the frames it writes
straight to the socket (``FastWriter``).
"""

from __future__ import annotations

import logging

from tornado.routing import Rule

from core.auth import may_read
from core.closecodes import CloseCode
from core.codec import Encoded, control
from core.errors import ErrorCode, HeraldError, forbidden
from core.model import Execution
from core.stream import Core, Subscription
from transports.base import STREAM_PATH, FastWriter, RequestMatches, wants_websocket
from transports.herald_socket import HeraldSocket

NAME = "websocket"
log = logging.getLogger("herald.websocket")


class WebSocketTransport(HeraldSocket):
    """Follows one execution's stream over a WebSocket."""

    transport = NAME

    def initialize(self, core: Core) -> None:  # type: ignore[override]
        super().initialize(core)
        self.subscription: Subscription | None = None
        self.writer: FastWriter | None = None

    async def open(self, execution_id: str) -> None:  # type: ignore[override]
        try:
            principal = self.sign_in()
            execution = await self.core.get_execution(execution_id)
            if not may_read(principal, execution):
                raise forbidden("this token may not read that execution")
            after = self.cursor()
            self.core.check_cursor(execution, after)
            self.admit()
            assert self.ws_connection is not None
            self.writer = FastWriter(
                self.ws_connection.stream, self.core.settings.max_buffer_bytes, "ws", self._close_slow
            )
            self.send_control(control("ready", transport=NAME))
            self.subscription = self.core.follow(execution_id, after, self)
            await self.subscription.start(execution)
        except HeraldError as exc:
            self.refuse(exc)
        except Exception:
            log.exception("opening a stream failed")
            self.refuse(HeraldError(ErrorCode.INTERNAL, 500, "internal error"))

    # --- Sink -----------------------------------------------------------------------
    def send_events(self, batch: list[Encoded]) -> None:
        data = batch[0].ws() if len(batch) == 1 else b"".join(e.ws() for e in batch)
        writer = self.writer
        if writer is not None and not writer.write(data):
            self._close_slow()

    def send_reset(self, execution: Execution) -> None:
        self.send_control(control("reset", execution=execution.to_public()))

    def end_stream(self) -> None:
        self.close(CloseCode.NORMAL, "complete")

    # --- closing ----------------------------------------------------------------------
    def _close_slow(self) -> None:
        """Its buffer overflowed: stop feeding it and close with 1013, so the client
        reconnects with its cursor. The close frame queues behind the unsent bytes;
        Tornado drops the socket if the client has not closed within 5 seconds."""
        log.info("closing a slow WebSocket subscriber")
        if self.subscription is not None:
            self.subscription.close()
        self.writer = None
        self.close(CloseCode.TRY_AGAIN_LATER, "slow_subscriber")

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        # Nothing may follow the close frame, and the client's answer (which fires
        # on_close) can take a while: leave the stream before sending it.
        if self.subscription is not None:
            self.subscription.close()
        super().close(code, reason)

    def on_close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
        super().on_close()


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_websocket), WebSocketTransport, {"core": core})
