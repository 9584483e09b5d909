"""The MongoDB store: executions and their event logs in two collections.

Uses PyMongo's native ``AsyncMongoClient`` (Motor's successor) and only commands that
MongoDB 6+ has; no transactions, so a standalone server works as well as a replica set.

**How an append allocates seq without a gap or a duplicate, with several Herald
processes writing one execution.** The execution document's ``last_seq`` is the commit
point: an event is part of the log only when ``seq <= last_seq``. An append

1. reads the document (``last_seq`` L, ``fence`` F) and, when items carry idempotency
   keys, the committed events holding those keys;
2. plans with the pure ``core.model.plan_append`` (seq L+1 .. L+n);
3. inserts the n events with one ordered ``insert_many``, each tagged with a writer
   token and F. The unique ``(execution_id, seq)`` index makes a concurrent writer that
   planned from the same L fail on its first event;
4. commits with one compare-and-set, ``update_one({_id, last_seq: L, fence: F},
   {$set: new state})``, and is acknowledged only when that succeeded.

Events above ``last_seq`` are tentative: an append in flight, or one whose process
died (or lost the database) between steps 3 and 4. Readers never return them. A writer
blocked by tentative events waits for them to be committed; when the same ones block it
for ``STALE_AFTER`` seconds, it bumps ``fence`` (so their writer's commit can no longer
succeed) and deletes them. An unacknowledged append is thus either wholly committed or
wholly discarded, never half-stored. The happy path is 3 round trips per append (4
with idempotency keys), whatever the number of events in it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError
from pymongo.write_concern import WriteConcern

from core.errors import StoreUnavailable, not_found
from core.model import LOG_FIELDS, AppendPlan, Event, Execution, PublishItem, Status, plan_append

log = logging.getLogger("herald.store.mongo")

T = TypeVar("T")

#: Seconds the same tentative events may block appends before they are discarded.
STALE_AFTER = 3.0
#: Seconds an append keeps retrying against concurrent writers before answering 503.
APPEND_DEADLINE = 15.0

_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _parse_write_concern(value: str | int) -> WriteConcern:
    """``"majority"`` or a number of nodes; always journaled."""
    text = str(value).strip()
    w: str | int = int(text) if text.isdigit() else text
    return WriteConcern(w=w, j=True)


def _exec_doc(ex: Execution) -> dict[str, Any]:
    # Free-form JSON (input, result, error) is stored as JSON text: it round-trips any
    # client value exactly ($-prefixed keys, integers beyond 64 bits, key order).
    return {
        "_id": ex.id,
        "owner": ex.owner,
        "kind": ex.kind,
        "queue": ex.queue,
        "input": _json(ex.input),
        "status": ex.status.value,
        "progress": ex.progress,
        "stage": ex.stage,
        "result": _json(ex.result),
        "error": _json(ex.error),
        "last_seq": ex.last_seq,
        "created_at": ex.created_at,
        "updated_at": ex.updated_at,
        "worker": ex.worker,
        "attempts": ex.attempts,
        "last_event_at": ex.last_event_at,
    }


def _log_state(ex: Execution) -> dict[str, Any]:
    doc = _exec_doc(ex)
    return {name: doc[name] for name in LOG_FIELDS}


def _execution(doc: dict[str, Any]) -> Execution:
    return Execution(
        id=doc["_id"],
        owner=doc["owner"],
        kind=doc["kind"],
        queue=doc.get("queue"),
        input=json.loads(doc["input"]),
        status=Status(doc["status"]),
        progress=doc["progress"],
        stage=doc.get("stage"),
        result=json.loads(doc["result"]),
        error=json.loads(doc["error"]),
        last_seq=doc["last_seq"],
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
        worker=doc.get("worker"),
        attempts=doc.get("attempts", 0),
        last_event_at=doc.get("last_event_at"),
    )


def _event(doc: dict[str, Any]) -> Event:
    return Event(
        doc["execution_id"], doc["seq"], doc["event"], json.loads(doc["data"]), doc["timestamp"], doc.get("key")
    )


class MongoStore:
    """Store protocol over MongoDB (see the module docstring for seq allocation)."""

    def __init__(
        self,
        uri: str,
        database: str = "herald",
        write_concern: str | int = "majority",
        *,
        retention: float = 86400.0,
        server_selection_timeout: float = 2.0,
        operation_timeout: float = 10.0,
    ) -> None:
        self._uri = uri
        self._database_name = database
        self.write_concern = _parse_write_concern(write_concern)
        self.retention = retention
        self._selection_ms = int(server_selection_timeout * 1000)
        self._timeout_ms = int(operation_timeout * 1000)
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._indexed = False
        self._index_lock = asyncio.Lock()
        self._index_task: asyncio.Task[None] | None = None
        #: Appends from this process to one execution go one at a time: contention is
        #: then only between processes. Values: (lock, users).
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        #: (execution_id, last_seq, writer) → when this process first saw it blocking.
        self._blocked: dict[tuple[str, int, str], float] = {}
        #: Database round trips made, for the benchmark (per published event).
        self.round_trips = 0

    # --- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Create the client (no I/O) and the indexes; when MongoDB is down, keep
        trying in the background instead of failing start-up."""
        self._client = AsyncMongoClient(
            self._uri,
            serverSelectionTimeoutMS=self._selection_ms,
            connectTimeoutMS=self._selection_ms,
            socketTimeoutMS=self._timeout_ms,
            tz_aware=True,
            appname="herald",
        )
        db = self._client.get_database(self._database_name, write_concern=self.write_concern)
        self._executions = db.get_collection("executions")
        self._events = db.get_collection("events")
        self._tickets = db.get_collection("tickets")
        self._leases = db.get_collection("leases")
        try:
            await self._ensure_indexes()
        except StoreUnavailable as exc:
            # Serve anyway (``/readyz`` says 503); appends wait for the indexes, whose
            # uniqueness is what keeps seq dense.
            log.warning("MongoDB unavailable at start-up (%s); creating indexes when it answers", exc)
            self._index_task = asyncio.ensure_future(self._index_until_done())

    async def close(self) -> None:
        if self._index_task is not None and not self._index_task.done():
            self._index_task.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ping(self) -> None:
        await self._call(self._client_or_fail().admin.command("ping"))
        await self._ensure_indexes()

    async def _index_until_done(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._ensure_indexes()
                return
            except StoreUnavailable:
                continue

    async def _ensure_indexes(self) -> None:
        """Idempotent: ``createIndexes`` with the same specs is a no-op."""
        if self._indexed:
            return
        async with self._index_lock:
            if self._indexed:
                return
            await self._call(
                self._events.create_indexes(
                    [
                        IndexModel([("execution_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="seq_unique"),
                        IndexModel(
                            [("execution_id", ASCENDING), ("key", ASCENDING)],
                            unique=True,
                            partialFilterExpression={"key": {"$type": "string"}},
                            name="key_unique",
                        ),
                        # Each event carries its own expiry, so changing --retention
                        # needs no index rebuild (it applies to new events).
                        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="retention_ttl"),
                        IndexModel([("execution_id", ASCENDING), ("writer", ASCENDING)], name="writer"),
                    ]
                )
            )
            await self._call(
                self._executions.create_indexes(
                    [
                        IndexModel(
                            [("owner", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)], name="by_owner"
                        ),
                        IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="by_time"),
                        IndexModel(
                            [("queue", ASCENDING), ("status", ASCENDING), ("created_at", ASCENDING)], name="by_queue"
                        ),
                        IndexModel([("owner", ASCENDING), ("updated_at", ASCENDING)], name="changes_by_owner"),
                        IndexModel([("updated_at", ASCENDING)], name="changes"),
                    ]
                )
            )
            # Tickets and leases remove themselves when they die (a TTL index needs a date).
            await self._call(
                self._tickets.create_indexes([IndexModel([("dies", ASCENDING)], expireAfterSeconds=0, name="ttl")])
            )
            await self._call(
                self._leases.create_indexes([IndexModel([("expires", ASCENDING)], expireAfterSeconds=0, name="ttl")])
            )
            self._indexed = True
            log.info("MongoDB indexes ready in %s", self._database_name)

    def _client_or_fail(self) -> AsyncMongoClient[dict[str, Any]]:
        if self._client is None:
            raise StoreUnavailable("the MongoDB store is not started")
        return self._client

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """One database round trip: counted, and an outage becomes StoreUnavailable.
        ``DuplicateKeyError``/``BulkWriteError`` (a concurrent writer won) pass through."""
        self.round_trips += 1
        try:
            return await awaitable
        except (DuplicateKeyError, BulkWriteError) as exc:
            if isinstance(exc, BulkWriteError) and not _only_duplicates(exc):
                raise StoreUnavailable(f"MongoDB write failed: {_summary(exc)}") from None
            raise
        except PyMongoError as exc:
            raise StoreUnavailable(f"MongoDB unavailable: {_summary(exc)}") from None

    # --- executions ----------------------------------------------------------------
    async def create_execution(self, execution: Execution) -> None:
        doc = _exec_doc(execution)
        doc["fence"] = 0
        await self._call(self._executions.insert_one(doc))

    async def get_execution(self, execution_id: str) -> Execution | None:
        doc = await self._call(self._executions.find_one({"_id": execution_id}))
        return _execution(doc) if doc else None

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
        query: dict[str, Any] = {}
        if owner is not None:
            query["owner"] = owner
        if status is not None:
            query["status"] = status.value
        if kind is not None:
            query["kind"] = kind
        if queue is not None:
            query["queue"] = queue
        if before is not None:
            anchor = await self._call(self._executions.find_one({"_id": before}, {"created_at": 1}))
            if anchor is None:
                return []
            at = anchor["created_at"]
            query["$or"] = [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": before}}]
        cursor = self._executions.find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        docs = await self._call(cursor.to_list(limit))
        return [_execution(d) for d in docs]

    async def changed_since(self, *, owner: str | None, since: float, limit: int = 200) -> list[Execution]:
        query: dict[str, Any] = {"updated_at": {"$gt": since}}
        if owner is not None:
            query["owner"] = owner
        cursor = self._executions.find(query).sort([("updated_at", ASCENDING)]).limit(limit)
        return [_execution(d) for d in await self._call(cursor.to_list(limit))]

    # --- tickets and leases ----------------------------------------------------------
    async def put_ticket(self, ticket: str, claims: dict[str, Any], redeem_by: float, valid_until: float) -> None:
        doc = {
            "_id": ticket,
            "claims": claims,
            "redeem_by": redeem_by,
            "valid_until": valid_until,
            "dies": datetime.fromtimestamp(valid_until, tz=UTC),
            "stream": None,
        }
        await self._call(self._tickets.insert_one(doc))

    async def redeem_ticket(self, ticket: str, stream: str, reconnect: bool, now: float) -> dict[str, Any] | None:
        ways: list[dict[str, Any]] = [{"stream": None, "redeem_by": {"$gte": now}}]
        if reconnect:
            ways.append({"stream": stream})
        doc = await self._call(
            self._tickets.find_one_and_update(
                {"_id": ticket, "valid_until": {"$gt": now}, "$or": ways}, {"$set": {"stream": stream}}
            )
        )
        return None if doc is None else dict(doc["claims"])

    async def acquire_lease(self, key: str, holder: str, data: dict[str, Any], expires_at: float, now: float) -> bool:
        update = {
            "$set": {
                "holder": holder,
                "data": data,
                "expires_at": expires_at,
                "expires": datetime.fromtimestamp(expires_at, tz=UTC),
            }
        }
        free = {"_id": key, "$or": [{"holder": holder}, {"expires_at": {"$lte": now}}]}
        try:
            await self._call(self._leases.update_one(free, update, upsert=True))
        except DuplicateKeyError:
            return False  # held by another holder, unexpired: the upsert's insert collided
        return True

    async def release_lease(self, key: str, holder: str) -> None:
        await self._call(self._leases.delete_one({"_id": key, "holder": holder}))

    async def leases(self, prefix: str, now: float) -> list[dict[str, Any]]:
        query = {"_id": {"$regex": "^" + re.escape(prefix)}, "expires_at": {"$gt": now}}
        docs = await self._call(self._leases.find(query).sort([("_id", ASCENDING)]).to_list(None))
        return [{**d["data"], "key": d["_id"], "holder": d["holder"]} for d in docs]

    # --- the event log -------------------------------------------------------------
    async def append(self, execution_id: str, items: list[PublishItem]) -> AppendPlan:
        lock, users = self._locks.get(execution_id, (asyncio.Lock(), 0))
        self._locks[execution_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._append(execution_id, items)
        finally:
            lock, users = self._locks[execution_id]
            if users <= 1:
                del self._locks[execution_id]
            else:
                self._locks[execution_id] = (lock, users - 1)

    async def _append(self, execution_id: str, items: list[PublishItem]) -> AppendPlan:
        await self._ensure_indexes()
        keys = sorted({item.key for item in items if item.key is not None})
        deadline = time.monotonic() + APPEND_DEADLINE
        attempt = 0
        while True:
            doc, keyed = await self._read_for_append(execution_id, keys)
            if doc is None:
                raise not_found()
            current = _execution(doc)
            last, fence = current.last_seq, doc.get("fence", 0)
            known = {e["key"]: e["seq"] for e in keyed if e["seq"] <= last}
            plan = plan_append(current, items, known)
            if not plan.events:
                return plan
            writer = str(ObjectId())
            if await self._insert(plan.events, writer, fence):
                try:
                    committed = await self._commit(execution_id, last, fence, {"$set": _log_state(plan.execution)})
                except StoreUnavailable:
                    if await self._settle_failed_commit(execution_id, last, fence, writer, plan):
                        return plan
                    raise
                if committed:
                    self._forget_blocked(execution_id)
                    return plan
                # Fenced off (our events were judged stale) or the log moved on.
                await self._call(self._events.delete_many({"execution_id": execution_id, "writer": writer}))
            else:
                await self._wait_or_discard(execution_id, last, fence)
            attempt += 1
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"could not append to {execution_id}: too much contention")
            await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))

    async def _commit(self, execution_id: str, last: int, fence: int, update: dict[str, Any]) -> bool:
        """Compare-and-set on ``(last_seq, fence)``. A miss is confirmed by reading the
        document: SecantusDB was seen to answer ``n: 0`` under concurrent writes while
        the document still matched; MongoDB never does, so there it costs nothing."""
        match = {"_id": execution_id, "last_seq": last, "fence": fence}
        for _ in range(5):
            result = await self._call(self._executions.update_one(match, update))
            if result.matched_count:
                return True
            doc = await self._call(self._executions.find_one(match, {"_id": 1}))
            if doc is None:
                return False
            log.debug("compare-and-set on %s answered n=0 while the document matched; retrying", execution_id)
        return False

    async def _settle_failed_commit(
        self, execution_id: str, last: int, fence: int, writer: str, plan: AppendPlan
    ) -> bool:
        """The commit failed without a clear answer (it may have been applied before
        the connection dropped). Fence the document: if that matches, the commit did not
        happen and cannot happen any more, so our events are removed at once; if not,
        the commit happened when the log holds our last event. Best effort: when the
        database is gone, the tentative events are discarded later (``STALE_AFTER``)."""
        try:
            fenced = await self._call(
                self._executions.update_one(
                    {"_id": execution_id, "last_seq": last, "fence": fence}, {"$inc": {"fence": 1}}
                )
            )
            if fenced.matched_count:
                await self._call(self._events.delete_many({"execution_id": execution_id, "writer": writer}))
                return False
            end = plan.events[-1].seq
            doc = await self._call(self._executions.find_one({"_id": execution_id}, {"last_seq": 1}))
            mine = await self._call(self._events.find_one({"execution_id": execution_id, "seq": end}, {"writer": 1}))
            return bool(doc and doc["last_seq"] >= end and mine and mine.get("writer") == writer)
        except StoreUnavailable:
            return False

    async def _read_for_append(
        self, execution_id: str, keys: list[str]
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The document and the stored events holding any of ``keys`` (concurrently)."""
        doc_read = self._call(self._executions.find_one({"_id": execution_id}))
        if not keys:
            return await doc_read, []
        key_read = self._call(
            self._events.find(
                {"execution_id": execution_id, "key": {"$in": keys}}, {"key": 1, "seq": 1, "_id": 0}
            ).to_list(None)
        )
        doc, keyed = await asyncio.gather(doc_read, key_read)
        return doc, keyed

    async def _insert(self, events: list[Event], writer: str, fence: int) -> bool:
        """Insert tentative events; False when a concurrent writer holds a seq or key
        (our own partial insert is removed first)."""
        expires = datetime.fromtimestamp(time.time() + self.retention, tz=UTC)
        docs = []
        for e in events:
            d: dict[str, Any] = {
                "execution_id": e.execution_id,
                "seq": e.seq,
                "event": e.event,
                "data": _json(e.data),
                "timestamp": e.timestamp,
                "writer": writer,
                "fence": fence,
                "expires_at": expires,
            }
            if e.key is not None:
                d["key"] = e.key
            docs.append(d)
        try:
            await self._call(self._events.insert_many(docs, ordered=True))
            return True
        except BulkWriteError as exc:
            if exc.details.get("nInserted", 0):
                await self._call(self._events.delete_many({"execution_id": events[0].execution_id, "writer": writer}))
            return False

    async def _wait_or_discard(self, execution_id: str, last: int, fence: int) -> None:
        """Tentative events block us. Commonly an append in flight: the caller retries
        shortly. When the same writer's events have blocked this process for
        ``STALE_AFTER`` seconds, their writer died: fence it off and delete them."""
        blockers = await self._call(
            self._events.find(
                {"execution_id": execution_id, "seq": {"$gt": last}}, {"writer": 1, "seq": 1, "_id": 0}
            ).to_list(None)
        )
        if not blockers:
            return
        now = time.monotonic()
        writer = min(blockers, key=lambda b: b["seq"])["writer"]
        first_seen = self._blocked.setdefault((execution_id, last, writer), now)
        if now - first_seen < STALE_AFTER:
            return
        if await self._commit(execution_id, last, fence, {"$inc": {"fence": 1}}):
            gone = await self._call(
                self._events.delete_many({"execution_id": execution_id, "seq": {"$gt": last}, "fence": {"$lte": fence}})
            )
            log.warning("discarded %d uncommitted events of %s above seq %d", gone.deleted_count, execution_id, last)
        self._forget_blocked(execution_id)

    def _forget_blocked(self, execution_id: str) -> None:
        if self._blocked:
            for k in [k for k in self._blocked if k[0] == execution_id]:
                del self._blocked[k]

    async def events_after(self, execution_id: str, after: int, limit: int) -> list[Event]:
        doc = await self._call(self._executions.find_one({"_id": execution_id}, {"last_seq": 1}))
        if doc is None or doc["last_seq"] <= after or limit <= 0:
            return []
        cursor = (
            self._events.find({"execution_id": execution_id, "seq": {"$gt": after, "$lte": doc["last_seq"]}})
            .sort("seq", ASCENDING)
            .limit(limit)
        )
        return [_event(d) for d in await self._call(cursor.to_list(limit))]

    async def prune(self, older_than: float) -> int:
        """Retention now (the TTL index does it too, within about a minute)."""
        result = await self._call(self._events.delete_many({"timestamp": {"$lt": older_than}}))
        return result.deleted_count

    # --- worker dispatch (core/dispatch.py) -------------------------------------------
    # Each claim is one find_one_and_update: the match (pending, no worker) and the
    # write (this worker, attempts + 1) are atomic on the document, so two Herald
    # processes sharing the database never hand one execution out twice. Append never
    # writes ``worker``/``attempts`` (LOG_FIELDS), so a claim and a publish cannot undo
    # each other.
    async def claim_pending(self, queue: str, worker: str, now: float) -> Execution | None:
        from pymongo import ReturnDocument

        doc = await self._call(
            self._executions.find_one_and_update(
                {"queue": queue, "status": Status.PENDING.value, "worker": None},
                {"$set": {"worker": worker, "last_event_at": now}, "$inc": {"attempts": 1}},
                sort=[("created_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
        )
        return _execution(doc) if doc else None

    async def release(self, execution_id: str, worker: str) -> bool:
        result = await self._call(
            self._executions.update_one({"_id": execution_id, "worker": worker}, {"$set": {"worker": None}})
        )
        return result.matched_count > 0

    async def pending_counts(self) -> dict[str, int]:
        cursor = self._executions.find(
            {"queue": {"$ne": None}, "status": Status.PENDING.value, "worker": None}, {"queue": 1, "_id": 0}
        )
        counts: dict[str, int] = {}
        for doc in await self._call(cursor.to_list(None)):
            counts[doc["queue"]] = counts.get(doc["queue"], 0) + 1
        return counts

    async def stale_executions(self, older_than: float, limit: int = 100) -> list[Execution]:
        query = {
            "queue": {"$ne": None},
            "status": {"$in": [Status.PENDING.value, Status.RUNNING.value]},
            "$or": [{"worker": {"$ne": None}}, {"status": Status.RUNNING.value}],
            "last_event_at": {"$lt": older_than},
        }
        cursor = self._executions.find(query).limit(limit)
        return [_execution(d) for d in await self._call(cursor.to_list(limit))]


def _only_duplicates(exc: BulkWriteError) -> bool:
    details = exc.details or {}
    errors = details.get("writeErrors", [])
    return bool(errors) and not details.get("writeConcernErrors") and all(e.get("code") == 11000 for e in errors)


def _summary(exc: PyMongoError) -> str:
    return f"{exc.__class__.__name__}: {str(exc)[:200]}"
