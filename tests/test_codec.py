"""Wire encodings without sockets: WebSocket frame lengths, SSE blocks and chunks,
control messages and the long-poll page (core/codec.py)."""

from __future__ import annotations

import json

import pytest

from client.sse import SseParser
from core.codec import (
    WS_PING,
    Encoded,
    EncodedCache,
    control,
    dumps,
    frame_control,
    frame_events,
    frame_message,
    http_chunk,
    page_json,
    ws_frame,
)
from core.model import Event
from core.transport import Encoding


def parse_frame(frame: bytes) -> tuple[int, bool, bytes]:
    """RFC 6455 5.2, server to client: (opcode, fin, payload); asserts no mask."""
    fin, opcode = bool(frame[0] & 0x80), frame[0] & 0x0F
    assert not frame[1] & 0x80, "server frames are not masked"
    n, at = frame[1] & 0x7F, 2
    if n == 126:
        n, at = int.from_bytes(frame[2:4], "big"), 4
    elif n == 127:
        n, at = int.from_bytes(frame[2:10], "big"), 10
    assert len(frame) == at + n
    return opcode, fin, frame[at:]


@pytest.mark.parametrize(
    "size,header_len,length_byte", [(0, 2, 0), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127)]
)
def test_ws_frame_lengths(size, header_len, length_byte):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = ws_frame(payload)
    assert len(frame) == header_len + size
    assert frame[1] == length_byte
    assert parse_frame(frame) == (1, True, payload)


def event(seq: int = 7, name: str = "token", data=None) -> Event:
    return Event("ex_abc", seq, name, {"text": "héllo\nworld"} if data is None else data, 1_700_000_000.5)


def test_envelope_is_encoded_once_and_shared():
    encoded = Encoded(event())
    assert json.loads(encoded.json) == {
        "execution_id": "ex_abc",
        "seq": 7,
        "event": "token",
        "timestamp": "2023-11-14T22:13:20.500Z",
        "data": {"text": "héllo\nworld"},
    }
    assert encoded.ws() is encoded.ws() and encoded.sse() is encoded.sse()
    assert "é" in encoded.json  # UTF-8, not \\u escapes
    assert parse_frame(encoded.ws())[2] == encoded.json.encode()


def test_sse_block_round_trips_through_a_parser():
    encoded = Encoded(event())
    block = encoded.sse()
    assert block.startswith(b"id: 7\nevent: token\ndata: ") and block.endswith(b"\n\n")
    # A newline inside the data is escaped by JSON, so the block is one data line.
    assert block.count(b"\n") == 4
    [message] = SseParser().feed(block)
    assert (message.id, message.event) == ("7", "token")
    assert json.loads(message.data) == json.loads(encoded.json)


def test_sse_chunk_and_http_chunk():
    assert http_chunk(b"hello") == b"5\r\nhello\r\n"
    assert http_chunk(b"x" * 300) == b"12c\r\n" + b"x" * 300 + b"\r\n"
    encoded = Encoded(event())
    assert encoded.sse_chunk() == http_chunk(encoded.sse())


def test_control_messages_have_no_seq_and_no_id():
    message = control("reset", execution={"id": "ex_abc"})
    assert message == {"control": "reset", "execution": {"id": "ex_abc"}} and "seq" not in message
    block = frame_control(control("ping"), Encoding.SSE)
    assert block == b'event: control\ndata: {"control":"ping"}\n\n'
    [parsed] = SseParser().feed(block)
    assert parsed.id is None and parsed.event == "control"
    assert frame_control(control("ping"), Encoding.SSE_CHUNK) == http_chunk(block)
    assert frame_control(control("ping"), Encoding.WS) == ws_frame(b'{"control":"ping"}')


def test_feed_messages_are_named_blocks_and_text_frames():
    message = {"type": "snapshot", "version": "a.1", "executions": []}
    [parsed] = SseParser().feed(frame_message("snapshot", message, Encoding.SSE))
    assert parsed.event == "snapshot" and parsed.id is None and json.loads(parsed.data) == message
    assert frame_message("snapshot", message, Encoding.WS) == ws_frame(dumps(message).encode())


def test_events_are_framed_once_per_encoding():
    batch = [Encoded(event(seq=1)), Encoded(event(seq=2))]
    assert frame_events(batch, Encoding.WS) == batch[0].ws() + batch[1].ws()
    assert frame_events(batch, Encoding.SSE) == batch[0].sse() + batch[1].sse()
    assert frame_events(batch, Encoding.SSE_CHUNK) == http_chunk(batch[0].sse() + batch[1].sse())
    assert frame_events(batch[:1], Encoding.SSE_CHUNK) == batch[0].sse_chunk()
    with pytest.raises(ValueError):
        frame_events(batch, Encoding.PAGE)


def test_ws_ping_is_an_empty_final_ping_frame():
    assert bytes((0x89, 0x00)) == WS_PING


def test_terminal_flag():
    assert Encoded(event(name="complete", data={})).terminal
    assert Encoded(event(name="error", data={})).terminal
    assert Encoded(event(name="cancelled", data={})).terminal
    assert not Encoded(event(name="progress", data={})).terminal


def test_page_json_splices_pre_encoded_events():
    events = [Encoded(event(seq)) for seq in (3, 4)]
    page = json.loads(page_json(events, 4, False, None))
    assert page == {"events": [json.loads(e.json) for e in events], "next_after": 4, "done": False, "reset": None}
    empty = json.loads(page_json([], 9, True, {"id": "ex_abc", "last_seq": 9}))
    assert empty == {"events": [], "next_after": 9, "done": True, "reset": {"id": "ex_abc", "last_seq": 9}}


def test_dumps_is_compact():
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'


def test_encoded_cache_shares_one_encoding_per_execution_and_seq():
    cache = EncodedCache(capacity=3)
    first = cache.encode("ex_abc", [event(1), event(2)])
    again = cache.encode("ex_abc", [event(1), event(2), event(3)])
    assert again[0] is first[0] and again[1] is first[1]
    assert [e.seq for e in again] == [1, 2, 3]
    # Another execution's seq 1 is another event.
    other = cache.encode("ex_other", [Event("ex_other", 1, "token", {"text": "x"}, 1.0)])
    assert other[0] is not first[0] and json.loads(other[0].json)["execution_id"] == "ex_other"
    # Bounded: the oldest entry (ex_abc 1) was dropped, and is encoded anew.
    assert len(cache) == 3
    assert cache.encode("ex_abc", [event(1)])[0] is not first[0]
    assert cache.encode("ex_abc", [event(3)])[0] is again[2]
