"""Browser test fixtures: Debian's Chromium driven by Playwright (never a downloaded
browser), a ``python server.py`` subprocess with a 1-second heartbeat, and Debian's
nginx started from a config in tests/nginx/ with its own prefix in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from core.auth import Authenticator
from tests.services import HeraldProcess, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NGINX_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nginx")
SCOPES = ("executions:read", "executions:write", "events:publish")


class BrowserHerald:
    """A running ``server.py`` and plain-HTTP helpers to drive it from the test."""

    def __init__(self, process: HeraldProcess) -> None:
        self.process = process
        self.auth = Authenticator(secret=process.secret)

    @property
    def url(self) -> str:
        return self.process.base_url

    def mint(self, sub: str = "alice", ttl: float = 600) -> str:
        return self.auth.mint(sub, SCOPES, ttl=ttl)

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", "Bearer " + (token or self.mint()))
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def create(self, kind: str = "chat", token: str | None = None) -> str:
        return self.api("POST", "/api/executions", {"kind": kind}, token)["id"]

    def publish(self, execution_id: str, items: list[dict[str, Any]], token: str | None = None) -> list[int]:
        return self.api("POST", f"/api/executions/{execution_id}/events", items, token)["seq"]


@pytest.fixture(scope="module")  # sync Playwright holds a running event loop: end it with the module
def chromium() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (scripts/test-services.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:
    """A browser context of its own: its pages are tabs of one browser profile (they
    share Web Locks and BroadcastChannel), apart from other tests' pages."""
    context = chromium.new_context()
    try:
        yield context
    finally:
        context.close()


def start_herald(*args: str, port: int | None = None) -> BrowserHerald:
    process = HeraldProcess("--heartbeat", "1", "--longpoll-wait", "5", *args, port=port)
    process.start()
    return BrowserHerald(process)


@pytest.fixture(scope="session")
def browser_herald() -> Iterator[BrowserHerald]:
    """One server for the browser tests that do not restart it."""
    herald = start_herald()
    try:
        yield herald
    finally:
        herald.process.stop()


@pytest.fixture(scope="module")
def sse_only_herald() -> Iterator[BrowserHerald]:
    """A server offering SSE only (``--transports sse``), for one test module."""
    herald = start_herald("--transports", "sse")
    try:
        yield herald
    finally:
        herald.process.stop()


class Nginx:
    """Debian's nginx in the foreground, with a config from tests/nginx/."""

    def __init__(self, config: str, upstream: int) -> None:
        self.prefix = tempfile.mkdtemp(prefix="herald-nginx-")
        self.port = free_port()
        with open(os.path.join(NGINX_CONFIGS, config)) as fh:
            text = fh.read()
        text = text.replace("PREFIX", self.prefix).replace("LISTEN", str(self.port))
        text = text.replace("UPSTREAM", str(upstream))
        self.config = os.path.join(self.prefix, "nginx.conf")
        with open(self.config, "w") as fh:
            fh.write(text)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [binary, "-p", self.prefix, "-c", self.config, "-e", os.path.join(self.prefix, "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(os.path.join(self.prefix, "error.log")) as log:
                    raise RuntimeError("nginx exited: " + log.read())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        shutil.rmtree(self.prefix, ignore_errors=True)


@pytest.fixture
def nginx_proxy() -> Iterator[Callable[[str, int], Nginx]]:
    """``nginx_proxy("buffering.conf", upstream_port)``: a started proxy, stopped after."""
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.skip("Debian's nginx is not installed (scripts/test-services.sh installs it)")
    started: list[Nginx] = []

    def start(config: str, upstream: int) -> Nginx:
        proxy = Nginx(config, upstream)
        started.append(proxy)
        proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
