"""A subscriber that stops reading must never delay the others.

Real server, real sockets: one WebSocket client shrinks its receive buffer and stops
reading; many large events are published; the other followers (WebSocket and SSE)
get every event, in order, promptly, while the slow one is cut off with close code
1013 (try again later: it resumes with its cursor) once its bounded buffer overflows.
"""

from __future__ import annotations

import asyncio
import socket
import time

from tests.fixtures_server import Herald, read_ws

EVENT_BYTES = 30_000
EVENTS = 300  # ~9 MB: more than the kernel's socket buffers plus the server's bound
BUFFER_LIMIT = 256 * 1024


async def stalled_websocket(h: Herald, execution_id: str) -> socket.socket:
    """A WebSocket that reads its handshake and then nothing more."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", h.port))
    request = (
        f"GET /api/executions/{execution_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {h.mint()}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def last_frame(data: bytes) -> tuple[int, bytes]:
    """The last complete server frame in ``data`` as (opcode, payload)."""
    i, found = 0, (0, b"")
    while i + 2 <= len(data):
        n, at = data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif n == 127:
            n, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        if at + n > len(data):
            break
        found = (data[i] & 0x0F, data[at : at + n])
        i = at + n
    return found


def test_a_stalled_subscriber_is_cut_off_and_the_others_get_everything_promptly(herald_run):
    async def scenario(h: Herald) -> None:
        ex = (await h.create())["id"]
        fast = [await h.websocket(ex) for _ in range(3)]
        for conn in fast:
            assert (await read_ws(conn))["control"] == "ready"
        sse = h.sse(ex)
        await sse.next()  # ready
        slow = await stalled_websocket(h, ex)
        hub = h.core.hubs.get(ex)
        assert len(hub.subs) == 5

        async def drain_ws(conn) -> list[int]:
            seqs: list[int] = []
            while True:
                message = await read_ws(conn, timeout=10)
                assert message is not None
                seqs.append(message["seq"])
                if len(seqs) == EVENTS + 1:  # the server's `status: running` comes first
                    return seqs

        readers = [asyncio.ensure_future(drain_ws(conn)) for conn in fast]
        sse_reader = asyncio.ensure_future(sse.events(EVENTS + 1, timeout=20))
        text = "x" * EVENT_BYTES
        for start in range(0, EVENTS, 20):
            await h.publish(ex, [{"event": "token", "data": {"text": f"{start + i} {text}"}} for i in range(20)])
        published = time.monotonic()

        for seqs in await asyncio.gather(*readers):
            assert seqs == list(range(1, EVENTS + 2))
        assert [e["seq"] for e in await sse_reader] == list(range(1, EVENTS + 2))
        assert time.monotonic() - published < 3.0, "a stalled subscriber delayed the others"

        # The slow one left the hub (nothing more is written for it) ...
        assert len(hub.subs) == 4
        # ... and, when it reads again, finds its close frame: 1013, resume later.
        loop = asyncio.get_running_loop()
        received = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = await asyncio.wait_for(loop.sock_recv(slow, 1 << 20), 10)
            if not chunk:
                break
            received += chunk
            if last_frame(received)[0] == 8:
                break
        opcode, payload = last_frame(received)
        assert opcode == 8 and int.from_bytes(payload[:2], "big") == 1013, (opcode, payload[:40])
        assert len(received) < EVENTS * EVENT_BYTES, "the slow subscriber was not cut off"
        slow.close()
        sse.close()
        for conn in fast:
            conn.close()

    herald_run(scenario, max_buffer_bytes=BUFFER_LIMIT)
