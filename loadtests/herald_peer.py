"""Herald as a benchmark peer: ``python loadtests/herald_peer.py PORT [server options]``.

Starts a real Herald server (embedded store, in-process broker, the same ``make_app``
as ``server.py``) with one fixed execution, ``ex_bench``, and one extra route:
``POST /pub`` publishes the request body, verbatim, as the ``text`` of one ``token``
event on that execution, through ``Core.publish`` (store append, broker, fan-out) —
the same path ``POST /api/executions/ID/events`` takes, minus the JSON body parsing
and auth. That is the publish endpoint the shared peer harness expects
(``../shared/bench/harness.py``: "a /pub that broadcasts the body"), so Herald can be
measured there as one more peer, and ``loadtests/bench.py`` uses it too.

Streams: ``/api/executions/ex_bench/events?access_token=<BENCH_TOKEN>`` on every
transport. The token is deterministic (fixed secret, fixed ``exp`` in 2100) so a peer
class can carry the URL as a constant.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tornado.web

from core.model import Execution, PublishItem, Status
from core.runtime import tune_gc
from core.service import Core
from server import build_core, make_app, parse_settings, shut_down
from transports.poll_server import PollServer

BENCH_SECRET = "herald-bench-secret-not-for-production"
BENCH_EXECUTION = "ex_bench"
# HS256 over {"sub": "bench", "exp": 4102444800, "scope": "executions:read"}: printed by
# ``python loadtests/herald_peer.py --token`` and checked at start-up.
BENCH_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCIsImV4cCI6NDEwMjQ0NDgwMCwic2NvcGUiOiJleGVjdXRpb25zOnJlYWQifQ."
    "RLcMjlRQSOx2uKZ5LYhE_j27YCxsxsxSGFWfmno8G8I"
)
STREAM_PATH = f"/api/executions/{BENCH_EXECUTION}/events"
#: Executions nothing publishes to, followed beside ``ex_bench`` by the multiplexed
#: tests: each subscriber holds ten subscriptions over one ``/api/streams`` connection.
QUIET_EXECUTIONS = tuple(f"ex_bench{i}" for i in range(1, 10))
STREAMS_PATH = "/api/streams?" + "&".join(f"s={eid}:0" for eid in (BENCH_EXECUTION, *QUIET_EXECUTIONS))


def bench_token() -> str:
    """The deterministic read token for ``ex_bench``."""
    import jwt

    claims = {"sub": "bench", "exp": 4102444800, "scope": "executions:read"}
    return jwt.encode(claims, BENCH_SECRET, algorithm="HS256")


class PublishBody(tornado.web.RequestHandler):
    """``POST /pub``: the body becomes ``{"text": body}`` of a ``token`` event."""

    def initialize(self, core: Core) -> None:
        self.core = core

    async def post(self) -> None:
        text = self.request.body.decode("utf-8", "replace")
        seqs = await self.core.publish(BENCH_EXECUTION, [PublishItem("token", {"text": text})])
        self.finish(b"%d" % seqs[-1])


async def run(port: int, options: list[str]) -> None:
    argv = ["--port", str(port), "--jwt-secret", BENCH_SECRET, "--heartbeat", "60", "--log-level", "warning"]
    argv += ["--max-connections-per-subject", "0"]  # one bench token holds every connection
    settings = parse_settings(argv + options, {})
    core = build_core(settings)
    if bench_token() != BENCH_TOKEN:
        raise SystemExit("BENCH_TOKEN is stale: update it from --token")
    await core.start()
    now = time.time()
    for execution_id in (BENCH_EXECUTION, *QUIET_EXECUTIONS):
        await core.store.create_execution(
            Execution(
                id=execution_id, owner="bench", kind="bench", status=Status.RUNNING, created_at=now, updated_at=now
            )
        )
    app = make_app(core, [(r"/pub", PublishBody, {"core": core})])
    server = PollServer(app, idle_connection_timeout=3600)
    server.listen(port, "127.0.0.1", backlog=4096)
    if os.environ.get("HERALD_BENCH_GC") != "default":  # experiment: CPython's own thresholds
        tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await shut_down(server, core, drain_timeout=2.0)


def main() -> None:
    if os.environ.get("HERALD_BENCH_NAGLE") == "1":
        # Experiment only (docs/performance.md): keep Nagle on, as before the
        # transports set TCP_NODELAY, to measure what one packet per delivery costs.
        from tornado.iostream import IOStream

        IOStream.set_nodelay = lambda self, value: None  # type: ignore[method-assign]
    if sys.argv[1:2] == ["--token"]:
        print(bench_token())
        return
    asyncio.run(run(int(sys.argv[1]), sys.argv[2:]))


if __name__ == "__main__":
    main()
