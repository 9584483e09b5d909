"""A stream's WebSocket once Herald owns its socket (``OwnedWebSocket``): the client's
frames read by ``ClientFrames`` (socket-free, first), then the wire against a real
server — pings, fragments, the closing handshake, and what RFC 6455 refuses."""

from __future__ import annotations

import asyncio
import json
import os
import struct

import pytest

from core.closecodes import CloseCode
from tests.fixtures_server import Herald, RawWebSocket
from transports.websocket import ClientFrames, FrameError, Opcode, OwnedWebSocket


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0) -> bytes:
    """A client frame, masked with ``mask`` (random by default; None-masked when b'')."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        size = bytes((n,))
    elif n < 65536:
        size = bytes((126,)) + n.to_bytes(2, "big")
    else:
        size = bytes((127,)) + n.to_bytes(8, "big")
    first = (0x80 if fin else 0) | rsv | opcode
    if not mask:
        return bytes((first, size[0])) + size[1:] + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((first, 0x80 | size[0])) + size[1:] + mask + masked


# --- ClientFrames, without sockets --------------------------------------------------------
def test_masked_messages_of_every_length_are_read():
    frames = ClientFrames(max_message=1 << 20)
    texts = [b"", b"ping", b"x" * 125, b"y" * 126, b"z" * 70_000]
    data = b"".join(client_frame(Opcode.TEXT, t) for t in texts) + client_frame(Opcode.BINARY, b"\x00\xff")
    assert frames.feed(data) == [(Opcode.TEXT, t) for t in texts] + [(Opcode.BINARY, b"\x00\xff")]


def test_frames_split_anywhere_are_joined_and_fragments_make_one_message():
    frames = ClientFrames(max_message=1000)
    data = (
        client_frame(Opcode.TEXT, b'{"op":', fin=False)
        + client_frame(Opcode.PING, b"between")  # control frames may come inside a message
        + client_frame(Opcode.CONTINUATION, b' "pi', fin=False)
        + client_frame(Opcode.CONTINUATION, b'ng"}')
    )
    got = []
    for i in range(len(data)):
        got += frames.feed(data[i : i + 1])
    assert got == [(Opcode.PING, b"between"), (Opcode.TEXT, b'{"op": "ping"}')]
    assert frames.buffer == b""


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(Opcode.TEXT, b"hi", mask=b""), CloseCode.PROTOCOL_ERROR),  # unmasked
        (client_frame(Opcode.TEXT, b"hi", rsv=0x40), CloseCode.PROTOCOL_ERROR),  # an extension bit
        (client_frame(Opcode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),  # a long control frame
        (client_frame(Opcode.PING, b"x", fin=False), CloseCode.PROTOCOL_ERROR),  # a fragmented one
        (client_frame(0x3, b"x"), CloseCode.PROTOCOL_ERROR),  # a reserved opcode
        (client_frame(Opcode.CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),  # a continuation of nothing
        (client_frame(Opcode.TEXT, b"a", fin=False) + client_frame(Opcode.TEXT, b"b"), CloseCode.PROTOCOL_ERROR),
        (client_frame(Opcode.TEXT, b"x" * 101), CloseCode.MESSAGE_TOO_BIG),
        (client_frame(Opcode.TEXT, b"x" * 60, fin=False) + client_frame(0, b"x" * 60), CloseCode.MESSAGE_TOO_BIG),
    ],
)
def test_what_rfc_6455_refuses(data, code):
    with pytest.raises(FrameError) as refused:
        ClientFrames(max_message=100).feed(data)
    assert refused.value.code == code


def test_a_message_too_big_is_refused_from_its_header_before_it_is_buffered():
    header = client_frame(Opcode.BINARY, b"x" * 70_000)[:14]  # the length and the mask only
    with pytest.raises(FrameError) as refused:
        ClientFrames(max_message=65536).feed(header)
    assert refused.value.code == CloseCode.MESSAGE_TOO_BIG


# --- on the wire --------------------------------------------------------------------------
async def opened(h: Herald) -> tuple[RawWebSocket, str]:
    ex = (await h.create())["id"]
    ws = await RawWebSocket.connect(h.port, f"/api/executions/{ex}/events", h.mint())
    opcode, payload = await ws.frame()
    assert opcode == Opcode.TEXT and json.loads(payload)["control"] == "ready"
    (session,) = h.core.sessions
    assert isinstance(session.transport, OwnedWebSocket)  # Tornado's part is over
    return ws, ex


async def closed_with(ws: RawWebSocket) -> int:
    while True:
        opcode, payload = await ws.frame()
        if opcode == Opcode.CLOSE:
            return struct.unpack("!H", payload[:2])[0]


def test_pings_are_ponged_and_a_fragmented_op_is_one_message(herald_run):
    async def scenario(h: Herald) -> None:
        ws, ex = await opened(h)
        ws.writer.write(client_frame(Opcode.PING, b"are you there"))
        assert await ws.frame() == (Opcode.PONG, b"are you there")
        ws.writer.write(client_frame(Opcode.TEXT, b'{"op"', fin=False) + client_frame(0, b':"ping"}'))
        assert await ws.frame() == (Opcode.TEXT, b'{"control":"pong"}')
        await h.publish(ex, {"event": "token", "data": {"text": "still here"}})
        frames = [json.loads((await ws.frame())[1]) for _ in range(2)]  # status, then the token
        assert frames[1]["data"] == {"text": "still here"}
        ws.close()

    herald_run(scenario)


def test_a_client_close_is_answered_with_its_code_and_the_session_ends(herald_run):
    async def scenario(h: Herald) -> None:
        ws, _ = await opened(h)
        ws.writer.write(client_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye"))
        assert await closed_with(ws) == 1000
        assert await asyncio.wait_for(ws.reader.read(1), 5) == b""  # then TCP ends
        for _ in range(100):
            if not h.core.sessions:
                break
            await asyncio.sleep(0.02)
        assert not h.core.sessions

    herald_run(scenario)


def test_the_server_closes_first_and_the_client_answers(herald_run):
    async def scenario(h: Herald) -> None:
        ws, ex = await opened(h)
        await h.publish(ex, {"event": "complete", "data": {"result": 1}})
        assert await closed_with(ws) == CloseCode.NORMAL
        ws.writer.write(client_frame(Opcode.CLOSE, struct.pack("!H", 1000)))
        assert await asyncio.wait_for(ws.reader.read(), 5) == b""  # nothing after the close frame

    herald_run(scenario)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(Opcode.TEXT, b'{"op":"\xff"}'), CloseCode.INVALID_DATA),
        (client_frame(Opcode.TEXT, b"x" * 140_000)[:14], CloseCode.MESSAGE_TOO_BIG),  # its header is enough
        (client_frame(Opcode.TEXT, b'{"op":"ping"}', mask=b""), CloseCode.PROTOCOL_ERROR),
    ],
)
def test_a_broken_client_frame_closes_with_its_code(herald_run, frame, code):
    async def scenario(h: Herald) -> None:
        ws, _ = await opened(h)
        ws.writer.write(frame)
        assert await closed_with(ws) == code
        assert await asyncio.wait_for(ws.reader.read(), 5) == b""

    herald_run(scenario)
