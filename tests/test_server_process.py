"""``python server.py`` as a real process: options, ``HERALD_*`` environment, and the
development token it prints when no key is configured (PROTOCOL.md section 7)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import jwt
import pytest

from server import parse_settings
from tests.fixtures_server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "process-test-secret-" + "x" * 44


@contextmanager
def server_process(args: list[str], env: dict[str, str] | None = None):
    """Run server.py; yield (process, lines printed so far); stop it with SIGTERM."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    environ.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def call(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until_serving(proc: subprocess.Popen, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
        try:
            if call(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


def token(sub: str = "alice", secret: str = SECRET) -> str:
    claims = {"sub": sub, "exp": int(time.time()) + 300, "scope": "executions:read executions:write events:publish"}
    return jwt.encode(claims, secret, algorithm="HS256")


def exercise(port: int, tok: str) -> None:
    """Create, publish, read back through the API with ``tok``."""
    base = f"http://127.0.0.1:{port}"
    status, created = call(f"{base}/api/executions", tok, {"kind": "chat"})
    assert status == 201, created
    events = f"{base}/api/executions/{created['id']}/events"
    status, answer = call(events, tok, {"event": "token", "data": {"text": "hi"}})
    assert status == 202 and answer == {"seq": [2]}
    status, page = call(events, tok)
    assert [e["event"] for e in page["events"]] == ["status", "token"]


def test_options_on_the_command_line():
    port = free_port()
    with server_process(
        ["--port", str(port), "--jwt-secret", SECRET, "--heartbeat", "2", "--transports", "sse,longpoll"]
    ) as p:
        wait_until_serving(p, port)
        exercise(port, token())
        assert call(f"http://127.0.0.1:{port}/api/executions", token(secret="not-the-secret-" + "y" * 40))[0] == 401
        _status, negotiate = call(f"http://127.0.0.1:{port}/api/negotiate")
        assert negotiate["transports"] == ["sse", "longpoll"] and negotiate["heartbeat"] == 2


def test_options_from_the_environment():
    port = free_port()
    with server_process([], {"HERALD_PORT": str(port), "HERALD_JWT_SECRET": SECRET, "HERALD_HEARTBEAT": "3"}) as p:
        wait_until_serving(p, port)
        exercise(port, token())
        assert call(f"http://127.0.0.1:{port}/api/negotiate")[1]["heartbeat"] == 3


def test_without_a_secret_it_prints_a_dashboard_url_with_a_working_token():
    port = free_port()
    with server_process(["--port", str(port)]) as p:
        assert p.stdout is not None
        deadline = time.monotonic() + 15
        url = None
        while url is None and time.monotonic() < deadline:
            line = p.stdout.readline()
            assert line, "server exited before printing the dashboard URL"
            found = re.search(r"(http://127\.0\.0\.1:\d+/#token=(\S+))", line)
            if found:
                url, dev_token = found.group(1), found.group(2)
        assert url is not None and url.startswith(f"http://127.0.0.1:{port}/")
        wait_until_serving(p, port)
        exercise(port, dev_token)
        # The page itself is served.
        with urllib.request.urlopen(url.split("#")[0], timeout=5) as page:
            assert page.status == 200 and "text/html" in page.headers["Content-Type"]


def test_parse_settings_command_line_over_environment_over_defaults():
    defaults = parse_settings([], {})
    assert (defaults.host, defaults.port, defaults.heartbeat) == ("127.0.0.1", 8080, 15.0)
    assert defaults.transports == ("websocket", "sse", "longpoll") and defaults.dev
    env = {"HERALD_PORT": "9001", "HERALD_JWT_SECRET": "s3cret", "HERALD_TRANSPORTS": "longpoll"}
    settings = parse_settings(["--port", "9002"], env)
    assert settings.port == 9002 and settings.transports == ("longpoll",) and not settings.dev
    assert settings.jwt_secret is not None and settings.jwt_secret.value == "s3cret"
    assert "s3cret" not in repr(settings)
    with pytest.raises(SystemExit):
        parse_settings(["--transports", "carrier-pigeon"], {})
