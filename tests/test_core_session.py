"""``core.session`` and ``core.sessions`` without sockets (issue 10): the one owner of an
open connection.

A ``RecordingTransport`` plays each kind of connection (a WebSocket with protocol pings,
an SSE stream with control pings, a long-poll page with neither): it keeps what the
session writes, answers False to play a peer too slow to read, and reports a settable
backlog. ``RecordingSource`` plays what a connection follows. The sessions, the
admission rules, the clocks, the client messages and the exit path are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core.auth import Authenticator, Principal, Scope, may_read
from core.closecodes import CloseCode
from core.codec import WS_PING, control, frame_control
from core.errors import ErrorCode, HeraldError, not_found
from core.metrics import Metrics
from core.model import Execution
from core.session import PONG_BACKLOG, Session
from core.sessions import LIMIT_RETRY_AFTER, Sessions
from core.settings import Settings
from core.transport import (
    ANSWERED,
    CLIENT_GONE,
    HEARTBEAT_TIMEOUT,
    NORMAL,
    SHUTDOWN,
    SLOW,
    TOKEN_EXPIRED,
    Disconnect,
    Encoding,
    Heartbeat,
    TransportName,
)

SCENARIO_TIMEOUT = 10.0
SECRET = "session-tests-a-secret-of-32-bytes-or-more"
HEARTBEAT = 15.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT))


class RecordingTransport:
    """A Transport that keeps every write and every close."""

    def __init__(self, name: TransportName, encoding: Encoding, heartbeat: Heartbeat) -> None:
        self.name = name
        self.encoding = encoding
        self.heartbeat = heartbeat
        self.writes: list[bytes] = []
        self.closes: list[Disconnect] = []
        #: False plays a peer that stopped reading (more than the bound unsent).
        self.accepts = True
        self.pending = 0

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        return self.accepts

    def close(self, disconnect: Disconnect) -> None:
        self.closes.append(disconnect)

    def pending_bytes(self) -> int:
        return self.pending


def websocket() -> RecordingTransport:
    return RecordingTransport(TransportName.WEBSOCKET, Encoding.WS, Heartbeat.PROTOCOL_PING)


def event_stream() -> RecordingTransport:
    return RecordingTransport(TransportName.SSE, Encoding.SSE_CHUNK, Heartbeat.CONTROL_MESSAGE)


def page() -> RecordingTransport:
    return RecordingTransport(TransportName.LONGPOLL, Encoding.PAGE, Heartbeat.NONE)


def ws_message(frame: bytes) -> dict[str, Any]:
    """The JSON of one unmasked WebSocket text frame, as the session writes it."""
    assert frame[0] == 0x81, frame
    length, start = frame[1], 2
    if length == 126:
        length, start = int.from_bytes(frame[2:4], "big"), 4
    assert len(frame) == start + length
    message: dict[str, Any] = json.loads(frame[start:])
    return message


class RecordingSource:
    """A Source following one execution of alice's, counting every call."""

    def __init__(self, fails_with: Exception | None = None, holds: asyncio.Event | None = None) -> None:
        self.execution = Execution(id="ex_followed", owner="alice", kind="chat")
        self.fails_with = fails_with
        #: When set, ``start`` waits for it (a catch-up reading the store).
        self.holds = holds
        self.starts = 0
        self.stops = 0
        self.finishes: list[Disconnect] = []

    async def start(self, session: Session) -> None:
        self.starts += 1
        if self.holds is not None:
            await self.holds.wait()
        if self.fails_with is not None:
            raise self.fails_with

    def stop(self) -> None:
        self.stops += 1

    async def finish(self, disconnect: Disconnect) -> None:
        self.finishes.append(disconnect)

    def allows(self, principal: Principal) -> bool:
        return may_read(principal, self.execution)


class RecordingOps:
    """A connection's own ops (the worker socket's): ``refuse`` names one to refuse."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.ops: list[tuple[str, dict[str, Any]]] = []
        self.refused: list[tuple[ErrorCode, dict[str, Any]]] = []

    def on_op(self, name: str, op: dict[str, Any]) -> None:
        if name == self.refuse:
            raise HeraldError(ErrorCode.CONFLICT, 409, "refused")
        self.ops.append((name, op))

    def on_refused_op(self, exc: HeraldError, op: dict[str, Any]) -> None:
        self.refused.append((exc.code, op))


def make_sessions(**settings: Any) -> Sessions:
    return Sessions(Settings(heartbeat=HEARTBEAT, **settings), Authenticator(secret=SECRET), Metrics())


def principal(sub: str = "alice", ttl: float = 3600) -> Principal:
    return Principal(sub, frozenset({Scope.EXECUTIONS_READ.value}), time.time() + ttl)


def token(sessions: Sessions, sub: str = "alice", scopes: tuple[str, ...] = ("executions:read",)) -> str:
    return sessions.auth.mint(sub, scopes, ttl=7200)


def counted(sessions: Sessions, name: str, **labels: str) -> float:
    """A labelled counter of the sessions' metrics (0 when never counted)."""
    value = sessions.metrics.registry.get_sample_value(f"herald_{name}_total", labels)
    return value or 0.0


class Connection:
    """A session running ``source`` as a task, as a transport's handler runs it."""

    def __init__(self, sessions: Sessions, transport: RecordingTransport, source: RecordingSource, **options: Any):
        self.transport = transport
        self.source = source
        self.session = sessions.open(transport, principal(options.pop("sub", "alice")), **options)
        self.task = asyncio.ensure_future(self.session.run(source))

    async def started(self) -> Connection:
        await asyncio.sleep(0)
        return self

    async def ended(self) -> Disconnect:
        """Wait for ``run`` to return; the one disconnect the transport was closed with."""
        await asyncio.wait_for(self.task, 2)
        (disconnect,) = self.transport.closes
        return disconnect

    def messages(self) -> list[dict[str, Any]]:
        """The JSON messages written on a WebSocket (protocol pings left out)."""
        return [ws_message(frame) for frame in self.transport.writes if frame != WS_PING]


async def connect(
    sessions: Sessions,
    transport: RecordingTransport | None = None,
    source: RecordingSource | None = None,
    **options: Any,
) -> Connection:
    return await Connection(sessions, transport or websocket(), source or RecordingSource(), **options).started()


# --- admission ------------------------------------------------------------------------------


def test_a_connection_over_max_connections_is_refused_429_and_counted() -> None:
    async def scenario() -> None:
        sessions = make_sessions(max_connections=2, max_connections_per_subject=0)
        first = await connect(sessions, sub="alice")
        await connect(sessions, event_stream(), sub="bob")
        with pytest.raises(HeraldError) as refused:
            sessions.open(page(), principal("carol"))
        error = refused.value
        assert (error.code, error.status, error.retry_after) == (ErrorCode.TOO_MANY_CONNECTIONS, 429, LIMIT_RETRY_AFTER)
        assert Disconnect.refusal(error).code is CloseCode.TOO_MANY_CONNECTIONS
        assert counted(sessions, "connections_refused", transport="longpoll", reason="too_many_connections") == 1
        assert len(sessions) == 2 and sessions.metrics.connections["longpoll"] == 0
        first.session.close(NORMAL)
        await first.ended()
        assert len(sessions) == 1
        await connect(sessions, page(), sub="carol")  # a slot is free again

    run(scenario)


def test_a_subject_over_its_limit_is_refused_on_every_transport_others_are_not() -> None:
    async def scenario() -> None:
        sessions = make_sessions(max_connections_per_subject=2)
        first = await connect(sessions, websocket())
        await connect(sessions, event_stream())
        with pytest.raises(HeraldError) as refused:
            sessions.open(page(), principal("alice"))
        error = refused.value
        assert (error.code, error.status, error.retry_after) == (ErrorCode.TOO_MANY_CONNECTIONS, 429, LIMIT_RETRY_AFTER)
        assert error.details == {"max_connections_per_subject": 2}
        assert counted(sessions, "connections_refused", transport="longpoll", reason="subject_limit") == 1
        await connect(sessions, page(), sub="bob")
        first.session.close(CLIENT_GONE)
        await first.ended()
        await connect(sessions, page(), sub="alice")

    run(scenario)


def test_a_draining_process_ends_every_connection_and_refuses_new_ones_503() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        stream, feed = await connect(sessions), await connect(sessions, event_stream())
        sessions.drain()
        assert await stream.ended() == SHUTDOWN and await feed.ended() == SHUTDOWN
        assert stream.transport.closes[0].code is CloseCode.GOING_AWAY
        assert counted(sessions, "connections_closed", transport="websocket", reason="drain") == 1
        with pytest.raises(HeraldError) as refused:
            sessions.open(websocket(), principal())
        error = refused.value
        assert (error.code, error.status, error.retry_after) == (ErrorCode.STORE_UNAVAILABLE, 503, 1)
        assert Disconnect.refusal(error).code is CloseCode.TRY_AGAIN_LATER
        assert counted(sessions, "connections_refused", transport="websocket", reason="draining") == 1
        assert len(sessions) == 0

    run(scenario)


# --- the clocks ---------------------------------------------------------------------------


def test_an_expired_token_ends_a_stream_with_token_expired() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        sse = await connect(sessions, event_stream())
        expires = max(ws.session.expires_at, sse.session.expires_at)
        sessions.tick(expires - 1, time.monotonic())
        assert not ws.session.closed and not sse.session.closed
        sessions.tick(expires, time.monotonic())
        assert await ws.ended() == TOKEN_EXPIRED and await sse.ended() == TOKEN_EXPIRED
        assert ws.messages() == [{"control": "error", "code": "token_expired", "message": "the token has expired"}]
        assert TOKEN_EXPIRED.code is CloseCode.UNAUTHORIZED and TOKEN_EXPIRED.reason == "token_expired"
        block = sse.transport.writes[-1]
        assert b"event: control\n" in block and b'"code":"token_expired"' in block
        assert counted(sessions, "connections_closed", transport="sse", reason="expired") == 1

    run(scenario)


def test_an_expired_token_answers_a_held_page_with_what_it_has() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        poll = await connect(sessions, page(), deadline=time.time() + 30)
        sessions.tick(poll.session.expires_at + 1, time.monotonic())
        assert await poll.ended() == ANSWERED
        assert poll.transport.writes == []  # the page is written by the source's finish
        assert poll.source.finishes == [ANSWERED]

    run(scenario)


def test_a_held_page_is_answered_at_its_deadline() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        deadline = time.time() + 25
        poll = await connect(sessions, page(), deadline=deadline)
        sessions.tick(deadline - 0.5, time.monotonic())
        assert not poll.session.closed
        sessions.tick(deadline, time.monotonic())
        assert await poll.ended() == ANSWERED
        assert poll.source.finishes == [ANSWERED]

    run(scenario)


def test_a_held_page_is_answered_by_its_own_timer_when_its_wait_runs_out() -> None:
    """The shared timer ticks once a second: too coarse for ``wait``. A poll is
    answered when its wait runs out, neither a second early nor late."""

    async def scenario() -> None:
        sessions = make_sessions()
        began = time.monotonic()
        poll = await connect(sessions, page(), deadline=time.time() + 0.3)
        assert await poll.ended() == ANSWERED  # no tick was driven
        assert 0.25 <= time.monotonic() - began < 1.0
        assert poll.source.finishes == [ANSWERED]

    run(scenario)


def test_each_transport_gets_its_own_heartbeat_when_one_is_due() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions, websocket())
        sse = await connect(sessions, event_stream())
        poll = await connect(sessions, page(), deadline=time.time() + 60)
        wall, mono = time.time(), time.monotonic()
        sessions.tick(wall, mono)
        assert ws.transport.writes == [WS_PING]  # a protocol ping frame
        assert sse.transport.writes == [frame_control(control("ping"), Encoding.SSE_CHUNK)]
        assert poll.transport.writes == []  # bounded by its wait instead
        sessions.tick(wall + 1, mono + HEARTBEAT / 2)
        assert len(ws.transport.writes) == 1 and len(sse.transport.writes) == 1
        sessions.tick(wall + 2, mono + HEARTBEAT)
        assert ws.transport.writes == [WS_PING, WS_PING] and len(sse.transport.writes) == 2

    run(scenario)


def test_a_peer_silent_for_three_heartbeats_is_dropped() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        session = ws.session
        before = time.monotonic()
        session.receive('{"op": "ping"}')  # any client message: heard at or after ``before``
        session.tick(time.time(), before + 3 * HEARTBEAT, True, HEARTBEAT)
        assert not session.closed and ws.transport.writes[-1] == WS_PING  # three intervals: pinged
        session.heard()  # a pong frame
        session.tick(time.time(), time.monotonic() + 3 * HEARTBEAT + 0.01, True, HEARTBEAT)
        assert await ws.ended() == HEARTBEAT_TIMEOUT
        assert HEARTBEAT_TIMEOUT.code is CloseCode.GOING_AWAY

    run(scenario)


def test_connections_without_protocol_pings_are_never_dropped_for_silence() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        sse = await connect(sessions, event_stream())
        poll = await connect(sessions, page(), deadline=time.time() + 60)
        silent_for = time.monotonic() + 100 * HEARTBEAT
        sse.session.tick(time.time(), silent_for, True, HEARTBEAT)
        poll.session.tick(time.time(), silent_for, True, HEARTBEAT)
        assert not sse.session.closed and not poll.session.closed

    run(scenario)


# --- client messages ----------------------------------------------------------------------------


def test_ping_is_answered_pong_unless_the_peer_is_not_reading() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        ws.session.receive('{"op": "ping"}')
        assert ws.messages() == [{"control": "pong"}]
        ws.transport.pending = PONG_BACKLOG
        ws.session.receive(b'{"op": "ping"}')
        assert len(ws.transport.writes) == 2  # at the backlog bound: still answered
        ws.transport.pending = PONG_BACKLOG + 1
        for _ in range(100):
            ws.session.receive('{"op": "ping"}')
        assert len(ws.transport.writes) == 2  # a flood of pings grows nothing
        assert not ws.session.closed

    run(scenario)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        ("[1, 2]", "bad_request"),
        ('{"op": 7}', "bad_request"),
        ('{"no": "op"}', "bad_request"),
        ('{"op": "dance"}', "bad_request"),  # unknown op
        ('{"op": "auth"}', "bad_request"),  # no token
        ('{"op": "auth", "token": "not.a.jwt"}', "unauthorized"),
    ],
)
def test_a_bad_client_message_is_an_error_then_the_close_of_its_status(message: str | bytes, code: str) -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        ws.session.receive(message)
        disconnect = await ws.ended()
        (error,) = ws.messages()
        assert error["control"] == "error" and error["code"] == code and error["message"]
        expected = CloseCode.UNAUTHORIZED if code == "unauthorized" else CloseCode.BAD_REQUEST
        assert (disconnect.code, disconnect.reason, disconnect.outcome) == (expected, code, "error")
        assert ws.source.stops == 1 and len(ws.source.finishes) == 1
        ws.session.receive('{"op": "ping"}')  # after the close: ignored
        assert len(ws.transport.writes) == 1

    run(scenario)


def test_a_refresh_with_another_sub_is_forbidden() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        ws.session.receive(json.dumps({"op": "auth", "token": token(sessions, sub="mallory")}))
        disconnect = await ws.ended()
        assert (disconnect.code, disconnect.reason) == (CloseCode.FORBIDDEN, "forbidden")
        assert ws.messages()[0]["code"] == "forbidden"

    run(scenario)


def test_a_refresh_whose_token_may_not_read_what_is_followed_is_forbidden() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        ws.session.receive(json.dumps({"op": "auth", "token": token(sessions, scopes=("events:publish",))}))
        disconnect = await ws.ended()
        assert (disconnect.code, disconnect.reason) == (CloseCode.FORBIDDEN, "forbidden")
        assert "may not read" in ws.messages()[0]["message"]

    run(scenario)


def test_a_refresh_that_drops_the_connection_s_scope_is_forbidden() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions, refresh_scope=Scope.WORKERS)
        ws.session.receive(json.dumps({"op": "auth", "token": token(sessions, scopes=("executions:read",))}))
        disconnect = await ws.ended()
        assert (disconnect.code, disconnect.reason) == (CloseCode.FORBIDDEN, "forbidden")
        assert "'workers'" in ws.messages()[0]["message"]

    run(scenario)


def test_a_good_refresh_is_acknowledged_and_moves_the_expiry() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        old_expiry = ws.session.expires_at
        fresh = token(sessions)
        ws.session.receive(json.dumps({"op": "auth", "token": fresh}))
        new_expiry = sessions.auth.decode(fresh).exp
        assert ws.messages() == [{"control": "auth_ok", "exp": int(new_expiry)}]
        assert ws.session.expires_at == new_expiry > old_expiry
        sessions.tick(old_expiry + 1, time.monotonic())  # the old token's end: no longer the end
        assert not ws.session.closed
        ws.session.close(NORMAL)
        assert await ws.ended() == NORMAL

    run(scenario)


def test_a_connection_s_own_ops_go_to_it_and_a_refused_one_keeps_the_connection() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ops = RecordingOps(refuse="ready")
        ws = Connection(sessions, websocket(), RecordingSource(), ops=ops)
        await ws.started()
        ws.session.receive('{"op": "event", "execution_id": "ex_1"}')
        ws.session.receive('{"op": "ready", "capacity": 2}')
        ws.session.receive('{"op": "auth"}')  # refused too: the ops say how
        assert ops.ops == [("event", {"op": "event", "execution_id": "ex_1"})]
        assert ops.refused == [
            (ErrorCode.CONFLICT, {"op": "ready", "capacity": 2}),
            (ErrorCode.BAD_REQUEST, {"op": "auth"}),
        ]
        assert not ws.session.closed and ws.transport.writes == []

    run(scenario)


# --- writing ------------------------------------------------------------------------------


def test_a_write_the_peer_is_too_slow_for_ends_the_connection_slow() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        ws.transport.accepts = False
        assert ws.session.send_message("snapshot", {"type": "snapshot"}) is False
        assert await ws.ended() == SLOW
        assert SLOW.code is CloseCode.TRY_AGAIN_LATER
        assert ws.session.send_control(control("ping")) is False  # nothing after the end
        assert len(ws.transport.writes) == 1
        assert counted(sessions, "connections_closed", transport="websocket", reason="slow") == 1

    run(scenario)


def test_a_page_transport_writes_no_control_message() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        poll = await connect(sessions, page(), deadline=time.time() + 5)
        assert poll.session.writer is None  # and the hub has no socket to write to
        assert poll.session.send_control(control("ready")) is False
        assert poll.session.send_message("snapshot", {}) is False
        assert poll.transport.writes == []
        assert (await connect(sessions)).session.writer is not None

    run(scenario)


# --- the one exit path ----------------------------------------------------------------------


def assert_ended_once(sessions: Sessions, conn: Connection, disconnect: Disconnect) -> None:
    assert conn.transport.closes == [disconnect]
    assert conn.source.stops == 1 and conn.source.finishes == [disconnect]
    assert conn.session not in list(sessions) and len(sessions) == 0
    assert sessions.metrics.connections[conn.transport.name.value] == 0
    assert counted(sessions, "connections_closed", transport=conn.transport.name.value, reason=disconnect.outcome) == 1


def test_an_ended_connection_stops_finishes_closes_and_releases_once() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        ws.session.close(NORMAL)
        ws.session.close(SHUTDOWN)  # a second end changes nothing
        ws.session.fail(not_found())
        assert await ws.ended() == NORMAL
        assert_ended_once(sessions, ws, NORMAL)
        sessions.release(ws.session, NORMAL)  # released already: not counted twice
        assert counted(sessions, "connections_closed", transport="websocket", reason="normal") == 1

    run(scenario)


def test_an_end_during_the_source_s_start_still_goes_through_the_one_exit_path() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        holds = asyncio.Event()
        sse = await connect(sessions, event_stream(), RecordingSource(holds=holds))
        sessions.drain()  # while the source is still reading the store
        holds.set()
        assert await sse.ended() == SHUTDOWN
        assert_ended_once(sessions, sse, SHUTDOWN)

    run(scenario)


def test_a_source_that_refuses_to_start_is_an_error_then_the_one_exit_path() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions, source=RecordingSource(fails_with=not_found()))
        disconnect = await ws.ended()
        assert (disconnect.code, disconnect.reason, disconnect.outcome) == (CloseCode.NOT_FOUND, "not_found", "error")
        assert ws.messages() == [{"control": "error", "code": "not_found", "message": "no such execution"}]
        assert_ended_once(sessions, ws, disconnect)

    run(scenario)


def test_a_source_that_fails_unexpectedly_is_logged_once_and_refused_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        secret = "password=hunter2"
        ws = await connect(sessions, source=RecordingSource(fails_with=RuntimeError(secret)))
        disconnect = await ws.ended()
        assert (disconnect.code, disconnect.reason) == (CloseCode.TRY_AGAIN_LATER, "internal_error")
        (error,) = ws.messages()
        assert error["code"] == "internal_error" and secret not in error["message"]
        assert_ended_once(sessions, ws, disconnect)

    with caplog.at_level(logging.ERROR, logger="herald.session"):
        run(scenario)
    logged = [r for r in caplog.records if r.name == "herald.session"]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_a_cancelled_connection_still_goes_through_the_one_exit_path() -> None:
    async def scenario() -> None:
        sessions = make_sessions()
        ws = await connect(sessions)
        ws.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ws.task
        assert_ended_once(sessions, ws, CLIENT_GONE)

    run(scenario)
