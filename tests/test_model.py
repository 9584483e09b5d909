"""The pure execution model (core/model.py) and timing rules (core/timing.py): the
status machine, what an append stores, idempotency keys, publish validation."""

from __future__ import annotations

import random

import pytest

from core.errors import HeraldError
from core.model import (
    Execution,
    PublishItem,
    Status,
    new_execution_id,
    plan_append,
    rfc3339,
    validate_item,
    validate_new_execution,
    validate_publish_body,
)
from core.timing import backoff_delay, coalesce_window_end, heartbeat_due

NOW = 1_700_000_000.0


def execution(**kw) -> Execution:
    return Execution(id="ex_1", owner="alice", kind="chat", created_at=NOW, updated_at=NOW, **kw)


def token(text: str = "x", key: str | None = None) -> PublishItem:
    return PublishItem("token", {"text": text}, key)


def test_first_event_is_preceded_by_status_running():
    plan = plan_append(execution(), [token("a"), token("b")], {}, now=NOW + 1)
    assert [(e.seq, e.event) for e in plan.events] == [(1, "status"), (2, "token"), (3, "token")]
    assert plan.events[0].data == {"status": "running"}
    assert plan.seqs == [2, 3]
    assert plan.execution.status is Status.RUNNING and plan.execution.last_seq == 3
    assert plan.execution.updated_at == NOW + 1


def test_plan_does_not_touch_the_stored_document():
    doc = execution()
    plan_append(doc, [token()], {}, now=NOW)
    assert doc.status is Status.PENDING and doc.last_seq == 0


def test_a_terminal_first_event_carries_the_status_itself():
    plan = plan_append(execution(), [PublishItem("complete", {"result": 1})], {}, now=NOW)
    assert [e.event for e in plan.events] == ["complete"]
    assert plan.execution.status is Status.SUCCEEDED and plan.execution.result == 1
    assert plan.execution.progress == 100


def test_running_execution_gets_no_second_status_event():
    plan = plan_append(execution(status=Status.RUNNING, last_seq=4), [token()], {}, now=NOW)
    assert [(e.seq, e.event) for e in plan.events] == [(5, "token")]


@pytest.mark.parametrize(
    "item,status,field,value",
    [
        (PublishItem("complete", {"result": {"ok": True}}), Status.SUCCEEDED, "result", {"ok": True}),
        (
            PublishItem("error", {"error_type": "boom", "message": "m"}),
            Status.FAILED,
            "error",
            {"error_type": "boom", "message": "m", "details": None},
        ),
        (PublishItem("cancelled", {"reason": "user"}), Status.CANCELLED, "result", None),
    ],
)
def test_terminal_events_set_status_and_close_the_stream(item, status, field, value):
    plan = plan_append(execution(status=Status.RUNNING, last_seq=2), [item], {}, now=NOW)
    assert plan.execution.status is status and getattr(plan.execution, field) == value
    with pytest.raises(HeraldError) as closed:
        plan_append(plan.execution, [token()], {}, now=NOW)
    assert closed.value.status == 409 and closed.value.code == "stream_closed"
    assert closed.value.details == {"execution_id": "ex_1", "status": status.value}


def test_events_after_a_terminal_one_in_the_same_batch_are_refused():
    with pytest.raises(HeraldError) as closed:
        plan_append(execution(), [PublishItem("complete", {}), token()], {}, now=NOW)
    assert closed.value.status == 409


def test_progress_updates_progress_and_stage():
    items = [
        PublishItem("progress", {"progress": 30, "stage": "ai_fetching"}),
        PublishItem("progress", {"progress": 60}),
    ]
    plan = plan_append(execution(), items, {}, now=NOW)
    assert plan.execution.progress == 60 and plan.execution.stage == "ai_fetching"


def test_idempotency_keys():
    known = {"k1": 2}
    plan = plan_append(
        execution(status=Status.RUNNING, last_seq=3),
        [token(key="k1"), token(key="k2"), token(key="k2")],
        known,
        now=NOW,
    )
    assert plan.seqs == [2, 4, 4]
    assert [(e.seq, e.key) for e in plan.events] == [(4, "k2")]
    # A known key answers even once the stream is closed; a new event does not.
    done = execution(status=Status.SUCCEEDED, last_seq=5)
    assert plan_append(done, [token(key="k1")], known, now=NOW).seqs == [2]
    assert plan_append(done, [token(key="k1")], known, now=NOW).events == []


def test_terminal_statuses():
    assert {s for s in Status if s.terminal} == {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}


@pytest.mark.parametrize(
    "raw",
    [
        {"event": "Token", "data": {}},
        {"event": "1abc", "data": {}},
        {"event": "a" * 65, "data": {}},
        {"event": "status", "data": {"status": "running"}},
        {"event": "token", "data": {"text": 1}},
        {"event": "log", "data": {"level": "info"}},
        {"event": "progress", "data": {"progress": True}},
        {"event": "progress", "data": {"progress": -1}},
        {"event": "progress", "data": {"progress": 50, "status_text": 5}},
        {"event": "complete", "data": "done"},
        {"event": "token", "data": {"text": "x"}, "key": 5},
        {"event": "token", "data": {"text": "x"}, "key": "k" * 201},
        {"event": "token", "data": {"text": "x"}, "when": "now"},
        "token",
    ],
)
def test_invalid_items(raw):
    with pytest.raises(HeraldError) as refused:
        validate_item(raw)
    assert refused.value.status == 400


def test_valid_items_and_free_names():
    assert validate_item({"event": "a" * 64, "data": [1]}) == PublishItem("a" * 64, [1])
    assert validate_item({"event": "my.custom-event_2"}) == PublishItem("my.custom-event_2", {})
    assert validate_item({"event": "progress", "data": {"progress": 100.0, "stage": None}}).event == "progress"
    assert validate_item({"event": "result", "data": "anything"}).data == "anything"


def test_publish_body_limits_and_indexes():
    assert len(validate_publish_body([{"event": "x"}] * 1000)) == 1000
    for body in ([], [{"event": "x"}] * 1001):
        with pytest.raises(HeraldError):
            validate_publish_body(body)
    with pytest.raises(HeraldError) as refused:
        validate_publish_body([{"event": "x"}, {"event": "progress", "data": {"progress": 500}}])
    assert refused.value.details["index"] == 1


def test_new_execution_body():
    assert validate_new_execution({"kind": "chat"}) == ("chat", {}, None)
    assert validate_new_execution({"kind": "diagnosis", "input": None, "queue": "gpu-1"}) == ("diagnosis", {}, "gpu-1")
    for body in (
        [],
        {"kind": "a b"},
        {"kind": "x", "input": "s"},
        {"kind": "x", "queue": "bad queue"},
        {"kind": "x", "y": 1},
    ):
        with pytest.raises(HeraldError):
            validate_new_execution(body)


def test_ids_and_timestamps():
    ids = {new_execution_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("ex_") and len(i) == 25 and i[3:].isalnum() for i in ids)
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1.2345) == "1970-01-01T00:00:01.234Z"


def test_document_shape():
    public = execution().to_public()
    for name in ("id", "owner", "kind", "queue", "input", "status", "progress", "stage", "result", "error", "last_seq"):
        assert name in public
    assert public["status"] == "pending" and public["created_at"].endswith("Z")


def test_heartbeat_due():
    assert not heartbeat_due(last_sent=10.0, interval=15.0, now=24.9)
    assert heartbeat_due(last_sent=10.0, interval=15.0, now=25.0)


def test_backoff_delay_is_jittered_and_capped():
    rng = random.Random(1)
    for attempt, ceiling in ((0, 1.0), (1, 2.0), (3, 8.0), (10, 30.0), (-2, 1.0)):
        delays = [backoff_delay(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range
    assert backoff_delay(20, first=0.2, cap=5.0, rng=rng) <= 5.0


def test_coalescing_window_normally_closes_after_the_window():
    assert coalesce_window_end(start=3.0, took=0.001, gap=1.0, window=0.002, max_hold=0.025) == 3.002


def test_coalescing_window_stretches_when_fan_outs_run_back_to_back():
    # A 10 ms fan-out that began 15 ms after the previous one: the hub is falling behind.
    end = coalesce_window_end(start=3.0, took=0.010, gap=0.015, window=0.002, max_hold=0.025)
    assert end == 3.0 + 0.010 + 0.010


def test_coalescing_window_holds_at_most_max_hold():
    end = coalesce_window_end(start=3.0, took=0.100, gap=0.1, window=0.002, max_hold=0.025)
    assert end == 3.0 + 0.100 + 0.025


def test_a_slow_fan_out_after_a_quiet_time_does_not_stretch_the_window():
    end = coalesce_window_end(start=3.0, took=0.010, gap=5.0, window=0.002, max_hold=0.025)
    assert end == 3.002
