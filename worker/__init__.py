"""Herald's worker SDK: serve a queue from any machine that can make outgoing
connections (behind NAT, a strict firewall, a laptop).

Implement ``Worker.run`` and serve it::

    class Echo(Worker):
        async def run(self, execution, emit):
            await emit.progress(50, stage="echoing")
            return {"echo": execution["input"]}

    asyncio.run(serve(Echo(), "http://127.0.0.1:8080", token, queue="echo", name="echo-1"))

``serve`` connects out over WebSocket (reconnecting with backoff); ``serve_http`` is
the fallback for networks without WebSocket (long-poll claims, HTTP publishes).
"""

from worker.base import Emit, Worker
from worker.http import HttpWorkerRunner, serve_http
from worker.websocket import FatalRefusal, WorkerRunner, serve

__all__ = ["Emit", "FatalRefusal", "HttpWorkerRunner", "Worker", "WorkerRunner", "serve", "serve_http"]
