"""A load-client worker for ``bench.py``: holds N subscribers and counts what arrives.

``python loadtests/fanout_client.py --kind ws|sse|lp --flavor herald|plain --port P
--path PATH --n N [--first I --stride S]``; commands on stdin, one JSON line answered
on stdout each: ``snap`` (counts, CPU), ``lat`` (latency samples, then cleared),
``quit``.

Every benchmark message carries ``@T<16-digit CLOCK_MONOTONIC microseconds>#<seq>``.
The worker does not parse frames: it counts the marker ``@T`` in each connection's raw
bytes (one ``bytes.count`` per read, in C), so it costs the same whatever the framing
(WebSocket frame, SSE block, JSON page) and the server, not the client, is what the
figures measure. One connection in ``stride`` also parses the timestamps, for
publish-to-deliver latency on the publisher's clock. The technique is the one of the
shared peer harness's ``loadgen.py``; this is Herald's own copy so the project needs
nothing outside its tree to run its bench.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import sys
import time

MARK = re.compile(rb"@T(\d{16})")
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def now_us() -> int:
    return time.monotonic_ns() // 1000


class Stats:
    """Counters of this worker, reported by ``snap``."""

    count = 0
    resp = 0
    last = 0
    open = 0
    closed = 0
    failed = 0


S = Stats()
LAT: list[int] = []
LAT_TS: list[int] = []


class Conn:
    __slots__ = ("after", "buf", "head", "path", "pend", "sampled", "sock")


def consume(c, data: bytes) -> None:
    """Count markers in ``data``; on sampled connections record each latency."""
    if c.sampled:
        buf = c.pend + data
        t = now_us()
        end = k = 0
        for k, m in enumerate(MARK.finditer(buf), start=1):  # noqa: B007 - k counts the marks after the loop
            ts = int(m.group(1))
            LAT.append(t - ts)
            LAT_TS.append(ts)
            end = m.end()
        c.pend = buf[max(end, len(buf) - 17) :]
    else:
        if c.pend:
            data = c.pend + data
        k = data.count(b"@T")
        c.pend = b"@" if data[-1:] == b"@" else b""
    if k:
        S.count += k
        S.last = now_us()


def out(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def stream_request(a, path: bytes) -> bytes:
    host = b"127.0.0.1:%d" % a.port
    if a.kind == "ws":
        return (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, WS_KEY)
        )
    if a.kind == "sse":
        return b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n" % (path, host)
    return b""


def poll_request(a, c) -> bytes:
    """The next long-poll request of connection ``c`` with its cursor."""
    host = b"127.0.0.1:%d" % a.port
    if a.flavor == "herald":
        sep = b"&" if b"?" in c.path else b"?"
        target = c.path + sep + b"after=%d&wait=30" % c.after
    else:
        target = c.path + b"?since=%d" % c.after
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)


NEXT_AFTER = re.compile(rb'"next_after":(\d+)')


def on_poll_data(a, c, data: bytes) -> bytes | None:
    """Parse complete long-poll answers; return the next request to send, if any."""
    c.buf += data
    nxt = None
    while True:
        i = c.buf.find(b"\r\n\r\n")
        if i < 0:
            return nxt
        head = c.buf[:i].lower()
        j = head.find(b"content-length:")
        n = int(head[j + 15 : head.find(b"\r\n", j) if head.find(b"\r\n", j) > 0 else None]) if j >= 0 else 0
        if len(c.buf) < i + 4 + n:
            return nxt
        body = c.buf[i + 4 : i + 4 + n]
        c.buf = c.buf[i + 4 + n :]
        S.resp += 1
        if a.flavor == "herald":
            m = NEXT_AFTER.search(body)
            if m:
                c.after = int(m.group(1))
        else:
            k = head.find(b"x-seq:")
            if k >= 0:
                c.after = int(head[k + 6 : head.find(b"\r\n", k)])
        c.pend = b""
        if body:
            consume(c, body)
        nxt = poll_request(a, c)


def run(a) -> None:
    """One bare epoll loop: connect N subscribers, then read and count until ``quit``."""
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    ok = b" 101" if a.kind == "ws" else b" 200"
    pending = 0
    path = a.path.encode()
    start_after = a.after if a.kind == "lp" and a.flavor == "herald" else -1 if a.kind == "lp" else 0

    def drop(fd: int, c: Conn) -> None:
        ep.unregister(fd)
        del conns[fd]
        c.sock.close()

    def on_readable(fd: int) -> None:
        nonlocal pending
        c = conns.get(fd)
        if c is None:
            return
        try:
            data = c.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            drop(fd, c)
            if c.head is None:
                S.closed += 1
            else:
                S.failed += 1
                pending -= 1
            return
        if a.kind == "lp":
            nxt = on_poll_data(a, c, data)
            if nxt:
                c.sock.send(nxt)
            return
        if c.head is not None:
            c.head += data
            i = c.head.find(b"\r\n\r\n")
            if i < 0:
                return
            line = c.head[: c.head.find(b"\r\n")]
            data = c.head[i + 4 :]
            c.head = None
            pending -= 1
            if ok not in line:
                S.failed += 1
                drop(fd, c)
                return
            S.open += 1
            if not data:
                return
        consume(c, data)

    t0 = time.monotonic()
    deadline = t0 + 90
    for i in range(a.n):
        idx = a.first + i
        while pending >= a.concurrency and time.monotonic() < deadline:
            for fd, _ in ep.poll(0.05):
                on_readable(fd)
        s = socket.socket()
        c = Conn()
        c.sock, c.pend, c.sampled, c.buf, c.after, c.path = s, b"", idx % a.stride == 0, b"", start_after, path
        try:
            s.connect(("127.0.0.1", a.port))
            if a.kind == "lp":
                s.sendall(poll_request(a, c))
            else:
                s.sendall(stream_request(a, path))
        except OSError:
            S.failed += 1
            s.close()
            continue
        s.setblocking(False)
        if a.kind == "lp":
            c.head = None  # a held poll: open as soon as it is sent
            S.open += 1
        else:
            c.head = b""
            pending += 1
        conns[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLIN)
    while pending > 0 and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.05):
            on_readable(fd)
    out({"ready": S.open, "failed": S.failed + max(pending, 0), "connect_s": round(time.monotonic() - t0, 2)})

    sin = sys.stdin.fileno()
    os.set_blocking(sin, False)
    ep.register(sin, select.EPOLLIN)
    inbuf = b""
    while True:
        for fd, _ in ep.poll(1.0):
            if fd != sin:
                on_readable(fd)
                continue
            chunk = os.read(sin, 4096)
            if not chunk:
                return
            inbuf += chunk
            while b"\n" in inbuf:
                line, inbuf = inbuf.split(b"\n", 1)
                cmd = line.strip()
                if cmd == b"snap":
                    t = os.times()
                    out(
                        {
                            "count": S.count,
                            "resp": S.resp,
                            "last": S.last,
                            "open": S.open,
                            "closed": S.closed,
                            "failed": S.failed,
                            "cpu": round(t.user + t.system, 3),
                        }
                    )
                elif cmd == b"lat":
                    out({"lat": LAT, "ts": LAT_TS})
                    LAT.clear()
                    LAT_TS.clear()
                else:
                    for c in conns.values():
                        c.sock.close()
                    return


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["ws", "sse", "lp"], required=True)
    p.add_argument("--flavor", choices=["herald", "plain"], default="herald")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--after", type=int, default=0, help="herald long-poll: the cursor to start from")
    p.add_argument("--concurrency", type=int, default=64)
    run(p.parse_args())


if __name__ == "__main__":
    main()
