"""The browser client resuming after a pause, in Debian's Chromium against a real
``server.py`` per transport: the network cut (every open connection goes silent, as in a
real outage) while events are published, then back, or a page hidden while its
connection died; every event arrives exactly once and in order, resumption follows the
`online` / `visibilitychange` / `pageshow` trigger within about a second, and `lost` is
reported `lostAfter` ms after the network went away.

The server runs with a 10 s heartbeat, so the client's heartbeat watchdog (2.5
heartbeats) and the long-poll's own timeout (wait + connectTimeout = 10 s) cannot be
what resumes the stream within the bounds asserted here; backoff is 20-30 s for the
same reason. Bounds are loose: the machine is a loaded 2-core VM."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald, start_herald
from tests.test_browser import tokens

pytestmark = pytest.mark.browser

TRANSPORTS = ["websocket", "sse", "longpoll"]
LOST_AFTER = 2000  # ms, the client's `lostAfter` in these tests
RESUME_WITHIN = 2500  # ms from the trigger to the last missed event on the page

# Like tests/test_browser.py's FOLLOW, with page-clock timestamps (performance.now) on
# every state, event and trigger, and a way to fake visibility (headless Chromium never
# hides a page: neither another tab in front nor a minimised window changes it).
FOLLOW = """async ({id, token, options}) => {
  const { Herald } = await import('/static/herald.js');
  window.got = []; window.states = []; window.triggers = []; window.finished = null;
  for (const type of ['online', 'offline', 'pageshow'])
    addEventListener(type, () => window.triggers.push([type, performance.now()]));
  document.addEventListener('visibilitychange',
    () => window.triggers.push([document.visibilityState, performance.now()]));
  window.setVisibility = (v) => {
    Object.defineProperty(document, 'visibilityState', {value: v, configurable: true});
    Object.defineProperty(document, 'hidden', {value: v === 'hidden', configurable: true});
    document.dispatchEvent(new Event('visibilitychange'));
  };
  window.handle = Herald.follow(id, { token, ...options,
    onEvent: (e) => window.got.push([e.seq, performance.now()]),
    onState: (s) => {
      window.states.push({...s, at: performance.now()});
      if (s.state === 'done' || s.state === 'failed') window.finished = s.state;
    },
  });
}"""

OPTIONS = {"lostAfter": LOST_AFTER, "backoffFirst": 20_000, "backoffCap": 30_000, "connectTimeout": 3000}


class Relay:
    """A TCP relay on 127.0.0.1 between the browser and the server that cuts the network
    the way an outage does. `cut()`: every established connection goes silent (bytes
    vanish both ways, no FIN, no RST) and new ones are accepted but never answered.
    `restore()`: new connections go through; a connection cut before is gone for good,
    as after a NAT or a server forgot it: silent until the browser sends on it, then
    reset (so Chromium retries a request sent on such a pooled connection on a new one).
    Chromium's offline emulation alone does not cut: it holds WebSocket frames and
    flushes them later, and lets a streaming fetch (SSE) keep flowing."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0  # a connection opened before the latest cut is dead
        self.down = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self.lock:
            self.cuts += 1
            self.down = True

    def restore(self) -> None:
        with self.lock:
            self.down = False

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                _close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self.lock:
            self.sockets.append(client)
            epoch, down = self.cuts, self.down
        if down:  # no route: accepted, and nothing ever answers
            while _recv(client):
                pass
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with self.lock:
            self.sockets.append(upstream)
        threading.Thread(target=self._downstream, args=(upstream, client, epoch), daemon=True).start()
        while data := _recv(client):
            if self.cuts == epoch:
                _send(upstream, data)
            elif not self.down:  # sent on a connection the network forgot: reset
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # linger 0: an RST, no FIN
                _close(upstream)
                return
        if self.cuts == epoch:
            _shutdown_write(upstream)

    def _downstream(self, upstream: socket.socket, client: socket.socket, epoch: int) -> None:
        while data := _recv(upstream):
            if self.cuts == epoch:
                _send(client, data)
        if self.cuts == epoch:
            _shutdown_write(client)


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def _send(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the other side is gone; its reader ends the pair
        s.sendall(data)


def _shutdown_write(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_WR)


def _close(s: socket.socket) -> None:
    """Closes and wakes a thread blocked in recv on it (close alone does not, on Linux)."""
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


@pytest.fixture(scope="module", params=TRANSPORTS)
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, BrowserHerald]]:
    """A server offering one transport only, so negotiation (not a forced option) picks it."""
    herald = start_herald("--transports", request.param, "--heartbeat", "10")
    try:
        yield request.param, herald
    finally:
        herald.process.stop()


@pytest.fixture
def relay(served: tuple[str, BrowserHerald]) -> Iterator[Relay]:
    relay = Relay(served[1].process.port)
    try:
        yield relay
    finally:
        relay.close()


def start_following(page: Any, relay: Relay, herald: BrowserHerald, transport: str, events: int) -> str:
    """An execution with `events` events (seq 1 is the server's status), followed through the relay."""
    ex = herald.create()
    herald.publish(ex, tokens(events - 1))
    page.goto(relay.url + "/healthz")
    page.evaluate(FOLLOW, {"id": ex, "token": herald.mint(), "options": OPTIONS})
    page.wait_for_function(f"window.got.length >= {events}", timeout=10_000)
    page.wait_for_function("window.states.some(s => s.state === 'open')", timeout=5000)
    assert page.evaluate("window.handle.transport") == transport
    # Let the connection settle: a long-poll's next (held) poll, sent right after the
    # first answer, must be on the wire before a cut, or it would go out after it.
    time.sleep(0.5)
    return ex


def set_offline(cdp: Any, offline: bool) -> None:
    """Chromium's network emulation: new requests fail at once and `navigator.onLine`
    and the `offline` / `online` events follow it."""
    conditions = {"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", conditions)


def trigger_time(page: Any, name: str) -> float:
    return page.evaluate(f"window.triggers.filter(t => t[0] === '{name}').at(-1)[1]")


def finish_and_check(page: Any, herald: BrowserHerald, ex: str) -> None:
    seqs = herald.publish(ex, [{"event": "complete", "data": {"result": "ok"}}])
    page.wait_for_function("window.finished !== null", timeout=10_000)
    assert page.evaluate("window.finished") == "done"
    got = [g[0] for g in page.evaluate("window.got")]
    assert got == list(range(1, seqs[0] + 1)), "every event exactly once, in order"


def test_network_cut_reports_lost_and_resumes_on_online(page, served, relay):
    transport, herald = served
    ex = start_following(page, relay, herald, transport, events=3)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")

    relay.cut()
    set_offline(cdp, True)
    page.wait_for_function("window.triggers.some(t => t[0] === 'offline')", timeout=5000)
    missed = herald.publish(ex, tokens(4))  # published while the page is offline
    page.wait_for_function("window.states.some(s => s.state === 'lost')", timeout=LOST_AFTER + 5000)
    offline_at = trigger_time(page, "offline")
    lost = next(s for s in page.evaluate("window.states") if s["state"] == "lost")
    # `lost` counts from the `offline` event: not before lostAfter, and not much after.
    assert LOST_AFTER - 50 <= lost["at"] - offline_at <= LOST_AFTER + 1500, lost
    assert lost["cursor"] == 3 and lost["transport"] == transport
    assert page.evaluate("window.got.length") == 3, "the cut was real: nothing got through"

    relay.restore()
    set_offline(cdp, False)
    page.wait_for_function(f"window.got.length >= {missed[-1]}", timeout=RESUME_WITHIN + 5000)
    online_at = trigger_time(page, "online")
    arrived = page.evaluate("window.got")[-1][1]
    assert 0 < arrived - online_at <= RESUME_WITHIN, "resumed on `online`, not on a backoff timer"
    states = page.evaluate("window.states")
    reopened = next(s for s in states if s["state"] == "open" and s["at"] > online_at)
    assert reopened["reason"] == "resumed at once on online"
    assert all(s["state"] == "lost" for s in states if lost["at"] <= s["at"] < reopened["at"]), (
        "lost lasts until the stream opens again"
    )
    finish_and_check(page, herald, ex)


@pytest.mark.parametrize("trigger", ["visibilitychange", "pageshow"])
def test_connection_dead_while_hidden_resumes_when_shown(page, served, relay, trigger):
    """The network is fine but the page's connection died silently while it was hidden
    (a NAT or proxy dropped it): showing the page checks the connection at once."""
    transport, herald = served
    ex = start_following(page, relay, herald, transport, events=2)
    page.evaluate("window.setVisibility('hidden')")
    relay.cut()
    relay.restore()  # only the open connections are dead; new ones go through
    missed = herald.publish(ex, tokens(3))
    time.sleep(1.5)
    assert page.evaluate("window.got.length") == 2, "the dead connection delivered nothing"

    if trigger == "visibilitychange":
        page.evaluate("window.setVisibility('visible')")
        shown_at = trigger_time(page, "visible")
    else:  # back from the back/forward cache: Chromium fires `pageshow` with persisted
        page.evaluate("dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))")
        shown_at = trigger_time(page, "pageshow")
    page.wait_for_function(f"window.got.length >= {missed[-1]}", timeout=RESUME_WITHIN + 5000)
    arrived = page.evaluate("window.got")[-1][1]
    assert 0 < arrived - shown_at <= RESUME_WITHIN, "resumed on the trigger, not on a watchdog"
    states = page.evaluate("window.states")
    assert not any(s["state"] == "lost" for s in states), "back within lostAfter: never lost"
    if transport == "longpoll":  # the check's own re-poll, on a new connection, resumed it
        assert page.evaluate("window.handle.reconnects") == 0
    else:
        reopened = [s for s in states if s["state"] == "open" and s["at"] > shown_at]
        assert reopened and "reconnected at once" in reopened[0]["reason"], reopened
    finish_and_check(page, herald, ex)


def test_a_live_connection_passes_the_check(page, served, relay):
    """Showing the page with a healthy connection: the WebSocket's ping is answered and
    a long-poll's re-poll too, so neither reconnects; SSE cannot ask and reconnects when
    no byte came within checkTimeout. No event is lost or repeated either way."""
    transport, herald = served
    ex = start_following(page, relay, herald, transport, events=2)
    page.evaluate("window.setVisibility('hidden')")
    page.evaluate("window.setVisibility('visible')")
    time.sleep(2)
    herald.publish(ex, tokens(2))
    page.wait_for_function("window.got.length >= 4", timeout=5000)
    reconnects = page.evaluate("window.handle.reconnects")
    # SSE passes only when a heartbeat happens to fall within the window (10 s apart).
    assert reconnects <= 1 if transport == "sse" else reconnects == 0
    finish_and_check(page, herald, ex)
