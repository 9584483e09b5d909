"""Workers (PROTOCOL.md section 6) against a real server on a real port: dispatch,
requeue on loss, worker_lost, duplicate names, timeouts, cancel, HTTP claims,
capacity, the queue view, and the SDK with the example diagnosis worker."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from client import HeraldClient
from core.auth import Authenticator
from core.transport import SHUTDOWN
from examples.diagnosis_worker import DiagnosisWorker
from tests.fixtures_server import Herald
from tests.fixtures_workers import connect_worker, follow_all, open_worker_socket, worker_token
from tests.services import HeraldProcess
from worker import Emit, Worker, WorkerRunner


def statuses(events: list[dict]) -> list[str]:
    return [e["data"]["status"] for e in events if e["event"] == "status"]


async def wait_for(predicate, timeout: float = 5.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


def test_two_workers_share_a_queue_without_double_assignment(herald_run):
    async def scenario(h: Herald) -> None:
        a = await connect_worker(h, "q", "a")
        b = await connect_worker(h, "q", "b")
        created = [(await h.create(queue="q"))["id"] for _ in range(8)]
        runs: dict[str, list[str]] = {}

        async def serve(worker, name: str) -> None:
            while sum(len(v) for v in runs.values()) < len(created):
                try:
                    execution = await worker.execute(timeout=1)
                except TimeoutError:
                    continue
                runs.setdefault(execution["id"], []).append(name)
                worker.event(execution["id"], "progress", {"progress": 50})
                await asyncio.sleep(0.01)
                worker.event(execution["id"], "complete", {"result": name})

        await asyncio.wait_for(asyncio.gather(serve(a, "a"), serve(b, "b")), 10)
        assert sorted(runs) == sorted(created)
        assert all(len(names) == 1 for names in runs.values()), runs
        assert {n for names in runs.values() for n in names} == {"a", "b"}  # both served
        for execution_id in created:
            doc = await wait_for(lambda i=execution_id: _done(h, i))
            assert doc.status.value == "succeeded" and doc.attempts == 1

    herald_run(scenario)


async def _done(h: Herald, execution_id: str):
    doc = await h.core.store.get_execution(execution_id)
    return doc if doc is not None and doc.status.terminal else None


def test_a_killed_worker_gives_the_execution_back_and_another_finishes_it(herald_run):
    async def scenario(h: Herald) -> None:
        a = await connect_worker(h, "q", "a")
        execution_id = (await h.create(queue="q"))["id"]
        assert (await a.execute())["id"] == execution_id
        a.event(execution_id, "progress", {"progress": 30, "stage": "half"})
        await wait_for(lambda: _last_seq_at_least(h, execution_id, 2))
        b = await connect_worker(h, "q", "b")
        a.kill()
        handed = await b.execute()
        assert handed["id"] == execution_id and handed["attempts"] == 2 and handed["worker"] == "b"
        b.event(execution_id, "progress", {"progress": 90})
        b.event(execution_id, "complete", {"result": "done by b"})
        events = await follow_all(h, execution_id, "websocket")
        assert [e["event"] for e in events] == ["status", "progress", "status", "status", "progress", "complete"]
        assert statuses(events) == ["running", "pending", "running"]
        doc = await h.core.get_execution(execution_id)
        assert doc.result == "done by b" and doc.worker == "b" and doc.attempts == 2

    herald_run(scenario)


async def _last_seq_at_least(h: Herald, execution_id: str, seq: int) -> bool:
    return await h.last_seq(execution_id) >= seq


def test_after_max_attempts_a_lost_execution_fails_with_worker_lost(herald_run):
    async def scenario(h: Herald) -> None:
        execution_id = (await h.create(queue="q"))["id"]
        for name in ("a", "b"):
            worker = await connect_worker(h, "q", name)
            assert (await worker.execute())["id"] == execution_id
            worker.event(execution_id, "progress", {"progress": 10})
            await wait_for(lambda: _status_is(h, execution_id, "running"))
            worker.kill()
            if name == "a":
                await wait_for(lambda: _status_is(h, execution_id, "pending"))
        events = await follow_all(h, execution_id, "sse")
        assert events[-1]["event"] == "error"
        assert events[-1]["data"]["error_type"] == "worker_lost"
        assert statuses(events) == ["running", "pending", "running"]

    herald_run(scenario, max_attempts=2)


async def _status_is(h: Herald, execution_id: str, status: str) -> bool:
    doc = await h.core.store.get_execution(execution_id)
    return doc is not None and doc.status.value == status and (status != "pending" or doc.worker is None)


def test_worker_auth_and_names_are_checked_after_the_upgrade(herald_run):
    async def scenario(h: Herald) -> None:
        first = await connect_worker(h, "q", "same", subprotocol_auth=True)
        refusals = {
            "duplicate": (await open_worker_socket(h, "q", "same"), 4409),
            "no token": (await open_worker_socket(h, "q", "x", token=""), 4401),
            "wrong scope": (await open_worker_socket(h, "q", "y", token=h.mint()), 4403),
            "bad queue": (await open_worker_socket(h, "bad queue!", "z"), 4400),
        }
        for label, (conn, code) in refusals.items():
            error = json.loads(await asyncio.wait_for(conn.read_message(), 5))
            assert error["control"] == "error", label
            assert await asyncio.wait_for(conn.read_message(), 5) is None
            assert conn.close_code == code, (label, conn.close_code, conn.close_reason)
        # The same name on another queue is fine; the first connection still works.
        await connect_worker(h, "other", "same")
        execution_id = (await h.create(queue="q"))["id"]
        assert (await first.execute())["id"] == execution_id

    herald_run(scenario)


def test_an_execution_silent_for_execution_timeout_fails_and_the_worker_is_told(herald_run):
    async def scenario(h: Herald) -> None:
        worker = await connect_worker(h, "q", "slow")
        execution_id = (await h.create(queue="q"))["id"]
        await worker.execute()
        worker.event(execution_id, "progress", {"progress": 5})
        started = time.monotonic()
        op = await worker.next_op(timeout=5)
        assert op == {"op": "cancel", "execution_id": execution_id, "reason": "timeout"}
        assert 0.4 <= time.monotonic() - started < 3
        events = await follow_all(h, execution_id, "longpoll")
        assert events[-1]["event"] == "error" and events[-1]["data"]["error_type"] == "timeout"

    herald_run(scenario, execution_timeout=0.5)


def test_cancel_reaches_the_worker(herald_run):
    async def scenario(h: Herald) -> None:
        worker = await connect_worker(h, "q", "w")
        execution_id = (await h.create(queue="q"))["id"]
        await worker.execute()
        worker.event(execution_id, "progress", {"progress": 5})
        await wait_for(lambda: _last_seq_at_least(h, execution_id, 2))
        await h.client().cancel(execution_id, reason="user pressed stop")
        op = await worker.next_op()
        assert op == {"op": "cancel", "execution_id": execution_id, "reason": "user pressed stop"}
        # An event the worker still sends is refused, not stored.
        worker.event(execution_id, "progress", {"progress": 6})
        error = await _next_control(worker, "error")
        assert error["execution_id"] == execution_id and error["code"] == "conflict"
        assert await h.last_seq(execution_id) == 3

    herald_run(scenario)


async def _next_control(worker, name: str) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(worker.conn.read_message(), 5))
        if message.get("control") == name:
            return message


def test_http_claim_long_polls_and_the_worker_publishes_over_http(herald_run):
    async def scenario(h: Herald) -> None:
        token = worker_token(h)
        started = time.monotonic()
        empty = await h.fetch("/api/workers/claim?queue=q&wait=1", method="POST", token=token)
        assert empty.code == 200 and json.loads(empty.body) == {"execution": None}
        assert time.monotonic() - started >= 0.9
        claim = asyncio.ensure_future(
            h.fetch("/api/workers/claim?queue=q&wait=10&name=laptop", method="POST", token=token)
        )
        await asyncio.sleep(0.2)
        execution_id = (await h.create(queue="q"))["id"]
        answer = await asyncio.wait_for(claim, 5)
        execution = json.loads(answer.body)["execution"]
        assert execution["id"] == execution_id and execution["worker"] == "laptop" and execution["attempts"] == 1
        queues = json.loads((await h.fetch("/api/queues", token=h.mint())).body)["queues"]
        assert queues == [
            {
                "name": "q",
                "pending": 0,
                "workers": [
                    {
                        "name": "laptop",
                        "transport": "http",
                        "since": None,
                        "capacity": None,
                        "executions": [execution_id],
                    }
                ],
                "waiting_claims": 0,
            }
        ]
        await h.publish(execution_id, [{"event": "progress", "data": {"progress": 50}}], token=token)
        await h.publish(execution_id, {"event": "complete", "data": {"result": 1}}, token=token)
        again = await h.fetch("/api/workers/claim?queue=q&wait=0", method="POST", token=token)
        assert json.loads(again.body) == {"execution": None}  # never handed out twice
        refused = await h.fetch("/api/workers/claim?queue=q", method="POST", token=h.mint())
        assert refused.code == 403

    herald_run(scenario)


def test_ready_capacity_and_the_queue_view(herald_run):
    async def scenario(h: Herald) -> None:
        big = await connect_worker(h, "q", "big", capacity=3)
        await asyncio.sleep(0.05)
        ids = [(await h.create(queue="q"))["id"] for _ in range(5)]
        got = [(await big.execute())["id"] for _ in range(3)]
        assert got == ids[:3]  # oldest first, three at once
        queues = json.loads((await h.fetch("/api/queues", token=h.mint())).body)["queues"]
        [q] = queues
        assert q["name"] == "q" and q["pending"] == 2
        [w] = q["workers"]
        assert w["name"] == "big" and w["capacity"] == 3 and w["executions"] == sorted(got)
        assert w["transport"] == "websocket" and w["since"].endswith("Z")
        big.event(got[0], "complete", {})
        assert (await big.execute())["id"] == ids[3]  # a slot freed: the next one

    herald_run(scenario)


class QuickDiagnosis(DiagnosisWorker):
    """The example worker, with a short run."""

    async def run(self, execution, emit: Emit):
        execution = {**execution, "input": {"subject": "db", "seconds": 0.2}}
        return await super().run(execution, emit)


def test_sdk_runs_the_example_diagnosis_worker_and_reconnects(herald_run):
    async def scenario(h: Herald) -> None:
        runner = WorkerRunner(
            QuickDiagnosis(), h.base_url, worker_token(h), queue="diagnosis", name="sdk", first_delay=0.05
        )
        serving = asyncio.ensure_future(runner.serve_forever())
        try:
            await asyncio.wait_for(runner.connected.wait(), 5)
            first = (await h.create(kind="diagnosis", queue="diagnosis"))["id"]
            events = await follow_all(h, first, "websocket")
            names = [e["event"] for e in events]
            assert names[0] == "status" and names[-1] == "complete"
            assert names.count("result") == 3 and "progress" in names and "log" in names
            assert events[-1]["data"]["result"]["findings"]
            # The server drops the connection: the SDK reconnects and serves on.
            [link] = [s for s in h.core.sessions if s.transport_name == "worker"]
            link.close(SHUTDOWN)
            await wait_for(_connected_twice(runner))
            second = (await h.create(kind="diagnosis", queue="diagnosis"))["id"]
            assert (await follow_all(h, second, "sse"))[-1]["event"] == "complete"
        finally:
            runner.stop()
            await asyncio.wait_for(serving, 5)

    herald_run(scenario)


def _connected_twice(runner: WorkerRunner):
    async def check() -> bool:
        return runner.connections >= 2 and runner.connected.is_set()

    return check


class Failing(Worker):
    async def run(self, execution, emit: Emit):
        await emit.progress(10)
        raise ValueError("disk on fire")


def test_sdk_reports_an_exception_as_error(herald_run):
    async def scenario(h: Herald) -> None:
        runner = WorkerRunner(Failing(), h.base_url, worker_token(h), queue="q", name="f")
        serving = asyncio.ensure_future(runner.serve_forever())
        try:
            execution_id = (await h.create(queue="q"))["id"]
            events = await follow_all(h, execution_id, "websocket")
            assert events[-1]["data"] == {"error_type": "worker_exception", "message": "ValueError: disk on fire"}
        finally:
            runner.stop()
            await asyncio.wait_for(serving, 5)

    herald_run(scenario)


@pytest.mark.mongo
def test_two_herald_processes_on_one_mongodb_never_assign_one_execution_twice(mongo_target) -> None:
    args = ("--mongo-uri", mongo_target.uri, "--mongo-database", mongo_target.database)
    a, b = HeraldProcess(*args), HeraldProcess(*args)
    a.start()
    b.start()
    try:
        asyncio.run(asyncio.wait_for(_two_process_scenario(a, b), 60))
    finally:
        a.stop()
        b.stop()


async def _two_process_scenario(a: HeraldProcess, b: HeraldProcess) -> None:
    auth = Authenticator(secret=a.secret)
    creator = HeraldClient(a.base_url, auth.mint("alice"))
    ids = [(await creator.create("job", queue="shared"))["id"] for _ in range(24)]
    token = auth.mint("worker", ["workers"])
    taken: list[tuple[str, str]] = []

    async def claim_loop(process: HeraldProcess, name: str) -> None:
        client = HeraldClient(process.base_url, token)
        while True:
            answer = await client.request("POST", "/api/workers/claim", None, queue="shared", wait=0, name=name)
            if answer["execution"] is None:
                return
            taken.append((answer["execution"]["id"], name))

    async def socket_worker(process: HeraldProcess, name: str) -> None:
        url = process.base_url.replace("http", "ws", 1) + f"/api/workers/connect?queue=shared&name={name}"
        request = HTTPRequest(url, headers={"Authorization": f"Bearer {token}"})
        conn = await websocket_connect(request)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(conn.read_message(), 2.5)
                except TimeoutError:
                    return  # nothing more within two sweeps: the queue is drained
                op = json.loads(message)
                if op.get("op") == "execute":
                    taken.append((op["execution"]["id"], name))
        finally:
            conn.close()

    loops = [claim_loop(p, f"{tag}{i}") for p, tag in ((a, "ha"), (b, "hb")) for i in range(4)]
    loops += [socket_worker(a, "wa"), socket_worker(b, "wb")]
    await asyncio.gather(*loops)
    handed = [execution_id for execution_id, _ in taken]
    assert sorted(handed) == sorted(ids), "every execution handed out exactly once"
    assert len({name[:2] for _, name in taken}) >= 2, taken  # both processes took part
    for execution_id in ids:
        doc = await creator.get(execution_id)
        # attempts counts hand-outs (socket workers gave theirs back when they left).
        assert doc["attempts"] == 1
