"""The execution model: documents, events, the status machine and publish validation.

Pure code: no I/O, no Tornado. Stores persist what ``plan_append`` decides, so the
embedded store and MongoDB apply exactly the same rules (status transitions, the
server-made ``status`` event, idempotency keys, terminal events closing the stream).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from core.errors import ErrorCode, HeraldError, bad_request, stream_closed

EVENT_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
KIND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
QUEUE_NAME = KIND_NAME
MAX_KEY_LENGTH = 200
MAX_BATCH = 1000
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Status(StrEnum):
    """Execution status. ``pending`` → ``running`` → a terminal status."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})

#: Terminal events and the status each one sets.
TERMINAL_EVENTS: dict[str, Status] = {
    "complete": Status.SUCCEEDED,
    "error": Status.FAILED,
    "cancelled": Status.CANCELLED,
}


def new_execution_id() -> str:
    """``ex_`` + 22 base62 characters (~131 bits): URL-safe and unguessable."""
    return "ex_" + "".join(secrets.choice(_BASE62) for _ in range(22))


def rfc3339(ts: float) -> str:
    """Epoch seconds → RFC 3339 UTC with milliseconds, as the envelope shows it."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass(slots=True)
class Execution:
    """One execution document (PROTOCOL.md section 1), plus dispatch bookkeeping."""

    id: str
    owner: str
    kind: str
    queue: str | None = None
    input: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.PENDING
    progress: float = 0
    stage: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    last_seq: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    #: Name of the worker holding it, and how many times it was handed out.
    worker: str | None = None
    attempts: int = 0
    #: When the newest event was published (for ``execution_timeout``).
    last_event_at: float | None = None

    def to_public(self) -> dict[str, Any]:
        """The document as every API answer and ``reset`` message shows it."""
        return {
            "id": self.id,
            "owner": self.owner,
            "kind": self.kind,
            "queue": self.queue,
            "input": self.input,
            "status": self.status.value,
            "progress": self.progress,
            "stage": self.stage,
            "result": self.result,
            "error": self.error,
            "last_seq": self.last_seq,
            "worker": self.worker,
            "attempts": self.attempts,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }

    def to_record(self) -> dict[str, Any]:
        """Every field, JSON-ready and lossless (for the broker's change channel)."""
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["status"] = self.status.value
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Execution:
        return cls(**{**record, "status": Status(record["status"])})

    def copy(self) -> Execution:
        """A shallow copy, so a store can hand out state without sharing it."""
        return Execution(**{name: getattr(self, name) for name in self.__dataclass_fields__})


#: Document fields the event log owns. A server-side replace of a document read
#: before an append leaves them alone, so a racing publish is never undone.
LOG_FIELDS = frozenset({"status", "progress", "stage", "result", "error", "last_seq", "updated_at", "last_event_at"})


@dataclass(slots=True, frozen=True)
class Event:
    """One stored event of an execution's stream."""

    execution_id: str
    seq: int
    event: str
    data: Any
    timestamp: float
    key: str | None = None

    def envelope(self) -> dict[str, Any]:
        """The wire form, identical on every transport."""
        return {
            "execution_id": self.execution_id,
            "seq": self.seq,
            "event": self.event,
            "timestamp": rfc3339(self.timestamp),
            "data": self.data,
        }


@dataclass(slots=True, frozen=True)
class PublishItem:
    """A validated request to append one event."""

    event: str
    data: Any
    key: str | None = None


def _check_progress(data: Any) -> None:
    if not isinstance(data, dict):
        raise bad_request("progress data must be an object", ErrorCode.INVALID_EVENT)
    value = data.get("progress")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise bad_request("progress must be a number from 0 to 100", ErrorCode.INVALID_EVENT)
    for name in ("stage", "status_text"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise bad_request(f"{name} must be a string", ErrorCode.INVALID_EVENT)


def _check_object_with(*required: str) -> Callable[[Any, str], None]:
    def check(data: Any, event: str) -> None:
        if not isinstance(data, dict):
            raise bad_request(f"{event} data must be an object", ErrorCode.INVALID_EVENT)
        for name in required:
            if not isinstance(data.get(name), str):
                raise bad_request(f"{event} data needs a string '{name}'", ErrorCode.INVALID_EVENT)

    return check


_check_token = _check_object_with("text")
_check_log = _check_object_with("level", "message")
_check_error = _check_object_with("error_type", "message")


def validate_item(raw: Any, index: int | None = None) -> PublishItem:
    """Check one publish object ``{event, data, key?}`` and return it typed.

    Events the server gives meaning to have their data shape checked, so that the
    execution document they update stays well-formed; other names are stored as sent.
    ``status`` is the server's own event and cannot be published.
    """
    where = {} if index is None else {"index": index}
    if not isinstance(raw, dict):
        raise bad_request("each event must be an object {event, data, key?}", ErrorCode.INVALID_EVENT, **where)
    unknown = set(raw) - {"event", "data", "key"}
    if unknown:
        raise bad_request(f"unknown fields: {', '.join(sorted(unknown))}", ErrorCode.INVALID_EVENT, **where)
    name = raw.get("event")
    if not isinstance(name, str) or not EVENT_NAME.match(name):
        raise bad_request("event must match ^[a-z][a-z0-9_.-]{0,63}$", ErrorCode.INVALID_EVENT, event=name, **where)
    if name == "status":
        raise bad_request("'status' events are made by the server", ErrorCode.INVALID_EVENT, **where)
    data = raw.get("data", {})
    key = raw.get("key")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH):
        raise bad_request(f"key must be a string of 1..{MAX_KEY_LENGTH} characters", **where)
    try:
        if name == "progress":
            _check_progress(data)
        elif name == "token":
            _check_token(data, name)
        elif name == "log":
            _check_log(data, name)
        elif name == "error":
            _check_error(data, name)
        elif name in ("complete", "cancelled") and not isinstance(data, dict):
            raise bad_request(f"{name} data must be an object", ErrorCode.INVALID_EVENT)
    except HeraldError as exc:
        exc.details.update(where)
        raise
    return PublishItem(name, data, key)


def validate_publish_body(body: Any) -> list[PublishItem]:
    """A publish body is one event object or a non-empty list of up to 1,000."""
    if isinstance(body, list):
        if not body:
            raise bad_request("an empty list publishes nothing")
        if len(body) > MAX_BATCH:
            raise bad_request(f"at most {MAX_BATCH} events per request", count=len(body))
        return [validate_item(item, i) for i, item in enumerate(body)]
    return [validate_item(body)]


@dataclass(slots=True)
class AppendPlan:
    """What one append does: the events to store, the seq answered for each request
    item (a repeated idempotency key answers the first seq), and the new document."""

    events: list[Event]
    seqs: list[int]
    execution: Execution


def apply_event(execution: Execution, event: Event) -> None:
    """Update the document the way ``event`` says (PROTOCOL.md section 1 table)."""
    data = event.data
    name = event.event
    if name == "progress":
        execution.progress = data["progress"]
        if data.get("stage") is not None:
            execution.stage = data["stage"]
    elif name == "status":
        execution.status = Status(data["status"])
    elif name == "complete":
        execution.status = Status.SUCCEEDED
        execution.result = data.get("result")
        execution.progress = 100
    elif name == "error":
        execution.status = Status.FAILED
        execution.error = {
            "error_type": data["error_type"],
            "message": data["message"],
            "details": data.get("details"),
        }
    elif name == "cancelled":
        execution.status = Status.CANCELLED
    execution.last_seq = event.seq
    execution.updated_at = event.timestamp
    execution.last_event_at = event.timestamp


def plan_append(
    execution: Execution,
    items: list[PublishItem],
    known_keys: dict[str, int],
    now: float | None = None,
) -> AppendPlan:
    """Decide what appending ``items`` to ``execution`` stores, without storing it.

    ``known_keys`` maps the idempotency keys already stored for this execution to
    their seq. Raises 409 when the stream is closed and a new event would be stored.
    A first event on a ``pending`` execution is preceded by the server's
    ``status: running`` event, unless it is terminal (the terminal event carries the
    change itself).
    """
    now = time.time() if now is None else now
    state = execution.copy()
    events: list[Event] = []
    seqs: list[int] = []
    batch_keys: dict[str, int] = {}
    for item in items:
        if item.key is not None:
            seen = known_keys.get(item.key) or batch_keys.get(item.key)
            if seen is not None:
                seqs.append(seen)
                continue
        if state.status.terminal:
            raise stream_closed(execution.id, state.status.value)
        if state.status is Status.PENDING and item.event not in TERMINAL_EVENTS:
            status_event = Event(execution.id, state.last_seq + 1, "status", {"status": "running"}, now)
            apply_event(state, status_event)
            events.append(status_event)
        event = Event(execution.id, state.last_seq + 1, item.event, item.data, now, item.key)
        apply_event(state, event)
        events.append(event)
        seqs.append(event.seq)
        if item.key is not None:
            batch_keys[item.key] = event.seq
    return AppendPlan(events, seqs, state)


def validate_new_execution(body: Any) -> tuple[str, dict[str, Any], str | None]:
    """Check ``POST /api/executions`` ``{kind, input?, queue?}``."""
    if not isinstance(body, dict):
        raise bad_request("the body must be an object {kind, input?, queue?}")
    unknown = set(body) - {"kind", "input", "queue"}
    if unknown:
        raise bad_request(f"unknown fields: {', '.join(sorted(unknown))}")
    kind = body.get("kind")
    if not isinstance(kind, str) or not KIND_NAME.match(kind):
        raise bad_request("kind must be a label of 1..64 letters, digits or _.:-")
    input_ = body.get("input", {})
    if input_ is None:
        input_ = {}
    if not isinstance(input_, dict):
        raise bad_request("input must be an object")
    queue = body.get("queue")
    if queue is not None and (not isinstance(queue, str) or not QUEUE_NAME.match(queue)):
        raise bad_request("queue must be a name of 1..64 letters, digits or _.:-")
    return kind, input_, queue
