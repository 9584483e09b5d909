"""The server process as an operator runs it: options from the environment, and a
graceful shutdown that tells every stream to resume elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from client import HeraldClient
from core.auth import Authenticator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "lifecycle-secret-of-at-least-32-bytes!"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env_extra: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, "HERALD_PORT": str(port), "HERALD_JWT_SECRET": SECRET, **env_extra}
    proc = subprocess.Popen(
        [sys.executable, "server.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def test_sigterm_closes_websocket_with_1001_and_ends_sse() -> None:
    proc, port = _start({"HERALD_HEARTBEAT": "5"})
    token = Authenticator(secret=SECRET).mint("alice")
    base = f"http://127.0.0.1:{port}"

    async def run() -> tuple[int | None, str | None, list[int], bool]:
        client = HeraldClient(base, token)
        ex = await client.create("chat")
        await client.publish(ex["id"], "token", {"text": "a"})
        ws = await websocket_connect(
            HTTPRequest(
                f"ws://127.0.0.1:{port}/api/executions/{ex['id']}/events", headers={"Authorization": f"Bearer {token}"}
            ),
            subprotocols=["herald.v1"],
        )
        seen = []
        while len(seen) < 2:  # ready, then seq 1 (status), seq 2 (token)
            msg = await ws.read_message()
            if msg is not None and '"seq"' in msg:
                seen.append(msg)

        async def sse() -> bool:
            def chunk(_: bytes) -> None:
                pass

            await client.http.fetch(
                HTTPRequest(
                    f"{base}/api/executions/{ex['id']}/events",
                    headers={**client.headers(), "Accept": "text/event-stream"},
                    streaming_callback=chunk,
                    request_timeout=30,
                ),
                raise_error=False,
            )
            return True

        reading = asyncio.ensure_future(sse())
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        while await ws.read_message() is not None:
            pass
        ended = await asyncio.wait_for(reading, 5)
        return ws.close_code, ws.close_reason, [len(seen)], ended

    try:
        code, reason, _, sse_ended = asyncio.run(run())
        assert code == 1001 and reason.startswith("server_shutdown")  # then the retry hint
        assert sse_ended
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
