"""Herald from a page on another origin, in Debian's Chromium: docs/browser.md's
snippets, taken from the doc as written, served by a second HTTP server on another
127.0.0.1 port (another origin) and run against a ``server.py`` process started with
``--allowed-origins`` naming it. ``herald.js`` is imported from Herald and follows a
stream with every transport offered, with ``--transports sse`` and with ``--transports
longpoll``; plain ``fetch`` long-polling works the same way; a page from an origin that
is not allowed reads nothing. (The plain ``EventSource`` snippet, with its reconnects
across a restart, is in tests/test_browser_eventsource.py.)"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald, start_herald
from tests.test_browser import tokens

pytestmark = pytest.mark.browser

DOC = Path(__file__).resolve().parent.parent / "docs" / "browser.md"
FENCE = re.compile(r"^```html\n(<!-- (\S+\.html):.*?)^```\s*$", re.S | re.M)
CONSTANT = 'const {name} = "[^"]*";'


def doc_snippets() -> dict[str, str]:
    """docs/browser.md's pages by name (each fenced html block opens ``<!-- NAME.html: ``)."""
    return {name: text for text, name in FENCE.findall(DOC.read_text())}


def snippet(name: str, herald: str, execution: str, token: str) -> str:
    """The doc's page ``name`` with its three constants set, and nothing else changed."""
    text = doc_snippets()[name]
    for constant, value in (("HERALD", herald), ("EXECUTION", execution), ("TOKEN", token)):
        text, count = re.subn(CONSTANT.format(name=constant), f'const {constant} = "{value}";', text)
        assert count == 1, f"{name} sets {constant} once at its top"
    return text


class PageServer:
    """Another origin: a plain HTTP server on its own 127.0.0.1 port serving pages
    from memory (``pages[path] = html``) and nothing else."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/favicon.ico":  # asked by every page; a 404 would be a console error
                    self.send_response(204)
                    self.end_headers()
                    return
                body = pages.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write((body or "not found").encode())

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, path: str, html: str) -> str:
        self.pages[path] = html
        return self.origin + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app_origin() -> Iterator[PageServer]:
    """The page's origin, which Herald allows."""
    server = PageServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def stranger_origin() -> Iterator[PageServer]:
    """An origin Herald does not allow."""
    server = PageServer()
    try:
        yield server
    finally:
        server.close()


def listed_events(page: Any) -> list[str]:
    return page.eval_on_selector_all("#events li", "items => items.map(i => i.textContent)")


def state(page: Any) -> str:
    return page.text_content("#state") or ""


def expected(last_seq: int) -> list[str]:
    """Seq 1 is the server's ``status`` event, then tokens, and ``complete`` last."""
    return ["1 status", *(f"{seq} token" for seq in range(2, last_seq)), f"{last_seq} complete"]


def follow_to_the_end(page: Any, herald: BrowserHerald, url: str, ex: str, ended: str) -> list[str]:
    """Open ``url``, publish while it follows, and return what the page listed."""
    page.goto(url)
    page.wait_for_function("document.querySelectorAll('#events li').length >= 3", timeout=15_000)
    herald.publish(ex, tokens(3))
    [last] = herald.publish(ex, [{"event": "complete", "data": {"result": "ok"}}])
    page.wait_for_function(f"document.querySelectorAll('#events li').length >= {last}", timeout=15_000)
    page.wait_for_function(f"document.getElementById('state').textContent.startsWith('{ended}')", timeout=15_000)
    got = listed_events(page)
    assert got == expected(last), "every event once, in order"
    return got


TRANSPORT_OPTIONS = {
    "all offered": ((), "websocket"),
    "--transports sse": (("--transports", "sse"), "sse"),
    "--transports longpoll": (("--transports", "longpoll"), "longpoll"),
}


@pytest.mark.parametrize("offered", list(TRANSPORT_OPTIONS))
def test_herald_js_imported_from_another_origin(page, app_origin: PageServer, offered: str):
    args, transport = TRANSPORT_OPTIONS[offered]
    herald = start_herald("--allowed-origins", app_origin.origin, *args)
    try:
        ex = herald.create()
        herald.publish(ex, tokens(2))
        url = app_origin.serve("/follow.html", snippet("follow.html", herald.url, ex, herald.mint()))
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        follow_to_the_end(page, herald, url, ex, "done")
        assert page.evaluate("location.origin") == app_origin.origin != herald.url
        assert not console_errors, f"no CORS or other error in the console: {console_errors}"
        # The last state names the transport that delivered.
        page.wait_for_function("document.getElementById('state').textContent.startsWith('done')")
        assert state(page) == f"done {transport}"
    finally:
        herald.process.stop()


def test_plain_fetch_long_polling_from_another_origin(page, app_origin: PageServer):
    herald = start_herald("--allowed-origins", app_origin.origin)
    try:
        ex = herald.create()
        herald.publish(ex, tokens(2))
        url = app_origin.serve("/longpoll.html", snippet("longpoll.html", herald.url, ex, herald.mint()))
        follow_to_the_end(page, herald, url, ex, "ended")
    finally:
        herald.process.stop()


def test_a_page_from_an_origin_not_allowed_reads_nothing(page, app_origin: PageServer, stranger_origin):
    herald = start_herald("--allowed-origins", app_origin.origin)
    try:
        ex = herald.create()
        herald.publish(ex, [*tokens(2), {"event": "complete", "data": {"result": "ok"}}])
        token = herald.mint()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        for name in ("follow.html", "eventsource.html", "longpoll.html"):
            errors.clear()
            page.goto(stranger_origin.serve("/" + name, snippet(name, herald.url, ex, token)))
            page.wait_for_function("() => true")
            page.wait_for_timeout(2500)  # long enough for any of them to list an event
            assert listed_events(page) == [], name
            assert any("Access-Control-Allow-Origin" in e for e in errors), (name, errors)
    finally:
        herald.process.stop()


def test_herald_js_behind_a_proxy_under_a_path(page, nginx_proxy):
    """The app's page and Herald on one origin, Herald under ``/herald/``
    (tests/nginx/path-prefix.conf): ``herald.js`` finds the prefix by itself."""
    herald = start_herald()
    try:
        proxy = nginx_proxy("path-prefix.conf", herald.process.port)
        ex = herald.create()
        herald.publish(ex, tokens(2))
        www = Path(proxy.prefix) / "www"
        www.mkdir()
        (www / "follow.html").write_text(snippet("follow.html", proxy.url + "/herald", ex, herald.mint()))
        follow_to_the_end(page, herald, proxy.url + "/follow.html", ex, "done")
        assert state(page) == "done websocket"
    finally:
        herald.process.stop()
