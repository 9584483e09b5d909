"""Locust users for Herald: followers on each transport and publishers.

Run by ``loadtests/run.py`` (which starts the server, creates the executions and
passes them in the environment); by hand::

    HERALD_LOAD_TOKEN=<jwt> HERALD_LOAD_EXECUTIONS=ex_a,ex_b locust -f loadtests/locustfile.py \\
        --host http://127.0.0.1:8080

Every event a follower receives is reported to Locust as its own request: type
``WS``, ``SSE`` or ``LP``, name ``deliver``, response time = publish-to-deliver latency
(now minus the envelope's server ``timestamp``; client and server share the clock
here, and the timestamp has millisecond resolution, so a figure is at most 1 ms high).
So Locust's tables, CSV and HTML report carry latency percentiles per transport. A
follower also reports ``connect`` (time to the ``ready`` control message, or to the
first answer for long-poll) and a failure for every stream that ends early; it resumes
with its cursor as a real client would.

Publishers wait until ``HERALD_LOAD_PUBLISH_AT`` (epoch seconds). Class counts are set
by ``run.py`` from the preset through ``HERALD_LOAD_MIX``
(``ws,sse,lp,publishers`` as fixed counts).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from datetime import datetime

import requests
import websocket
from locust import HttpUser, User, constant, constant_throughput, events, task

TOKEN = os.environ.get("HERALD_LOAD_TOKEN", "")
EXECUTIONS = [e for e in os.environ.get("HERALD_LOAD_EXECUTIONS", "").split(",") if e]
MIX = [int(x) for x in os.environ.get("HERALD_LOAD_MIX", "6,3,1,1").split(",")]
PROCESSES = max(1, int(os.environ.get("HERALD_LOAD_PROCESSES", "1")))  # Locust --processes
PUBLISH_RATE = float(os.environ.get("HERALD_LOAD_PUBLISH_RATE", "6"))  # tasks/s per publisher
LONGPOLL_WAIT = int(os.environ.get("HERALD_LOAD_LP_WAIT", "20"))
# Publishers start when every follower is connected (run.py: the spawn time plus a
# margin), so no event is replayed from the store and counted as a slow delivery.
PUBLISH_AT = float(os.environ.get("HERALD_LOAD_PUBLISH_AT", "0"))
_next_follower = itertools.count()
_next_publisher = itertools.count()


def pick(counter: itertools.count) -> str:
    if not EXECUTIONS:
        raise RuntimeError("HERALD_LOAD_EXECUTIONS is empty: start through loadtests/run.py")
    return EXECUTIONS[next(counter) % len(EXECUTIONS)]


def latency_ms(envelope: dict) -> float:
    """Publish-to-deliver: now minus the server's RFC 3339 timestamp."""
    sent = datetime.fromisoformat(envelope["timestamp"]).timestamp()
    return max(0.0, (time.time() - sent) * 1000)


class Follower(User):
    """Shared bookkeeping: the execution, the cursor, and reporting to Locust."""

    abstract = True
    wait_time = constant(0)
    kind = "?"

    def on_start(self) -> None:
        self.execution_id = pick(_next_follower)
        self.after = 0
        self.url = f"{self.host}/api/executions/{self.execution_id}/events"

    def report(self, name: str, ms: float, length: int = 0, error: Exception | None = None) -> None:
        events.request.fire(
            request_type=self.kind,
            name=name,
            response_time=ms,
            response_length=length,
            exception=error,
            context={},
        )

    def delivered(self, envelope: dict, length: int) -> None:
        seq = envelope["seq"]
        if seq != self.after + 1:
            self.report("order", 0, error=AssertionError(f"got seq {seq} after {self.after}"))
        self.after = seq
        self.report("deliver", latency_ms(envelope), length)


class WebSocketFollower(Follower):
    """A WebSocket follower: token in the subprotocol list, as a browser sends it."""

    fixed_count = MIX[0]
    kind = "WS"

    @task
    def follow(self) -> None:
        url = self.url.replace("http", "ws", 1) + f"?after={self.after}"
        t0 = time.time()
        try:
            # skip_utf8_validation: websocket-client checks UTF-8 byte by byte in Python
            # otherwise, which would make the client, not the server, the bottleneck.
            ws = websocket.create_connection(
                url,
                subprotocols=["herald.v1", f"herald.bearer.{TOKEN}"],
                timeout=30,
                skip_utf8_validation=True,
            )
        except Exception as exc:  # noqa: BLE001 - any failure is a failed request in Locust's report
            self.report("connect", (time.time() - t0) * 1000, error=exc)
            time.sleep(1)
            return
        try:
            first = json.loads(ws.recv())
            if first.get("control") != "ready":
                raise RuntimeError(f"expected ready, got {first}")
            self.report("connect", (time.time() - t0) * 1000)
            while True:
                frame = ws.recv()
                if not frame:
                    raise ConnectionError(
                        f"closed with {ws.status} {ws.close_frame if hasattr(ws, 'close_frame') else ''}"
                    )
                message = json.loads(frame)
                if "seq" in message:
                    self.delivered(message, len(frame))
        except Exception as exc:  # noqa: BLE001 - any failure is a failed request in Locust's report
            self.report("stream", 0, error=exc)
        finally:
            ws.close()


class SseFollower(Follower):
    """An SSE follower (Bearer header, as a service or the Python client sends it)."""

    fixed_count = MIX[1]
    kind = "SSE"

    @task
    def follow(self) -> None:
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {TOKEN}"}
        if self.after:
            headers["Last-Event-ID"] = str(self.after)
        t0 = time.time()
        try:
            with requests.get(self.url, headers=headers, stream=True, timeout=(10, 60)) as r:
                r.raise_for_status()
                buf = b""
                ready = False
                for chunk in r.iter_content(chunk_size=None):
                    buf += chunk
                    while b"\n\n" in buf:
                        block, buf = buf.split(b"\n\n", 1)
                        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
                        if not data:
                            continue
                        message = json.loads(data[0])
                        if "seq" in message:
                            self.delivered(message, len(block))
                        elif message.get("control") == "ready" and not ready:
                            ready = True
                            self.report("connect", (time.time() - t0) * 1000)
                raise ConnectionError("the event stream ended")
        except Exception as exc:  # noqa: BLE001 - any failure is a failed request in Locust's report
            self.report("stream", (time.time() - t0) * 1000, error=exc)
            time.sleep(0.5)


class LongPoller(Follower):
    """A long-poller: ``?after=N&wait=W`` in a loop, on one keep-alive session."""

    fixed_count = MIX[2]
    kind = "LP"

    def on_start(self) -> None:
        super().on_start()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"
        self.connected = False

    @task
    def poll(self) -> None:
        t0 = time.time()
        try:
            r = self.session.get(
                self.url, params={"after": self.after, "wait": LONGPOLL_WAIT}, timeout=LONGPOLL_WAIT + 10
            )
            r.raise_for_status()
            page = r.json()
        except Exception as exc:  # noqa: BLE001 - any failure is a failed request in Locust's report
            self.report("poll", (time.time() - t0) * 1000, error=exc)
            time.sleep(0.5)
            return
        if not self.connected:
            self.connected = True
            self.report("connect", (time.time() - t0) * 1000)
        for envelope in page["events"]:
            self.delivered(envelope, 0)
        self.after = page["next_after"]


class Publisher(HttpUser):
    """Publishes to one execution: single events, and batches of five."""

    fixed_count = MIX[3]
    wait_time = constant_throughput(PUBLISH_RATE)

    def on_start(self) -> None:
        # Publisher k of P serves executions k, k+P, k+2P, ... in turn (one each when
        # there are as many executions as publishers). Under ``--processes`` each
        # worker counts its own publishers, so k interleaves the worker's index.
        runner = self.environment.runner
        k = getattr(runner, "worker_index", 0) + PROCESSES * next(_next_publisher)
        mine = EXECUTIONS[k % MIX[3] :: MIX[3]] or EXECUTIONS
        self.targets = itertools.cycle(mine)
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        self.n = 0
        delay = PUBLISH_AT - time.time()
        if delay > 0:
            time.sleep(delay)

    def _item(self) -> dict:
        self.n += 1
        return {"event": "token", "data": {"text": f"token {self.n} " + "x" * 120}}

    def _path(self) -> str:
        return f"/api/executions/{next(self.targets)}/events"

    @task(3)
    def publish(self) -> None:
        self.client.post(self._path(), data=json.dumps(self._item()), headers=self.headers, name="publish")

    @task(1)
    def publish_batch(self) -> None:
        body = json.dumps([self._item() for _ in range(5)])
        self.client.post(self._path(), data=body, headers=self.headers, name="publish batch")
