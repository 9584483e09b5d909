"""A Herald process for the hostile-client tests (issue 11): ``python server.py`` on a
free 127.0.0.1 port with the options a test gives, its log, its memory (``VmRSS``) and
tokens signed with its secret. Attacks go through third-party clients (httpx,
websockets) and raw sockets, as an attacker's would."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from core.auth import ALL_SCOPES, Authenticator
from tests.services import HeraldProcess

SECRET = "hostile-test-secret-" + "0123456789abcdef" * 3
#: What a leaked token looks like in a log: the signature part of any JWT we minted.
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}")


@dataclass
class Server:
    """A running ``server.py`` and what a test needs to attack it."""

    process: HeraldProcess
    log_offset: int
    auth: Authenticator

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid

    def mint(self, sub: str, scopes: Any = ALL_SCOPES[:3], ttl: float = 600, **claims: Any) -> str:
        return self.auth.mint(sub, scopes, ttl=ttl, **claims)

    def rss_mb(self) -> float:
        """The process's resident memory, MiB (``VmRSS`` in /proc)."""
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        """What the process has logged since it started."""
        with open(self.process.log_path, "rb") as fh:
            fh.seek(self.log_offset)
            return fh.read().decode("utf-8", "replace")

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, **kw)

    def create(self, token: str, **body: Any) -> dict[str, Any]:
        with self.client(token) as http:
            answer = http.post("/api/executions", json={"kind": "chat", **body})
        assert answer.status_code == 201, answer.text
        return answer.json()

    def raw(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return sock


@contextmanager
def herald_process(*args: str) -> Iterator[Server]:
    """``server.py`` with ``args``; stopped (SIGTERM) afterwards."""
    process = HeraldProcess(*args, secret=SECRET)
    offset = os.path.getsize(process.log_path) if os.path.exists(process.log_path) else 0
    process.start()
    server = Server(process, offset, Authenticator(secret=SECRET))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server.py did not answer /healthz"
            time.sleep(0.05)
        yield server
    finally:
        process.stop()


def error_of(answer: httpx.Response) -> dict[str, Any]:
    """The contract's error body: ``{"error": {"code", "message", "details"}}``."""
    assert answer.headers["content-type"].startswith("application/json"), answer.text
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


def read_http_answer(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Bytes the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out
