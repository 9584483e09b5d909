"""``transports.owned_socket.OwnedSocket`` over a real socket pair: writes straight to
the socket, a bounded queue behind a peer that does not read, and one close path."""

from __future__ import annotations

import asyncio
import socket

import pytest

from transports import owned_socket
from transports.owned_socket import OwnedSocket


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return ours, theirs


async def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
        if not chunk:
            return out
        out += chunk


def test_a_peer_that_does_not_read_is_bounded_then_gets_everything_and_the_end():
    async def main() -> None:
        ours, theirs = pair()
        heard: list[bytes] = []
        gone: list[bool] = []
        owned = OwnedSocket(ours, 60_000, heard.append, lambda: gone.append(True))
        block = b"x" * 50_000
        assert owned.write(block) and 0 < owned.pending() < 50_000  # the socket took part of it
        assert owned.write(block)  # one more batch may queue behind a reader that keeps up
        assert not owned.write(block)  # over the bound: too slow
        owned.close(b"the end")
        assert owned.open  # flushing first
        data = await read_all(theirs)
        assert data == block * 2 + b"the end"
        assert not owned.open and not gone  # closed by us: not "gone"
        theirs.close()

    asyncio.run(main())


def test_what_the_peer_sends_is_handed_over_and_its_close_is_gone_once():
    async def main() -> None:
        ours, theirs = pair()
        heard: list[bytes] = []
        gone: list[bool] = []
        owned = OwnedSocket(ours, 1000, heard.append, lambda: gone.append(True))
        theirs.send(b"hello")
        await asyncio.sleep(0.05)
        theirs.close()
        await asyncio.sleep(0.05)
        assert heard == [b"hello"] and gone == [True] and not owned.open
        owned.abort()  # idempotent
        assert gone == [True]

    asyncio.run(main())


def test_a_close_that_cannot_flush_gives_up(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(owned_socket, "CLOSE_FLUSH_TIMEOUT", 0.2)

    async def main() -> None:
        ours, theirs = pair()
        owned = OwnedSocket(ours, 1 << 20, lambda data: None, lambda: None)
        owned.write(b"x" * 200_000)
        owned.close()
        await asyncio.sleep(0.5)
        assert not owned.open and owned.pending() == 0
        theirs.close()

    asyncio.run(main())
