"""Redis broker: carries stored events between Herald processes (``--redis-url``).

Each execution is a Redis channel ``herald:ex:<id>``; a process subscribes to the
channels its own subscribers follow. A message is ``[origin, [events' stored fields]]``:
a process skips its own messages (it delivered them to its subscribers itself).
Redis Pub/Sub is at-most-once: while Redis is unreachable ``healthy`` is False (the
Core then reads the store once a second for what it follows) and publishes are
skipped; after a reconnection, messages sent meanwhile are gone, so the broker tells
the Core to ``resync`` — every subscription re-reads the store from its cursor, and
nothing is skipped. An outage is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.broker.base import Listener
from core.model import Event

log = logging.getLogger("herald.redis")
PREFIX = "herald:ex:"


#: Longest a publish may wait for Redis before it is given up (the events are stored).
PUBLISH_TIMEOUT = 1.0


def encode_events(events: list[Event], origin: str = "") -> str:
    fields = [[e.execution_id, e.seq, e.event, e.data, e.timestamp, e.key] for e in events]
    return json.dumps([origin, fields], separators=(",", ":"), allow_nan=False)


def decode_events(payload: bytes | str) -> tuple[str, list[Event]]:
    """The origin process of a message and its events."""
    origin, fields = json.loads(payload)
    return origin, [Event(ex, seq, name, data, ts, key) for ex, seq, name, data, ts, key in fields]


class RedisBroker:
    """Broker protocol over Redis Pub/Sub, with resubscription after outages."""

    def __init__(self, url: str, *, reconnect_delay: float = 0.5) -> None:
        self.url = url
        self.reconnect_delay = reconnect_delay
        #: This process, on the wire: its own messages come back and are skipped.
        self.origin = secrets.token_hex(8)
        self._healthy = False
        self._outage_logged = False
        self._listeners: dict[str, Listener] = {}
        self._client: aioredis.Redis | None = None
        self._pubsub: aioredis.client.PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending_ops: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._ops_task: asyncio.Task[None] | None = None
        self.on_resync: Callable[[], None] | None = None

    async def start(self) -> None:
        self._client = aioredis.from_url(self.url, socket_connect_timeout=2, socket_timeout=None)
        self._reader = asyncio.ensure_future(self._read_forever())
        self._ops_task = asyncio.ensure_future(self._apply_ops())

    async def close(self) -> None:
        for task in (self._reader, self._ops_task):
            if task is not None:
                task.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):  # closing a connection that may be broken
                await self._pubsub.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def ping(self) -> None:
        assert self._client is not None
        await self._client.ping()

    def subscribe(self, channel: str, listener: Listener) -> None:
        self._listeners[channel] = listener
        self._pending_ops.put_nowait(("subscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        if self._listeners.pop(channel, None) is not None:
            self._pending_ops.put_nowait(("unsubscribe", channel))

    @property
    def shared(self) -> bool:
        return True  # other processes publish too

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def publish(self, channel: str, events: list[Event]) -> None:
        """To the other processes; skipped while Redis is unreachable (they read the
        store meanwhile), and never waits more than ``PUBLISH_TIMEOUT``."""
        if not self._healthy or self._client is None:
            return
        try:
            await asyncio.wait_for(
                self._client.publish(PREFIX + channel, encode_events(events, self.origin)), PUBLISH_TIMEOUT
            )
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            self._lost(exc)

    async def _apply_ops(self) -> None:
        """Subscribe/unsubscribe in order, off the caller's path (subscribe is sync)."""
        while True:
            op, channel = await self._pending_ops.get()
            pubsub = self._pubsub
            if pubsub is None:
                continue  # the reader subscribes everything when it connects
            try:
                if op == "subscribe" and channel in self._listeners:
                    await pubsub.subscribe(PREFIX + channel)
                elif op == "unsubscribe" and channel not in self._listeners:
                    await pubsub.unsubscribe(PREFIX + channel)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._lost(exc)  # the reader resubscribes everything when it reconnects

    async def _read_forever(self) -> None:
        first = True
        while True:
            try:
                assert self._client is not None
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                # A placeholder channel keeps the connection in subscribed mode.
                await self._pubsub.subscribe(PREFIX + "_", *(PREFIX + c for c in self._listeners))
                self._healthy = True
                if self._outage_logged:
                    self._outage_logged = False
                    log.warning("redis reachable again; live delivery between processes resumes")
                if not first and self.on_resync is not None:
                    self.on_resync()
                first = False
                async for message in self._pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    channel = message["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    listener = self._listeners.get(channel[len(PREFIX) :])
                    if listener is None:
                        continue
                    origin, events = decode_events(message["data"])
                    if origin != self.origin:
                        listener(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any outage: reconnect
                self._lost(exc)
                self._pubsub = None
                first = False
                await asyncio.sleep(self.reconnect_delay)

    def _lost(self, exc: BaseException) -> None:
        """Redis went away: say so once per outage; the Core reads the store meanwhile."""
        self._healthy = False
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("redis unreachable (%s); other processes' events come from the store until it is back", exc)
