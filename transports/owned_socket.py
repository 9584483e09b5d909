"""OwnedSocket: a held stream's socket once Herald has taken it from Tornado.

A WebSocket or an SSE response lives for hours, and all it does after its handshake is
take bytes to write and notice the client leaving (a WebSocket also reads frames).
Tornado keeps its general-purpose machinery for each one the whole time: the request
handler and its request, the ``IOStream`` with its buffers and futures, the HTTP/1
connection, the protocol object and a pending coroutine chain per read — most of the
~15 KB a held connection cost (docs/performance.md, issue 18). Once the handshake is on
the wire (``tornado_internals.take_socket``), this small object owns the socket instead:
writes go straight to it, and what it does not take waits in a queue bounded as
``FastWriter``'s; reads are handed to the stream's reader; one close path.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable

#: Bytes read at a time.
READ_SIZE = 65536
#: Seconds a closing connection may take to flush what it still has to send.
CLOSE_FLUSH_TIMEOUT = 5.0


class OwnedSocket:
    """A socket Herald writes to and reads from itself (see the module).

    ``write`` sends at once when nothing is queued, else queues behind; it answers
    False when more than ``limit`` bytes were already waiting (the caller drops the
    connection as slow), as ``FastWriter.write`` does. ``on_data`` gets what the client
    sends; ``on_gone`` is called once when the client closes or the socket fails
    (not after ``close`` or ``abort``)."""

    __slots__ = ("closing", "fd", "limit", "loop", "on_data", "on_gone", "open", "queue", "queued", "sock")

    def __init__(
        self,
        sock: socket.socket,
        limit: int,
        on_data: Callable[[bytes], None],
        on_gone: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        #: What the socket has not taken yet (made when first needed: most never need it).
        self.queue: deque[memoryview] | None = None
        self.queued = 0
        self.on_data = on_data
        self.on_gone = on_gone
        self.open = True
        #: When a closing connection gives up flushing (``close``), if it is closing.
        self.closing: asyncio.TimerHandle | None = None
        self.loop.add_reader(self.fd, self._readable)

    # --- writing ------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        """Send or queue ``data``; False when the client is too slow (see the class)."""
        if self.queued > self.limit:
            return False
        self.push(data)
        return True

    def push(self, data: bytes) -> None:
        """Send or queue ``data`` whatever is already queued (a close frame)."""
        if not self.open or self.closing is not None:
            return
        if self.queued:
            self._queue(memoryview(data))
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._gone()
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:])

    def pending(self) -> int:
        """Bytes queued, not yet taken by the socket."""
        return self.queued

    def _queue(self, data: memoryview) -> None:
        if self.queue is None:
            self.queue = deque()
            self.loop.add_writer(self.fd, self._writable)
        self.queue.append(data)
        self.queued += len(data)

    def _writable(self) -> None:
        queue = self.queue
        while queue:
            head = queue[0]
            try:
                sent = self.sock.send(head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._gone()
                return
            self.queued -= sent
            if sent < len(head):
                queue[0] = head[sent:]
                return
            queue.popleft()
        self.queue = None
        self.loop.remove_writer(self.fd)
        if self.closing is not None:
            self.abort()

    # --- reading ------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
            return
        self.on_data(data)

    # --- the end ------------------------------------------------------------------------
    def close(self, last: bytes = b"") -> None:
        """Write ``last`` and close once everything queued is sent (or after
        ``CLOSE_FLUSH_TIMEOUT``: a client that does not read is not waited for)."""
        if not self.open or self.closing is not None:
            return
        if last:
            self.push(last)
        if not self.open:
            return
        if not self.queued:
            self.abort()
            return
        self.closing = self.loop.call_later(CLOSE_FLUSH_TIMEOUT, self.abort)

    def abort(self) -> None:
        """Close the socket now, whatever is still queued."""
        if not self.open:
            return
        self.open = False
        if self.closing is not None:
            self.closing.cancel()
        self.loop.remove_reader(self.fd)
        if self.queue is not None:
            self.loop.remove_writer(self.fd)
            self.queue = None
            self.queued = 0
        self.sock.close()
        # The owner holds this socket and these are its bound methods: let go of them,
        # so that a closed connection is freed by reference counting, not by the cycle
        # collector (under churn, that garbage sets the process's memory high-water mark).
        self.on_data = _no_data
        self.on_gone = _no_gone

    def _gone(self) -> None:
        if self.open:
            on_gone = self.on_gone
            self.abort()
            on_gone()


def _no_data(data: bytes) -> None:
    """A closed socket's reader: nothing reads any more."""


def _no_gone() -> None:
    """A closed socket's owner was told already."""
