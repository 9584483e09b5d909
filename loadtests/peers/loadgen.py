#!/usr/bin/env python3
"""Load-client worker: holds K subscriber connections of one kind and counts what arrives.

Every benchmark message is b'@T<16-digit CLOCK_MONOTONIC microseconds>#<seq>|xxx...'.
The worker does not parse frames: it counts the marker b'@T' in each connection's byte
stream (bytes.count, in C), so it costs the same whatever framing a peer uses (WebSocket,
SSE, SockJS 'a[...]', Socket.IO '42[...]'). On every STRIDE-th connection it also parses
the timestamp and records publish->receive latency. Long-poll connections run a request
loop on one keep-alive HTTP/1.1 connection.

Usage (started by harness.py, one process per share of the connections):
  loadgen.py --kind ws|sse|lp --flavor plain|nchan|sockjs|sio|pushpin --port P --path /ws
             --n K [--first I --stride S] [--concurrency 64]
stdin commands, one per line; each answers one JSON line on stdout:
  snap -> {"count", "resp", "last", "open", "closed", "failed", "cpu"}
  lat  -> {"lat": [microseconds...], "ts": [publish time of each]}  (and clears them)
  quit -> exits
"""
import argparse, asyncio, json, os, re, sys, time

try:
    import uvloop
except ImportError:  # works without, just slower
    uvloop = None

PAT = re.compile(rb"@T(\d{16})")
now_us = lambda: time.monotonic_ns() // 1000
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def ws_frame(text: bytes) -> bytes:
    """Client->server text frame, masked with key 0 (payload unchanged), payload < 126."""
    return bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text


class Stats:
    count = 0      # messages (markers) received
    resp = 0       # long-poll responses received
    last = 0       # time (us) of the last chunk that carried a marker
    open = 0
    closed = 0
    failed = 0
    errors = 0     # long-poll 5xx answers


S = Stats()
LAT = []            # latencies (us) on sampled connections ...
LAT_TS = []         # ... and the publish times they belong to
CONNS = []          # long-poll transports (they reconnect), closed on quit
QUITTING = False


def consume(conn, data):
    """Count markers in data; on sampled connections record latencies."""
    if conn.sampled:
        buf = conn.pend + data
        t = now_us()
        end = 0
        k = 0
        for m in PAT.finditer(buf):
            ts = int(m.group(1))
            LAT.append(t - ts)
            LAT_TS.append(ts)
            end = m.end()
            k += 1
        conn.pend = buf[max(end, len(buf) - 17):]
        if k:
            S.count += k
            S.last = t
    else:
        if conn.pend:
            data = conn.pend + data
        k = data.count(b"@T")
        conn.pend = b"@" if data[-1:] == b"@" else b""
        if k:
            S.count += k
            S.last = now_us()


class StreamConn(asyncio.Protocol):
    """WebSocket or SSE subscriber: send one request, then count markers forever."""

    def __init__(self, request, after_open, sampled, ok_status, ready):
        self.request, self.after_open, self.sampled = request, after_open, sampled
        self.ok_status, self.ready = ok_status, ready
        self.head = b""
        self.pend = b""
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr
        tr.write(self.request)

    def data_received(self, data):
        if self.head is not None:
            self.head += data
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            line = self.head[: self.head.find(b"\r\n")]
            data = self.head[i + 4:]
            self.head = None
            if self.ok_status not in line:
                S.failed += 1
                self.ready.set_result(False) if not self.ready.done() else None
                self.tr.close()
                return
            S.open += 1
            if self.after_open:
                self.tr.write(self.after_open)
            if not self.ready.done():
                self.ready.set_result(True)
            if not data:
                return
        consume(self, data)
        if self.after_open and b"\x81\x012" in data:  # Socket.IO ping -> pong
            self.tr.write(ws_frame(b"3"))

    def connection_lost(self, exc):
        if self.head is None:
            S.closed += 1
        if not self.ready.done():
            S.failed += 1
            self.ready.set_result(False)


class PollConn(asyncio.Protocol):
    """Long-poll subscriber: sequential requests on one keep-alive connection."""

    def __init__(self, flavor, host, path, sampled, ready, port):
        self.port = port
        self.flavor, self.host, self.path, self.sampled, self.ready = flavor, host, path, sampled, ready
        self.buf = b""
        self.pend = b""
        self.state = 0      # flavor-specific handshake step
        self.cursor = None  # plain: X-Seq; nchan: (Last-Modified, Etag); sio: sid
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr
        CONNS.append(tr)
        self.send_next()
        if self.ready.done():
            return
        if self.flavor in ("plain", "nchan", "pushpin"):  # the first poll is held until a publish
            S.open += 1
            self.ready.set_result(True)

    def req(self, method, path, extra=b"", body=b""):
        self.tr.write(b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n%s"
                      % (method, path, self.host, extra, len(body), body))

    def send_next(self):
        f = self.flavor
        if f == "plain":
            self.req(b"GET", self.path + b"?since=%d" % (self.cursor if self.cursor is not None else -1))
        elif f == "nchan":
            extra = b""
            if self.cursor:
                extra = b"If-Modified-Since: %s\r\nIf-None-Match: %s\r\n" % self.cursor
            self.req(b"GET", self.path, extra)
        elif f == "herald":  # the document's last_seq first, then ?after=N&wait=30 from there
            if self.cursor is None:
                self.req(b"GET", self.path.replace(b"/events?", b"?"))
            else:
                self.req(b"GET", self.path + b"&after=%d&wait=30" % self.cursor)
        elif f == "sockjs":
            self.req(b"POST", self.path)
        elif f == "herald":
            key = b'"last_seq":' if self.cursor is None else b'"next_after":'
            j = body.find(key)
            if j >= 0:
                k = j + len(key)
                while body[k:k + 1] == b" ":
                    k += 1
                e = k
                while body[e:e + 1].isdigit():
                    e += 1
                self.cursor = int(body[k:e])
            if self.state == 0:
                self.state = 1
                body = b""  # the document, not events
        elif f == "sio":
            if self.state == 0:
                self.req(b"GET", self.path + b"&t=0")
            elif self.state == 1:
                self.req(b"POST", self.path + b"&sid=" + self.cursor, body=b"40")
            else:
                self.req(b"GET", self.path + b"&sid=" + self.cursor)
        else:  # pushpin: the origin holds every poll on the channel
            self.req(b"GET", self.path)

    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].split(b"\r\n")
            hdr = {}
            for h in head[1:]:
                k, _, v = h.partition(b":")
                hdr[k.strip().lower()] = v.strip()
            rest = self.buf[i + 4:]
            if hdr.get(b"transfer-encoding", b"").lower() == b"chunked":
                body, used = b"", 0
                while True:
                    j = rest.find(b"\r\n", used)
                    if j < 0:
                        return
                    size = int(rest[used:j].split(b";")[0], 16)
                    if len(rest) < j + 2 + size + 2:
                        return
                    body += rest[j + 2:j + 2 + size]
                    used = j + 2 + size + 2
                    if size == 0:
                        break
                self.buf = rest[used:]
            else:
                n = int(hdr.get(b"content-length", b"0"))
                if len(rest) < n:
                    return
                body, self.buf = rest[:n], rest[n:]
            self.on_response(head[0], hdr, body)

    def on_response(self, status, hdr, body):
        ok = b" 200" in status or b" 304" in status or b" 204" in status
        if not self.ready.done():
            if not ok and self.flavor != "nchan":
                S.failed += 1
                self.ready.set_result(False)
                self.tr.close()
                return
        S.resp += 1
        f = self.flavor
        if f == "plain":
            if b"x-seq" in hdr:
                self.cursor = int(hdr[b"x-seq"])
        elif f == "nchan":
            if b"last-modified" in hdr:
                self.cursor = (hdr[b"last-modified"], hdr.get(b"etag", b"0"))
        elif f == "herald":
            key = b'"last_seq":' if self.cursor is None else b'"next_after":'
            j = body.find(key)
            if j >= 0:
                k = j + len(key)
                while body[k:k + 1] == b" ":
                    k += 1
                e = k
                while body[e:e + 1].isdigit():
                    e += 1
                self.cursor = int(body[k:e])
            if self.state == 0:
                self.state = 1
                body = b""  # the document, not events
        elif f == "sio":
            if self.state == 0:
                self.cursor = json.loads(body[1:])["sid"].encode()
                self.state = 1
            elif self.state == 1:
                self.state = 2
            elif b"\x1e2" in b"\x1e" + body:  # ping -> pong (servers here ping every 600 s)
                pass
        self.pend = b""
        if body:
            consume(self, body)
        if not self.ready.done() and (f not in ("sio", "herald") or self.state >= 1) and (f != "sio" or self.state == 2):
            S.open += 1
            self.ready.set_result(True)
        if hdr.get(b"connection", b"").lower() == b"close" or status.startswith(b"HTTP/1.0"):
            self.tr.close()  # connection_lost() reconnects and polls again
            return
        if b" 5" in status[8:11]:  # server error: back off a little, as a real client would
            S.errors += 1
            asyncio.get_running_loop().call_later(0.1, self.send_next)
        else:
            self.send_next()

    def connection_lost(self, exc):
        S.closed += 1
        if not self.ready.done():
            S.failed += 1
            self.ready.set_result(False)
        elif not QUITTING:  # the server closed after a response (pushpin does): poll again
            asyncio.ensure_future(self.reconnect())

    async def reconnect(self):
        self.buf = b""
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", self.port)
        except OSError:
            S.failed += 1


def make_conn(a, idx):
    host = b"127.0.0.1:%d" % a.port
    sampled = (idx % a.stride) == 0
    path = a.path.encode()
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    if a.kind == "lp":
        if a.flavor == "sockjs":
            path = path + b"/000/%d-%d/xhr" % (os.getpid(), idx)
        return lambda: PollConn(a.flavor, host, path, sampled, ready, a.port), ready
    after_open = b""
    if a.flavor == "sockjs":
        path = path + b"/000/%d-%d/%s" % (os.getpid(), idx, b"websocket" if a.kind == "ws" else b"eventsource")
    if a.kind == "ws":
        if a.flavor == "sio":
            after_open = ws_frame(b"40")
        req = (b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n"
               % (path, host, WS_KEY))
        ok = b" 101"
    else:
        req = (b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
               % (path, host))
        ok = b" 200"
    return lambda: StreamConn(req, after_open, sampled, ok, ready), ready


async def main(a):
    loop = asyncio.get_running_loop()
    conns = []
    sem = asyncio.Semaphore(a.concurrency)

    async def one(idx):
        async with sem:
            factory, ready = make_conn(a, idx)
            try:
                tr, _ = await loop.create_connection(factory, "127.0.0.1", a.port)
                conns.append(tr)
                await asyncio.wait_for(ready, 20)
            except (OSError, asyncio.TimeoutError):
                S.failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(a.first + i) for i in range(a.n)))
    out({"ready": S.open, "failed": S.failed, "connect_s": round(time.monotonic() - t0, 2)})

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).strip()
        if line == b"snap":
            c = os.times()
            out({"count": S.count, "resp": S.resp, "last": S.last, "open": S.open, "closed": S.closed,
                 "failed": S.failed, "errors": S.errors, "cpu": round(c.user + c.system, 3)})
        elif line == b"lat":
            out({"lat": LAT, "ts": LAT_TS})
            LAT.clear()
            LAT_TS.clear()
        else:  # quit or EOF
            global QUITTING
            QUITTING = True
            for tr in conns + CONNS:
                tr.abort()
            return


def run_epoll(a):
    """Same as main() for ws/sse, on a bare epoll loop: one recv and one bytes.count per
    readable socket, no asyncio transport machinery (cheaper per message)."""
    import select, socket
    ep = select.epoll()
    conns = {}
    loop_ready = None

    class C:
        __slots__ = ("sock", "head", "pend", "sampled", "after_open")

    def handshake_request(idx):
        host = b"127.0.0.1:%d" % a.port
        path = a.path.encode()
        if a.flavor == "sockjs":
            path += b"/000/%d-%d/%s" % (os.getpid(), idx, b"websocket" if a.kind == "ws" else b"eventsource")
        if a.kind == "ws":
            return (b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n\r\n"
                    % (path, host, WS_KEY))
        return (b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
                % (path, host))

    ok = b" 101" if a.kind == "ws" else b" 200"
    after_open = ws_frame(b"40") if (a.kind == "ws" and a.flavor == "sio") else b""
    pending = [0]

    def on_readable(fd):
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
            ep.unregister(fd)
            del conns[fd]
            c.sock.close()
            if c.head is None:
                S.closed += 1
            else:
                S.failed += 1
                pending[0] -= 1
            return
        if c.head is not None:
            c.head += data
            i = c.head.find(b"\r\n\r\n")
            if i < 0:
                return
            line = c.head[: c.head.find(b"\r\n")]
            data = c.head[i + 4:]
            c.head = None
            pending[0] -= 1
            if ok not in line:
                S.failed += 1
                ep.unregister(fd)
                del conns[fd]
                c.sock.close()
                return
            S.open += 1
            if c.after_open:
                c.sock.send(c.after_open)
            if not data:
                return
        consume(c, data)
        if c.after_open and b"\x81\x012" in data:
            c.sock.send(ws_frame(b"3"))

    t0 = time.monotonic()
    deadline = t0 + 60
    for i in range(a.n):
        idx = a.first + i
        while pending[0] >= a.concurrency and time.monotonic() < deadline:
            for fd, ev in ep.poll(0.05):
                on_readable(fd)
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", a.port))
            s.sendall(handshake_request(idx))
        except OSError:
            S.failed += 1
            s.close()
            continue
        s.setblocking(False)
        c = C()
        c.sock, c.head, c.pend, c.sampled, c.after_open = s, b"", b"", (idx % a.stride) == 0, after_open
        conns[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLIN)
        pending[0] += 1
    while pending[0] > 0 and time.monotonic() < deadline:
        for fd, ev in ep.poll(0.05):
            on_readable(fd)
    out({"ready": S.open, "failed": S.failed + max(pending[0], 0), "connect_s": round(time.monotonic() - t0, 2)})

    stdin = sys.stdin.buffer.raw
    os.set_blocking(stdin.fileno(), False)
    ep.register(stdin.fileno(), select.EPOLLIN)
    sin = stdin.fileno()
    inbuf = b""
    poll = ep.poll
    nap = a.coalesce_ms / 1000
    while True:
        evs = poll(1.0)
        if nap and len(evs) > 1:
            time.sleep(nap)  # let more messages queue per socket: fewer recv calls per message
        for fd, ev in evs:
            if fd != sin:
                on_readable(fd)
                continue
            chunk = os.read(sin, 4096)
            if not chunk:
                return
            inbuf += chunk
            while b"\n" in inbuf:
                line, inbuf = inbuf.split(b"\n", 1)
                line = line.strip()
                if line == b"snap":
                    t = os.times()
                    out({"count": S.count, "resp": S.resp, "last": S.last, "open": S.open, "closed": S.closed,
                         "failed": S.failed, "cpu": round(t.user + t.system, 3)})
                elif line == b"lat":
                    out({"lat": LAT, "ts": LAT_TS})
                    LAT.clear()
                    LAT_TS.clear()
                else:
                    for c in conns.values():
                        c.sock.close()
                    return


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=["ws", "sse", "lp"], required=True)
    p.add_argument("--flavor", default="plain")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/ws")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--coalesce-ms", type=float, default=0.0,
                   help="epoll engine: sleep this long after a busy poll so reads batch messages")
    p.add_argument("--engine", choices=["asyncio", "epoll"], default="epoll",
                   help="epoll: bare epoll loop for ws/sse (default); long-poll always uses asyncio")
    a = p.parse_args()
    if a.engine == "epoll" and a.kind != "lp":
        sys.exit(run_epoll(a))
    if uvloop:
        uvloop.install()
    asyncio.run(main(a))
