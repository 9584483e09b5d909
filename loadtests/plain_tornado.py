"""The baseline: a plain Tornado broadcast server, what most Tornado apps do.

``python loadtests/plain_tornado.py PORT``. Public API only: ``write_message`` per
WebSocket subscriber, ``write`` + ``flush`` per SSE stream, one Future per long-poller
(``GET /lp?since=SEQ`` answers the messages after SEQ, header ``X-Seq``). ``POST /pub``
broadcasts the body. ``loadtests/bench.py`` measures Herald against it in the same run.
"""

import asyncio
import sys

import tornado.ioloop
import tornado.web
import tornado.websocket

WS: set = set()
SSE: set = set()
LOG: list = []  # every message, so a poller can ask for what it missed
POLLERS: list = []


class WsSub(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True

    def open(self):
        WS.add(self)

    def on_close(self):
        WS.discard(self)


class SseSub(tornado.web.RequestHandler):
    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        self.write(": hi\n\n")
        self.flush()
        self.done = asyncio.get_running_loop().create_future()
        SSE.add(self)
        await self.done

    def on_connection_close(self):
        SSE.discard(self)
        if not self.done.done():
            self.done.set_result(None)


class LongPoll(tornado.web.RequestHandler):
    async def get(self):
        since = int(self.get_argument("since", "-1"))
        if since < 0:
            since = len(LOG)
        if since >= len(LOG):
            waiter = asyncio.get_running_loop().create_future()
            POLLERS.append(waiter)
            await waiter
        self.set_header("X-Seq", str(len(LOG)))
        self.finish(b"\n".join(LOG[since:]))


class Pub(tornado.web.RequestHandler):
    def post(self):
        msg = self.request.body.decode()
        LOG.append(self.request.body)
        for c in list(WS):
            c.write_message(msg)
        for s in list(SSE):
            s.write(f"data: {msg}\n\n")
            s.flush()
        waiters = POLLERS[:]
        POLLERS.clear()
        for w in waiters:
            if not w.done():
                w.set_result(None)
        self.finish(str(len(LOG)))


if __name__ == "__main__":
    app = tornado.web.Application([(r"/ws", WsSub), (r"/sse", SseSub), (r"/lp", LongPoll), (r"/pub", Pub)])
    app.listen(int(sys.argv[1]), "127.0.0.1", backlog=4096)
    tornado.ioloop.IOLoop.current().start()
