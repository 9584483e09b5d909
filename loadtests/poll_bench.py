"""Server CPU per long-poll answer, Herald against plain Tornado, without fan-out dynamics.

``python loadtests/poll_bench.py [--connections 50] [--seconds 8] [--servers herald,plain]``

Each of C keep-alive connections polls an event that is already stored (Herald:
``?after=<last-1>&wait=30``, plain Tornado: ``/lp?since=<last-1>``), so every request is
answered at once with one event, and sends the next poll as soon as the answer is read.
That isolates what one long-poll request costs the server (routing, authentication, the
document and log reads, the page), which ``bench.py``'s flat-out long-poll figure mixes
with how many events each answer happens to carry. Server pinned to CPU 0, this client
to CPU 1; server CPU from ``/proc/PID/stat``.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench import cpu_split, pinned, wait_port  # noqa: E402
from herald_peer import BENCH_TOKEN, STREAM_PATH  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_loop(socks: dict, request: bytes, seconds: float) -> int:
    """Keep every connection polling for ``seconds``; the number of answers read."""
    ep = select.epoll()
    for fd in socks:
        ep.register(fd, select.EPOLLIN)
    for sock, _ in socks.values():
        sock.send(request)
    answers, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for fd, _ in ep.poll(0.1):
            entry = socks[fd]
            entry[1] += entry[0].recv(65536)
            while True:
                head_end = entry[1].find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = entry[1][:head_end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15 :].split(b"\r\n")[0])
                if len(entry[1]) < head_end + 4 + length:
                    break
                entry[1] = entry[1][head_end + 4 + length :]
                answers += 1
                entry[0].send(request)
    ep.close()
    return answers


def measure(server: str, connections: int, seconds: float) -> dict:
    port = free_port()
    script = "herald_peer.py" if server == "herald" else "plain_tornado.py"
    proc = subprocess.Popen(pinned("0", [sys.executable, os.path.join(HERE, script), str(port)]))
    try:
        wait_port(port)
        body = b"@T0000000000000000#1|" + b"x" * 180
        for _ in range(3):
            pub = urllib.request.Request(f"http://127.0.0.1:{port}/pub", data=body)
            last = int(urllib.request.urlopen(pub).read())
        if server == "herald":
            target = f"{STREAM_PATH}?access_token={BENCH_TOKEN}&after={last - 1}&wait=30"
        else:
            target = f"/lp?since={last - 1}"
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        socks = {}
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            socks[sock.fileno()] = [sock, b""]
        poll_loop(socks, request, 1.5)  # warm-up
        time.sleep(0.5)
        for entry in socks.values():
            entry[1] = b""
        cpu0 = sum(cpu_split(proc.pid))
        answers = poll_loop(socks, request, seconds)
        cpu = sum(cpu_split(proc.pid)) - cpu0
        for sock, _ in socks.values():
            sock.close()
        return {"server": server, "answers": answers, "per_s": answers / seconds, "us": 1e6 * cpu / max(answers, 1)}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--servers", default="herald,plain")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    print("| server | answers | answers/s | server CPU µs per answer |\n|---|---|---|---|")
    for server in args.servers.split(","):
        r = measure(server, args.connections, args.seconds)
        print(f"| {r['server']} | {r['answers']:,} | {r['per_s']:,.0f} | {r['us']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
