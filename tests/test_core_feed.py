"""``core.feed`` without sockets (issue 10): the dashboard feed's versions and history,
who sees what, and the feed on a stream and on a long-poll.

``Feed`` is driven with documents and a clock the test sets. ``FeedStream`` and
``FeedPage`` run in real ``Session``s (``core.sessions``) over a ``RecordingTransport``
that keeps what they write; the executions are created and moved through a real
``Core`` on the embedded store, whose change channel feeds the ``Feed`` as in
production. A ``HeldStore`` holds the snapshot's read back to show what arrives while
it is read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core.auth import ALL_SCOPES, Authenticator, Principal, Scope
from core.broker.local import LocalBroker
from core.feed import Feed, FeedPage, FeedStream, parse_version, sees, summary, version_of
from core.model import Event, Execution, PublishItem, Status
from core.service import Core
from core.session import Session
from core.settings import Settings
from core.store.memory import MemoryStore
from core.transport import ANSWERED, CLIENT_GONE, Disconnect, Encoding, Heartbeat, TransportName

SCENARIO_TIMEOUT = 10.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), SCENARIO_TIMEOUT))


def principal(sub: str, *scopes: str) -> Principal:
    return Principal(sub, frozenset(scopes or (Scope.EXECUTIONS_READ.value,)), time.time() + 3600)


ALICE, BOB, ADMIN = principal("alice"), principal("bob"), principal("root", *ALL_SCOPES)


def document(execution_id: str, owner: str, at: float, **fields: Any) -> Execution:
    return Execution(id=execution_id, owner=owner, kind="chat", created_at=at, updated_at=at, **fields)


def token_event(execution_id: str) -> Event:
    return Event(execution_id, 2, "token", {"text": "x"}, 0.0)


class Clock:
    """The feed's wall clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Heard:
    """A feed listener recording (version, execution id)."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def __call__(self, version: str, entry: dict[str, Any]) -> None:
        self.changes.append((version, entry["id"]))


# --- Feed: versions, history, who sees what ---------------------------------------------------


def test_a_change_is_versioned_with_its_time_and_kept_in_the_history() -> None:
    feed = Feed(clock=Clock(100.0))
    heard = Heard()
    feed.listen(ALICE, heard)
    created = document("ex_1", "alice", 101.25)
    feed.observe(created, [])
    assert heard.changes == [("101.250000", "ex_1")]
    assert feed.changes_since(ALICE, 100.0) == [(101.25, summary(created))]
    assert feed.changes_since(ALICE, 101.25) == []  # the client has it
    assert feed.now_version() == "100.000000"


def test_only_a_change_of_the_row_is_a_change() -> None:
    feed = Feed(clock=Clock(100.0))
    heard = Heard()
    feed.listen(ALICE, heard)
    feed.observe(document("ex_1", "alice", 101.0), [])
    feed.observe(document("ex_1", "alice", 102.0), [token_event("ex_1")])  # a token: same row
    assert heard.changes == [("101.000000", "ex_1")]
    feed.observe(document("ex_1", "alice", 103.0, progress=40), [token_event("ex_1")])
    feed.observe(document("ex_1", "alice", 104.0, progress=40, stage="writing"), [token_event("ex_1")])
    feed.observe(document("ex_1", "alice", 105.0, progress=40, stage="writing", status=Status.RUNNING), [])
    feed.observe(
        document("ex_1", "alice", 106.0, progress=40, stage="writing", status=Status.RUNNING, worker="gpu-1"),
        [token_event("ex_1")],
    )
    assert [version for version, _ in heard.changes] == [f"{at:.6f}" for at in (101, 103, 104, 105, 106)]


def test_a_version_the_history_cannot_answer_for_is_none() -> None:
    clock = Clock(100.0)
    feed = Feed(history=3, clock=clock)
    # Before this process's life: it did not hear what came before it started.
    assert feed.changes_since(ALICE, 99.0) is None
    for at in (101.0, 102.0, 103.0, 104.0):  # one more than the history keeps
        feed.observe(document(f"ex_{at:g}", "alice", at), [])
    assert feed.changes_since(ALICE, 100.5) is None  # 101 fell out: the store answers
    assert [at for at, _ in feed.changes_since(ALICE, 102.0) or []] == [103.0, 104.0]
    assert feed.changes_since(ALICE, 104.0) == []
    # A broker outage may have lost other processes' changes: only later ones are told.
    gaps: list[int] = []
    feed.listen(ALICE, Heard(), lambda: gaps.append(1))
    clock.now = 110.0
    feed.lost_changes()
    assert gaps == [1]
    assert feed.changes_since(ALICE, 104.0) is None
    assert feed.changes_since(ALICE, 110.0) == []


def test_a_caller_sees_its_own_executions_and_admin_sees_all() -> None:
    assert sees(ALICE, "alice") and not sees(ALICE, "bob")
    assert sees(ADMIN, "alice") and sees(ADMIN, "bob")
    feed = Feed(clock=Clock(100.0))
    heard = {p.sub: Heard() for p in (ALICE, BOB, ADMIN)}
    for p in (ALICE, BOB, ADMIN):
        feed.listen(p, heard[p.sub])
    feed.observe(document("ex_a", "alice", 101.0), [])
    feed.observe(document("ex_b", "bob", 102.0), [])
    assert [i for _, i in heard["alice"].changes] == ["ex_a"]
    assert [i for _, i in heard["bob"].changes] == ["ex_b"]
    assert [i for _, i in heard["root"].changes] == ["ex_a", "ex_b"]
    assert [e["id"] for _, e in feed.changes_since(BOB, 100.0) or []] == ["ex_b"]
    assert [e["id"] for _, e in feed.changes_since(ADMIN, 100.0) or []] == ["ex_a", "ex_b"]
    feed.forget(heard["root"])
    feed.observe(document("ex_c", "bob", 103.0), [])
    assert len(heard["root"].changes) == 2


@pytest.mark.parametrize(
    ("version", "at"),
    [("101.250000", 101.25), ("0", 0.0), ("abc", None), ("", None), ("nan", None), ("inf", None), ("-1", None)],
)
def test_parse_version(version: str, at: float | None) -> None:
    assert parse_version(version) == at


def test_a_version_reads_back_as_its_time_to_the_microsecond() -> None:
    for at in (1_700_000_000.123456, 1_800_000_000.5, 0.000001):
        parsed = parse_version(version_of(at))
        assert parsed is not None and abs(parsed - at) <= 0.5e-6


# --- the feed on connections ------------------------------------------------------------------


class HeldStore(MemoryStore):
    """The embedded store; while ``gate`` is closed, a listing's answer (the executions
    as they were when it was asked) is held back."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.listings = 0

    async def list_executions(
        self,
        *,
        owner: str | None,
        status: Status | None = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Execution]:
        self.listings += 1
        found = await super().list_executions(
            owner=owner, status=status, kind=kind, queue=queue, limit=limit, before=before
        )
        if self.gate is not None:
            await self.gate.wait()
        return found


class RecordingTransport:
    """A Transport keeping every write (SSE blocks, or the long-poll's one answer)."""

    def __init__(self, name: TransportName, encoding: Encoding, heartbeat: Heartbeat) -> None:
        self.name = name
        self.encoding = encoding
        self.heartbeat = heartbeat
        self.writes: list[bytes] = []
        self.closes: list[Disconnect] = []

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        return True

    def close(self, disconnect: Disconnect) -> None:
        self.closes.append(disconnect)

    def pending_bytes(self) -> int:
        return 0

    def blocks(self) -> list[tuple[str, dict[str, Any]]]:
        """The SSE blocks written: (event name, JSON data)."""
        out = []
        for block in b"".join(self.writes).decode().split("\n\n")[:-1]:
            fields = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((fields["event"], json.loads(fields["data"])))
        return out

    def page(self) -> dict[str, Any]:
        (answer,) = self.writes
        body: dict[str, Any] = json.loads(answer)
        return body


class Dashboard:
    """A Core whose change channel feeds a Feed, and its connections' sessions."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        settings = Settings()
        self.core = Core(settings, store or MemoryStore(), LocalBroker(), Authenticator(secret="feed-tests" * 4))
        self.feed = Feed()
        self.core.changes.observe(self.feed.observe)  # as the feed's handlers wire it
        self.core.changes.observe_gaps(self.feed.lost_changes)

    async def create(self, owner: str = "alice") -> Execution:
        await asyncio.sleep(0.001)  # distinct times, as executions created apart have
        return await self.core.create_execution(owner, "chat", {}, None)

    async def version_now(self) -> str:
        """A version a moment after everything so far (what a snapshot taken now says)."""
        await asyncio.sleep(0.002)
        return self.feed.now_version()

    async def progress(self, execution: Execution, value: float) -> None:
        await asyncio.sleep(0.001)
        await self.core.publish(execution.id, [PublishItem("progress", {"progress": value})])

    def connect(
        self, transport: RecordingTransport, source: FeedStream | FeedPage, who: Principal = ALICE, **options: Any
    ) -> tuple[Session, asyncio.Task[None]]:
        session = self.core.sessions.open(transport, who, **options)
        return session, asyncio.ensure_future(session.run(source))

    def hold_poll(self, since: str) -> tuple[RecordingTransport, asyncio.Task[None]]:
        """Alice's feed poll after ``since``, held up to 30 s."""
        poll = long_poll()
        _, task = self.connect(poll, FeedPage(self.core, self.feed, since), deadline=time.time() + 30)
        return poll, task


def event_stream() -> RecordingTransport:
    return RecordingTransport(TransportName.SSE, Encoding.SSE, Heartbeat.CONTROL_MESSAGE)


def long_poll() -> RecordingTransport:
    return RecordingTransport(TransportName.LONGPOLL, Encoding.PAGE, Heartbeat.NONE)


async def done(task: asyncio.Task[None]) -> None:
    await asyncio.wait_for(task, 2)


def test_a_stream_sends_the_snapshot_then_the_changes_that_arrived_while_it_was_read() -> None:
    async def scenario() -> None:
        store = HeldStore()
        board = Dashboard(store)
        before = await board.create()
        await board.create("bob")
        store.gate = asyncio.Event()
        sse = event_stream()
        session, task = board.connect(sse, FeedStream(board.core, board.feed))
        while store.listings == 0:
            await asyncio.sleep(0.001)
        during = await board.create()  # while the snapshot is being read
        await board.progress(before, 30)
        assert sse.writes == []  # held: the snapshot goes first
        store.gate.set()
        while len(sse.writes) < 3:
            await asyncio.sleep(0.001)
        (name, snap), *changes = sse.blocks()
        assert name == "snapshot" and snap["type"] == "snapshot"
        assert [e["id"] for e in snap["executions"]] == [before.id]  # bob's is not alice's
        assert [(n, m["type"], m["execution"]["id"]) for n, m in changes] == [
            ("execution", "execution", during.id),
            ("execution", "execution", before.id),
        ]
        assert changes[1][1]["execution"]["progress"] == 30
        assert float(changes[0][1]["version"]) > float(snap["version"])

        await board.progress(during, 50)  # after the snapshot: sent as it comes
        await board.create("bob")  # not alice's: not sent
        assert [m["execution"]["id"] for _, m in sse.blocks()[3:]] == [during.id]
        session.close(CLIENT_GONE)
        await done(task)
        await board.progress(before, 60)  # the stream is gone: nothing more
        assert len(sse.blocks()) == 4

    run(scenario)


def test_a_stream_sends_a_fresh_snapshot_after_changes_may_have_been_lost() -> None:
    async def scenario() -> None:
        board = Dashboard()
        await board.create()
        sse = event_stream()
        session, task = board.connect(sse, FeedStream(board.core, board.feed))
        while not sse.writes:
            await asyncio.sleep(0.001)
        board.core.changes.lost()  # the broker is back after an outage
        while len(sse.writes) < 2:
            await asyncio.sleep(0.001)
        assert [name for name, _ in sse.blocks()] == ["snapshot", "snapshot"]
        session.close(CLIENT_GONE)
        await done(task)

    run(scenario)


def test_a_poll_without_since_is_answered_a_snapshot_at_once() -> None:
    async def scenario() -> None:
        board = Dashboard()
        mine = await board.create()
        for since in ("", "not-a-version"):
            poll = long_poll()
            _, task = board.connect(poll, FeedPage(board.core, board.feed, since), deadline=time.time() + 30)
            await done(task)
            answer = poll.page()
            assert answer["type"] == "snapshot" and [e["id"] for e in answer["executions"]] == [mine.id]
            assert poll.closes == [ANSWERED]

    run(scenario)


def test_a_poll_with_changes_after_its_version_is_answered_at_once() -> None:
    async def scenario() -> None:
        board = Dashboard()
        since = board.feed.now_version()
        first = await board.create()
        await board.create("bob")
        await board.progress(first, 20)
        newest = (await board.core.get_execution(first.id)).updated_at
        poll, task = board.hold_poll(since)
        await done(task)
        answer = poll.page()
        assert answer["type"] == "changes" and answer["version"] == version_of(newest)
        assert [(e["id"], e["progress"]) for e in answer["executions"]] == [(first.id, 0), (first.id, 20)]

    run(scenario)


def test_a_poll_with_nothing_new_is_held_until_a_change_of_its_caller() -> None:
    async def scenario() -> None:
        board = Dashboard()
        mine = await board.create()
        since = await board.version_now()
        poll, task = board.hold_poll(since)
        await asyncio.sleep(0.02)
        await board.create("bob")  # not the caller's
        await asyncio.sleep(0.02)
        assert not task.done() and poll.writes == []
        await board.progress(mine, 70)
        await done(task)
        answer = poll.page()
        assert [(e["id"], e["progress"]) for e in answer["executions"]] == [(mine.id, 70)]
        assert answer["version"] == version_of((await board.core.get_execution(mine.id)).updated_at)

    run(scenario)


def test_a_held_poll_is_answered_empty_at_its_deadline_and_a_plain_one_at_once() -> None:
    async def scenario() -> None:
        board = Dashboard()
        await board.create()
        since = await board.version_now()
        deadline = time.time() + 30
        held = long_poll()
        _, task = board.connect(held, FeedPage(board.core, board.feed, since), deadline=deadline)
        await asyncio.sleep(0.01)
        board.core.sessions.tick(deadline, time.monotonic())
        await done(task)
        assert held.page() == {"type": "changes", "version": since, "executions": []}

        plain = long_poll()  # wait=0: no deadline
        _, task = board.connect(plain, FeedPage(board.core, board.feed, since))
        await done(task)
        assert plain.page() == {"type": "changes", "version": since, "executions": []}

    run(scenario)


def test_a_poll_the_history_cannot_answer_is_answered_from_the_store() -> None:
    async def scenario() -> None:
        board = Dashboard()
        old = await board.create()  # before the feed's life: it was not heard
        board.feed = Feed()  # a process started after it (and after the version below)
        since = version_of(old.created_at - 1)
        poll, task = board.hold_poll(since)
        await done(task)
        answer = poll.page()
        assert [e["id"] for e in answer["executions"]] == [old.id]
        assert answer["version"] == version_of(old.updated_at)

    run(scenario)


def test_a_held_poll_is_answered_when_changes_may_have_been_lost() -> None:
    async def scenario() -> None:
        board = Dashboard()
        await board.create()
        since = await board.version_now()
        poll, task = board.hold_poll(since)
        await asyncio.sleep(0.01)
        assert not task.done()
        board.feed.lost_changes()
        await done(task)
        assert poll.page()["type"] == "changes"

    run(scenario)


def test_after_lost_changes_an_idle_poll_is_held_not_answered_at_once() -> None:
    """The store answers while the history cannot tell; when it finds nothing the poll
    is held as any other, so an idle dashboard does not poll in a busy loop."""

    async def scenario() -> None:
        board = Dashboard()
        mine = await board.create()
        since = await board.version_now()
        board.feed.lost_changes()  # the history cannot tell for anything before now
        assert board.feed.changes_since(ALICE, float(since)) is None
        poll, task = board.hold_poll(since)
        await asyncio.sleep(0.05)
        assert not task.done() and poll.writes == []
        await board.progress(mine, 30)
        await done(task)
        assert [(e["id"], e["progress"]) for e in poll.page()["executions"]] == [(mine.id, 30)]

    run(scenario)


def test_a_change_older_than_the_version_arriving_late_does_not_wake_a_poll() -> None:
    """Another process's change reaches this one after the client's version moved past
    it (it was in the snapshot): nothing new for the client, so the poll stays held."""

    async def scenario() -> None:
        board = Dashboard()
        mine = await board.create()
        since = await board.version_now()
        poll, task = board.hold_poll(since)
        await asyncio.sleep(0.01)
        late = document("ex_late", "alice", float(since) - 0.5, progress=10)
        board.feed.observe(late, [])  # heard now, changed before ``since``
        await asyncio.sleep(0.02)
        assert not task.done() and poll.writes == []
        await board.progress(mine, 60)
        await done(task)
        assert [e["id"] for e in poll.page()["executions"]] == [mine.id]

    run(scenario)


def test_a_poll_whose_client_left_writes_nothing() -> None:
    async def scenario() -> None:
        board = Dashboard()
        await board.create()
        since = await board.version_now()
        poll = long_poll()
        session, task = board.connect(poll, FeedPage(board.core, board.feed, since), deadline=time.time() + 30)
        await asyncio.sleep(0.01)
        session.close(CLIENT_GONE)
        await done(task)
        assert poll.writes == [] and poll.closes == [CLIENT_GONE]
        assert len(board.core.sessions) == 0
        await board.create()  # a change after it left: its listener went with it
        assert poll.writes == []

    run(scenario)
