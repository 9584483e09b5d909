"""Wire encodings, computed once per event and shared by every subscriber.

A fan-out to 10,000 subscribers must not serialise an event 10,000 times (Centrifuge's
``hub.go`` does the same): ``Encoded`` holds an event's JSON envelope and builds its SSE
block and WebSocket frame lazily, once, the first time a transport asks. Control
messages go through the same helpers so every transport frames them alike.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from core.model import TERMINAL_EVENTS, Event
from core.transport import Encoding

# allow_nan=False: strict JSON out. ``core.jsonstrict`` refuses NaN and Infinity on the
# way in; should one reach an answer anyway, a ValueError is better than serving a
# bare ``NaN`` that breaks every client's ``JSON.parse`` of that stream.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 friendly, never a non-JSON token: the one serialiser the server uses."""
    return _dumps(value)


def ws_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame (RFC 6455 5.2), server to client."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def http_chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk, so a streaming response can be written below Tornado."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Encoded:
    """An event and its encodings; each built at most once."""

    __slots__ = ("_bytes", "_sse", "_sse_chunk", "_ws", "event", "json", "seq")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.seq = event.seq
        self.json: str = _dumps(event.envelope())
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None
        self._bytes: bytes | None = None

    @property
    def terminal(self) -> bool:
        return self.event.event in TERMINAL_EVENTS

    def json_bytes(self) -> bytes:
        if self._bytes is None:
            self._bytes = self.json.encode()
        return self._bytes

    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = ws_frame(self.json_bytes())
        return self._ws

    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"id: %d\nevent: %s\ndata: %s\n\n" % (
                self.seq,
                self.event.event.encode(),
                self.json_bytes(),
            )
        return self._sse

    def sse_chunk(self) -> bytes:
        if self._sse_chunk is None:
            self._sse_chunk = http_chunk(self.sse())
        return self._sse_chunk


def frame_events(batch: list[Encoded], encoding: Encoding) -> bytes:
    """A batch of events as one write in ``encoding``. Built once per fan-out and
    encoding, and shared by every subscriber that gets it."""
    if encoding is Encoding.WS:
        return batch[0].ws() if len(batch) == 1 else b"".join(e.ws() for e in batch)
    if encoding is Encoding.SSE_CHUNK:
        return batch[0].sse_chunk() if len(batch) == 1 else http_chunk(b"".join(e.sse() for e in batch))
    if encoding is Encoding.SSE:
        return batch[0].sse() if len(batch) == 1 else b"".join(e.sse() for e in batch)
    raise ValueError(f"events are not framed one by one in {encoding}")


def frame_message(name: str, message: dict[str, Any], encoding: Encoding) -> bytes:
    """A JSON message without ``seq`` (a control message, a feed message) in
    ``encoding``: a WebSocket text frame, or an SSE block named ``name`` with no
    ``id:`` (so ``Last-Event-ID`` only ever names a real event)."""
    payload = _dumps(message).encode()
    if encoding is Encoding.WS:
        return ws_frame(payload)
    block = b"event: %s\ndata: %s\n\n" % (name.encode(), payload)
    if encoding is Encoding.SSE_CHUNK:
        return http_chunk(block)
    if encoding is Encoding.SSE:
        return block
    raise ValueError(f"messages are not framed one by one in {encoding}")


def frame_control(message: dict[str, Any], encoding: Encoding) -> bytes:
    """A control message in ``encoding`` (SSE: ``event: control``)."""
    return frame_message("control", message, encoding)


#: A WebSocket ping frame with no payload (RFC 6455 5.5.2), server to client.
WS_PING = b"\x89\x00"


class EncodedCache:
    """The most recently encoded events, by execution and seq, shared by the hub and
    every catch-up read.

    A long-poller re-polls right after each answer, and what was published in between
    comes from the store: without this, 1,000 pollers catching up on the same event
    encode it 1,000 times (timestamp formatting and JSON were the largest part of
    Herald's own work per poll). A stored event never changes (seqs are never reused
    in an execution), so an entry is never stale; the oldest go first past
    ``capacity`` (each is an event, its JSON, and whichever frames were built).
    """

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, int], Encoded] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, execution_id: str, events: list[Event]) -> list[Encoded]:
        entries = self._entries
        out = []
        for event in events:
            key = (execution_id, event.seq)
            encoded = entries.get(key)
            if encoded is None:
                encoded = entries[key] = Encoded(event)
                if len(entries) > self.capacity:
                    entries.popitem(last=False)
            out.append(encoded)
        return out


def control(name: str, **fields: Any) -> dict[str, Any]:
    """A control message: no ``seq``, so clients never take it for an event."""
    return {"control": name, **fields}


def page_json(events: list[Encoded], next_after: int, done: bool, reset: dict[str, Any] | None) -> bytes:
    """The long-poll / JSON page body, splicing the pre-encoded envelopes."""
    head = b'{"events":[' + b",".join(e.json_bytes() for e in events) + b"]"
    tail = b',"next_after":%d,"done":%s,"reset":%s}' % (
        next_after,
        b"true" if done else b"false",
        _dumps(reset).encode(),
    )
    return head + tail
