"""A finished connection is freed by reference counting, not by the cycle collector.

``server.py`` collects cyclic garbage rarely (``core.runtime.tune_gc``: young
collections every 50,000 allocations), so every connection whose objects form a
reference cycle — the session and its transport, a source and its subscription, an
owned socket and its owner's callbacks, a Tornado handler never finished — waits in
memory until a full collection. Under churn that garbage is what sets the process's
memory high-water mark (docs/performance.md, "Memory under churn"). Here the collector
is off while connections of every kind open and end on a real server; then it is asked
what it would have had to free of the server's own objects: nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.fixtures_server import Herald

#: Modules whose objects are the server's (the test's own clients are Tornado's).
SERVER_MODULES = ("core.", "transports.", "handlers.", "server")

KINDS = [f"{what}-{how}" for what in ("execution", "streams", "feed") for how in ("websocket", "sse", "longpoll")]


async def open_and_end(h: Herald, kind: str, execution_id: str, token: str, wait: int = 1) -> None:
    """One connection of ``kind`` that is served, then ends (a long-poll held ``wait`` s)."""
    what, how = kind.split("-")
    path = {
        "execution": f"/api/executions/{execution_id}/events?",
        "streams": f"/api/streams?s={execution_id}:0&",
        "feed": "/api/executions/feed?",
    }[what]
    if how == "websocket":
        request = HTTPRequest(h.ws_base + path, headers={"Authorization": f"Bearer {token}"})
        conn = await websocket_connect(request)
        assert json.loads(await asyncio.wait_for(conn.read_message(), 5) or "{}")["control"] == "ready"
        conn.close()
    elif how == "sse":
        request = HTTPRequest(
            h.base_url + path,
            headers={"Accept": "text/event-stream", "Authorization": f"Bearer {token}"},
            streaming_callback=lambda chunk: None,
            request_timeout=0.3,
        )
        with contextlib.suppress(HTTPClientError):  # cut by the timeout: the client leaves
            await AsyncHTTPClient().fetch(request)
    else:
        if what == "feed":
            version = json.loads((await h.fetch(path, token=token)).body)["version"]
            path += f"since={version}&"
        assert (await h.fetch(path + f"wait={wait}", token=token)).code == 200


def server_garbage() -> list[str]:
    """The server's objects the cycle collector would free now."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found = sorted(
        {
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if (type(o).__module__ or "").startswith(SERVER_MODULES)
        }
    )
    gc.garbage.clear()
    return found


def test_a_finished_connection_leaves_no_cyclic_garbage(herald_run: Any) -> None:
    async def scenario(h: Herald) -> None:
        execution_id = (await h.create())["id"]
        token = h.mint()
        for kind in KINDS:  # first use of each path: caches, lazy imports
            await open_and_end(h, kind, execution_id, token, wait=0)
        await asyncio.sleep(0.2)
        gc.collect()
        gc.disable()
        try:
            left: dict[str, list[str]] = {}
            for kind in KINDS:
                await open_and_end(h, kind, execution_id, token)
                for _ in range(100):  # the server's side of the connection ends shortly after
                    if not h.core.sessions:
                        break
                    await asyncio.sleep(0.02)
                assert not h.core.sessions, kind
                found = server_garbage()
                if found:
                    left[kind] = found
            assert left == {}
        finally:
            gc.enable()

    herald_run(scenario)
