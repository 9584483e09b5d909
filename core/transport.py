"""What a transport is, as the connection owner sees it: a name, an encoding, a
write-only byte sink and a way to end the connection.

Centrifuge's ``transport.go`` is the model: its ``Transport`` can only ``Write``,
``WriteMany`` and ``Close``, and everything else a connection does (admission, expiry,
heartbeats, drain, what it follows) belongs to the ``Client``. Here that client is
``core.session.Session``; the differences between transports are *asked* of read-only
facts (how it heartbeats, whether it is bounded by ``wait``), never switched on by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol

from core.closecodes import CloseCode
from core.errors import HeraldError


class TransportName(StrEnum):
    """Every kind of connection Herald serves, one spelling each (metrics labels,
    ``--transports``, the ``ready`` message)."""

    WEBSOCKET = "websocket"
    SSE = "sse"
    LONGPOLL = "longpoll"
    WORKER = "worker"


#: The client-facing transports, in the server's default preference order.
STREAM_TRANSPORTS = (TransportName.WEBSOCKET, TransportName.SSE, TransportName.LONGPOLL)


class Encoding(Enum):
    """How bytes are framed on a connection (``core.codec`` builds each once)."""

    WS = "ws"  # WebSocket text frames, server to client (unmasked)
    SSE = "sse"  # event-stream blocks, written as they are
    SSE_CHUNK = "sse_chunk"  # event-stream blocks inside HTTP/1.1 chunks
    PAGE = "page"  # one JSON page per request (long-poll): nothing is framed per message


class Heartbeat(Enum):
    """How a connection shows it is alive."""

    PROTOCOL_PING = "protocol_ping"  # WebSocket ping frames; a silent peer is dropped
    CONTROL_MESSAGE = "control_message"  # an SSE ``ping`` control message the page can see
    NONE = "none"  # a held long-poll is bounded by ``wait``: that is its heartbeat


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why a connection ends: the WebSocket close code and reason, the label the metrics
    count it under, and, for a refusal, the error to render (Centrifuge's
    ``Disconnect{Code, Reason}``)."""

    code: CloseCode
    reason: str
    outcome: str
    error: HeraldError | None = None

    @classmethod
    def refusal(cls, error: HeraldError) -> Disconnect:
        """A request refused after the connection was accepted (4xx, or 1013 for 503)."""
        return cls(CloseCode.for_status(error.status), error.code.value, "error", error)


#: The terminal event was written (or a long-poll page answered).
NORMAL = Disconnect(CloseCode.NORMAL, "complete", "normal")
#: A long-poll page was answered before anything ended.
ANSWERED = Disconnect(CloseCode.NORMAL, "answered", "normal")
#: The peer went away (or closed its side).
CLIENT_GONE = Disconnect(CloseCode.NORMAL, "client_gone", "client")
#: The server is draining: reconnect, to another process, with the cursor.
SHUTDOWN = Disconnect(CloseCode.GOING_AWAY, "server_shutdown", "drain")
#: The peer answered no protocol ping for three heartbeats.
HEARTBEAT_TIMEOUT = Disconnect(CloseCode.GOING_AWAY, "heartbeat_timeout", "heartbeat")
#: More than ``max_buffer_bytes`` unsent: resume later with the cursor.
SLOW = Disconnect(CloseCode.TRY_AGAIN_LATER, "slow_subscriber", "slow")
#: The token's ``exp`` passed without an in-band refresh.
TOKEN_EXPIRED = Disconnect(CloseCode.UNAUTHORIZED, "token_expired", "expired")


class Transport(Protocol):
    """A connection's write side. ``write`` never blocks and never raises: it sends or
    queues and answers False when the peer is too slow (more than the bound unsent),
    and then the session ends the connection. ``close`` ends it the transport's way
    (a close frame, the end of a response, a page already written)."""

    name: TransportName
    encoding: Encoding
    heartbeat: Heartbeat

    def write(self, data: bytes) -> bool:
        """Send ``data`` (already framed in ``encoding``); False when too slow."""

    def close(self, disconnect: Disconnect) -> None:
        """End the connection; called once, after the last write."""

    def pending_bytes(self) -> int:
        """Bytes written but not yet sent (0 when the socket took everything)."""
