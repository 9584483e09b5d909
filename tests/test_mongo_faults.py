"""Faults with the MongoDB store: a real Herald process (``server.py --mongo-uri``) on
a real SecantusDB, both on 127.0.0.1 ports, killed and restarted by the tests."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from client.sse import SseMessage, SseParser
from core.auth import Authenticator
from tests.services import HeraldProcess, SecantusServer

pytestmark = pytest.mark.mongo

SECRET = "fault-secret-0123456789-0123456789"


class Api:
    """Plain HTTP, SSE and WebSocket calls to one Herald, never raising on a status."""

    def __init__(self, herald: HeraldProcess) -> None:
        self.base = herald.base_url
        self.token = Authenticator(secret=SECRET).mint(
            "alice", ["executions:read", "executions:write", "events:publish"], ttl=600
        )

    async def fetch(self, path: str, method: str = "GET", body: Any = None, timeout: float = 15) -> HTTPResponse:
        headers = {"Authorization": f"Bearer {self.token}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = HTTPRequest(self.base + path, method=method, body=payload, headers=headers, request_timeout=timeout)
        return await AsyncHTTPClient().fetch(request, raise_error=False)

    async def create(self) -> str:
        response = await self.fetch("/api/executions", "POST", {"kind": "chat"})
        assert response.code == 201, response.body
        return json.loads(response.body)["id"]

    async def publish(self, execution_id: str, body: Any, timeout: float = 15) -> HTTPResponse:
        return await self.fetch(f"/api/executions/{execution_id}/events", "POST", body, timeout)

    async def publish_ok(self, execution_id: str, body: Any) -> list[int]:
        response = await self.publish(execution_id, body)
        assert response.code == 202, (response.code, response.body)
        return json.loads(response.body)["seq"]

    async def page(self, execution_id: str, after: int = 0) -> dict[str, Any]:
        response = await self.fetch(f"/api/executions/{execution_id}/events?after={after}&limit=1000")
        assert response.code == 200, response.body
        return json.loads(response.body)

    async def websocket(self, execution_id: str, after: int = 0) -> WebSocketClientConnection:
        url = self.base.replace("http", "ws") + f"/api/executions/{execution_id}/events?after={after}"
        request = HTTPRequest(url, headers={"Authorization": f"Bearer {self.token}"}, request_timeout=5)
        return await websocket_connect(request)

    def sse(self, execution_id: str, after: int = 0) -> Sse:
        return Sse(self, execution_id, after)


class Sse:
    """A streaming ``Accept: text/event-stream`` GET, parsed as bytes arrive."""

    def __init__(self, api: Api, execution_id: str, after: int) -> None:
        self.queue: asyncio.Queue[SseMessage | None] = asyncio.Queue()
        parser = SseParser()
        request = HTTPRequest(
            f"{api.base}/api/executions/{execution_id}/events?after={after}",
            headers={"Authorization": f"Bearer {api.token}", "Accept": "text/event-stream"},
            streaming_callback=lambda chunk: self._feed(parser, chunk),
            request_timeout=120,
        )
        self.response = asyncio.ensure_future(AsyncHTTPClient().fetch(request, raise_error=False))
        self.response.add_done_callback(lambda _: self.queue.put_nowait(None))

    def _feed(self, parser: SseParser, chunk: bytes) -> None:
        for message in parser.feed(chunk):
            self.queue.put_nowait(message)

    async def next(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next event or control message as JSON (heartbeats skipped)."""
        while True:
            message = await asyncio.wait_for(self.queue.get(), timeout)
            if message is None:
                return None
            data = json.loads(message.data)
            if data.get("control") != "ping":
                return data

    async def event(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            item = await self.next(timeout)
            assert item is not None, "the SSE stream ended"
            if "seq" in item:
                return item

    def close(self) -> None:
        self.response.cancel()


async def ws_event(conn: WebSocketClientConnection, timeout: float = 10) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(conn.read_message(), timeout)
        assert message is not None, f"the WebSocket closed: {conn.close_code} {conn.close_reason}"
        item = json.loads(message)
        if "seq" in item:
            return item


async def eventually(probe: Callable[[], Awaitable[bool]], timeout: float = 20, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(every)


def tokens(*texts: str) -> list[dict[str, Any]]:
    return [{"event": "token", "data": {"text": t}} for t in texts]


def texts(page: dict[str, Any]) -> list[str]:
    return [e["data"]["text"] for e in page["events"] if e["event"] == "token"]


def assert_dense(page: dict[str, Any]) -> None:
    seqs = [e["seq"] for e in page["events"]]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


@pytest.fixture
def herald_on(durable_secantus: SecantusServer) -> Iterator[Callable[..., HeraldProcess]]:
    """``herald_on(*args)`` starts ``server.py`` on the test's SecantusDB, own database."""
    database = "herald_fault_" + secrets.token_hex(4)
    started: list[HeraldProcess] = []

    def start(*args: str, port: int | None = None) -> HeraldProcess:
        herald = HeraldProcess(
            "--mongo-uri",
            durable_secantus.uri,
            "--mongo-database",
            database,
            "--log-level",
            "warning",
            *args,
            port=port,
            secret=SECRET,
        )
        herald.start()
        started.append(herald)
        return herald

    yield start
    for herald in started:
        herald.kill()


def test_starts_without_mongodb_and_becomes_ready(durable_secantus: SecantusServer, herald_on) -> None:
    durable_secantus.kill()
    herald = herald_on()

    async def scenario() -> None:
        api = Api(herald)
        ready = await api.fetch("/readyz")
        assert ready.code == 503 and ready.headers.get("Retry-After")
        refused = await api.fetch("/api/executions", "POST", {"kind": "chat"})
        assert refused.code == 503, refused.body
        assert refused.headers.get("Retry-After")
        assert json.loads(refused.body)["error"]["code"] == "store_unavailable"
        durable_secantus.start()

        async def is_ready() -> bool:
            return (await api.fetch("/readyz")).code == 200

        await eventually(is_ready)
        execution_id = await api.create()
        assert await api.publish_ok(execution_id, tokens("a")) == [2]

    asyncio.run(scenario())


def test_outage_mid_stream_keeps_streams_open_and_resumes(durable_secantus: SecantusServer, herald_on) -> None:
    herald = herald_on()

    async def scenario() -> None:
        api = Api(herald)
        execution_id = await api.create()
        await api.publish_ok(execution_id, tokens("a", "b"))  # seq 1 status, 2..3
        sse = api.sse(execution_id)
        ws = await api.websocket(execution_id)
        for _ in range(3):
            assert (await sse.event())["seq"] == (await ws_event(ws))["seq"]

        durable_secantus.kill()
        down = await api.publish(execution_id, tokens("lost-1", "lost-2"))
        assert down.code == 503, down.body
        assert down.headers.get("Retry-After")
        assert json.loads(down.body)["error"]["code"] == "store_unavailable"
        assert (await api.fetch("/readyz")).code == 503

        durable_secantus.start()
        seqs: list[int] = []

        async def published() -> bool:
            nonlocal seqs
            response = await api.publish(execution_id, tokens("c"))
            if response.code == 202:
                seqs = json.loads(response.body)["seq"]
                return True
            assert response.code == 503, response.body
            return False

        await eventually(published)
        assert seqs == [4]
        # Both streams kept their connections and deliver the next event.
        assert (await sse.event())["data"] == {"text": "c"}
        got = await ws_event(ws)
        assert (got["seq"], got["data"]) == (4, {"text": "c"})
        await api.publish_ok(execution_id, [{"event": "complete", "data": {"result": "ok"}}])
        assert (await sse.event())["event"] == "complete"
        assert (await ws_event(ws))["event"] == "complete"
        page = await api.page(execution_id)
        assert_dense(page)
        assert texts(page) == ["a", "b", "c"]  # nothing of the refused publish
        sse.close()
        ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("command", ["insert", "update"])
def test_failing_command_answers_503_and_stores_nothing(
    durable_secantus: SecantusServer, herald_on, command: str
) -> None:
    herald = herald_on()

    async def scenario() -> None:
        api = Api(herald)
        execution_id = await api.create()
        await api.publish_ok(execution_id, tokens("a"))
        # insert: the events; update: the commit of the execution document after
        # the events were inserted. A non-retryable error code, so the driver gives up.
        durable_secantus.fail_point({"times": 1}, failCommands=[command], errorCode=8000, errmsg="injected")
        failed = await api.publish(execution_id, tokens("x", "y"))
        assert failed.code == 503, failed.body
        assert json.loads(failed.body)["error"]["code"] == "store_unavailable"
        started = time.monotonic()
        assert await api.publish_ok(execution_id, tokens("b")) == [3]
        assert time.monotonic() - started < 2  # no stale tentative events to wait out
        page = await api.page(execution_id)
        assert_dense(page)
        assert texts(page) == ["a", "b"]

    asyncio.run(scenario())


def test_herald_killed_and_restarted_loses_nothing_acknowledged(durable_secantus: SecantusServer, herald_on) -> None:
    herald = herald_on()

    async def scenario() -> None:
        api = Api(herald)
        execution_id = await api.create()
        acknowledged: dict[int, str] = {}
        reader_cursor = 0

        async def publisher(worker: int) -> None:
            i = 0
            while True:
                text = f"w{worker}-{i}"
                try:
                    response = await api.publish(execution_id, tokens(text), timeout=5)
                except Exception:  # noqa: BLE001 - the server died under us: not acknowledged
                    return
                if response.code != 202:
                    return
                acknowledged[json.loads(response.body)["seq"][0]] = text
                i += 1

        async def reader() -> None:
            nonlocal reader_cursor
            try:
                ws = await api.websocket(execution_id)
                while True:
                    reader_cursor = (await ws_event(ws, timeout=30))["seq"]
            except Exception:  # noqa: BLE001 - the server was killed: the reader stops where it was
                return

        tasks = [asyncio.ensure_future(publisher(w)) for w in range(4)] + [asyncio.ensure_future(reader())]
        await asyncio.sleep(1.0)
        herald.kill()
        await asyncio.gather(*tasks)
        assert len(acknowledged) > 10 and reader_cursor > 0

        restarted = herald_on(port=herald.port)
        api = Api(restarted)
        page = await api.page(execution_id)
        assert_dense(page)
        stored = {e["seq"]: e["data"].get("text") for e in page["events"]}
        for seq, text in acknowledged.items():
            assert stored.get(seq) == text
        last = page["events"][-1]["seq"]

        # A client resuming with its cursor gets exactly the missing events, then more.
        sse = api.sse(execution_id, after=reader_cursor)
        resumed = [(await sse.event())["seq"] for _ in range(last - reader_cursor)]
        assert resumed == list(range(reader_cursor + 1, last + 1))
        assert await api.publish_ok(execution_id, tokens("after-restart")) == [last + 1]
        assert (await sse.event())["seq"] == last + 1
        sse.close()

    asyncio.run(scenario())


def test_retention_drops_old_events_and_resets_late_cursors(durable_secantus: SecantusServer, herald_on) -> None:
    herald = herald_on("--retention", "2")

    async def scenario() -> None:
        api = Api(herald)
        execution_id = await api.create()
        await api.publish_ok(execution_id, tokens("old1", "old2", "old3"))  # seq 1..4
        await asyncio.sleep(2.2)
        await api.publish_ok(execution_id, tokens("new1"))  # seq 5

        async def old_ones_gone() -> bool:
            # A cursor in the dropped range gets the reset and jumps to last_seq.
            page = await api.page(execution_id, after=1)
            if page["reset"] is None:
                assert [e["seq"] for e in page["events"]] == [2, 3, 4, 5]
                return False
            assert page["events"] == [] and page["next_after"] == 5
            assert page["reset"]["id"] == execution_id and page["reset"]["last_seq"] == 5
            return True

        await eventually(old_ones_gone, timeout=4, every=0.1)

        sse = api.sse(execution_id, after=1)
        while (message := await sse.next()) is not None and message.get("control") != "reset":
            assert "seq" not in message, message
        assert message is not None and message["execution"]["id"] == execution_id
        ws = await api.websocket(execution_id, after=2)
        while True:
            frame = json.loads(await asyncio.wait_for(ws.read_message(), 10))
            assert "seq" not in frame, frame
            if frame.get("control") == "reset":
                break
        await api.publish_ok(execution_id, tokens("carry-on"))  # seq 6
        assert (await sse.event())["seq"] == 6
        assert (await ws_event(ws))["seq"] == 6
        sse.close()
        ws.close()

    asyncio.run(scenario())
