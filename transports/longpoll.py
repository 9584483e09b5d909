"""JSON page / long-poll transport: ``GET ...?after=S&limit=L&wait=W``.

Answers ``{"events", "next_after", "done", "reset"}``. Events already stored after the
cursor come back at once; with none and ``wait`` > 0 the request is held on the same
Subscription the streaming transports use (``core.sources.ExecutionPage``) and answered
as soon as one arrives, so a poller wakes within milliseconds of a publish.

A poll is a whole HTTP request, every time, so its cost per request is the transport's
cost per delivery. It is therefore served one level below ``RequestHandler``: the long-poll
rule routes to ``LongPollRouter``, which gives Tornado's HTTP connection a ``PollRequest``
message delegate that reads the already-parsed request and writes its one answer
(status line, five headers, body) straight to the connection — none of the handler's
header map, ETag hashing, transforms or per-request coroutine wrappers. Errors keep the
contract's shape and the access line is the handlers' own. The dashboard feed's
long-poll uses the same delegate with its own source.

Tornado's HTTP/1 connection is still most of that cost (reading and parsing the head
through ``IOStream`` futures, the ``HTTPServerRequest``, an epoll change per request for
the close callback), so ``transports.poll_server.PollServer`` answers polls without it:
it reads a poll's head itself and hands the same ``Poll`` a ``Reply`` that writes the
answer in one ``send``. Either way a poll is this module's ``Poll``: the same
authentication, source, session, errors, CORS headers and access line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import formatdate
from typing import Any

from tornado.httputil import HTTPHeaders, HTTPMessageDelegate, HTTPServerRequest, ResponseStartLine, responses
from tornado.routing import Router, Rule

from core.auth import Principal
from core.codec import dumps
from core.errors import HeraldError
from core.multiplex import MultiPage
from core.service import Core
from core.session import Session, Source
from core.sources import ExecutionPage
from core.transport import CLIENT_GONE, Disconnect, Encoding, Heartbeat, TransportName
from transports.access_log import log_access, redacted_uri
from transports.cors import Header, answer_headers
from transports.errors import as_herald_error, retry_after
from transports.request import (
    STREAM_PATH,
    STREAMS_PATH,
    RequestMatches,
    authenticate_request,
    cursor,
    int_argument,
    stream_cursors,
    wants_page,
)
from transports.tornado_internals import shed_arguments

NAME = TransportName.LONGPOLL
MAX_WAIT = 60
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
CONTENT_TYPE = "application/json; charset=UTF-8"

log = logging.getLogger("herald.longpoll")

#: What a long-poll route does with an authenticated request: the source that makes
#: its page, and the seconds it may be held (0: answer at once).
PollOpener = Callable[[Core, HTTPServerRequest, Principal, dict[str, str]], Awaitable[tuple[Source, int]]]


#: How a poll's one answer goes out: the status, the body, and the headers besides
#: ``Content-Type``, ``Content-Length``, ``Cache-Control`` and ``Date`` (CORS, ``Retry-After``),
#: which every way of writing it adds itself.
Reply = Callable[[int, bytes, Sequence[Header]], None]


class LongPollTransport:
    """A ``Transport`` for one poll: its one write is the whole answer (with the CORS
    headers ``cors`` of the request's origin, ``transports.cors``), through ``reply``."""

    name = NAME
    encoding = Encoding.PAGE
    heartbeat = Heartbeat.NONE
    __slots__ = ("answered", "cors", "gone", "reply", "request", "subject")

    def __init__(self, request: HTTPServerRequest, cors: list[Header], reply: Reply) -> None:
        self.request = request
        self.cors = cors
        self.reply = reply
        self.gone = False
        self.answered = False
        #: The token subject, once authenticated (for the access line).
        self.subject: str | None = None

    def write(self, data: bytes) -> bool:
        self.respond(200, data, None)
        return True

    def pending_bytes(self) -> int:
        return 0

    def close(self, disconnect: Disconnect) -> None:
        if disconnect.error is not None:
            self.refuse(disconnect.error)

    def refuse(self, exc: BaseException) -> None:
        """Answer a refusal (or a failure) in the contract's error shape."""
        if not isinstance(exc, HeraldError):  # an answer, not a fault
            log.error("long-poll %s failed", redacted_uri(self.request.uri or ""), exc_info=exc)
        error = as_herald_error(exc, 500)
        self.respond(error.status, dumps(error.to_dict()).encode(), retry_after(error))

    def respond(self, status: int, body: bytes, retry: str | None) -> None:
        if self.gone or self.answered:
            return
        self.answered = True
        self.reply(status, body, self.cors if retry is None else [*self.cors, ("Retry-After", retry)])
        log_access(status, self.request, NAME.value, self.subject)


class Poll:
    """One poll, whichever HTTP path read it: authenticate, open the route's source,
    hold it in a Session, answer through the transport's ``reply``."""

    __slots__ = ("_task", "core", "opener", "path", "request", "session", "transport")

    def __init__(
        self, core: Core, request: HTTPServerRequest, opener: PollOpener, path: dict[str, str], reply: Reply
    ) -> None:
        self.core = core
        self.request = request
        self.opener = opener
        self.path = path
        origin = request.headers.get("Origin")
        self.transport = LongPollTransport(request, answer_headers(origin, request.path, core.settings), reply)
        self.session: Session | None = None
        self._task: asyncio.Task[None] | None = None  # held here: the loop keeps tasks weakly

    def start(self) -> None:
        """The request is read: serve it."""
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def client_gone(self) -> None:
        """The client closed its connection: nothing is answered."""
        self.transport.gone = True
        if self.session is not None:
            self.session.close(CLIENT_GONE)

    async def _serve(self) -> None:
        core, request = self.core, self.request
        try:
            principal = await authenticate_request(core, request, stream=True)
            self.transport.subject = principal.sub
            source, wait = await self.opener(core, request, principal, self.path)
            shed_arguments(request)  # read above; a held poll keeps the request
            deadline = time.time() + wait if wait else None  # the session answers then
            self.session = core.sessions.open(self.transport, principal, deadline=deadline)
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the error shape
            if isinstance(exc, HeraldError):
                core.sessions.refused(NAME.value, exc.code.value)
            self.transport.refuse(exc)
            return
        if self.transport.gone:
            self.session.close(CLIENT_GONE)
        await self.session.run(source)


class PollRequest(HTTPMessageDelegate):
    """A poll read by Tornado's HTTP/1 connection (the ``LongPollRouter``'s delegate),
    answered through it."""

    def __init__(self, core: Core, request: HTTPServerRequest, opener: PollOpener, path: dict[str, str]) -> None:
        self.request = request
        self.poll = Poll(core, request, opener, path, self.reply)

    def headers_received(self, start_line: Any, headers: HTTPHeaders) -> None:
        return None  # the router already holds the parsed request

    def data_received(self, chunk: bytes) -> None:
        return None  # a GET's body, if any, means nothing here

    def finish(self) -> None:
        """The request is read: serve it."""
        self.request.connection.set_close_callback(self.poll.client_gone)  # type: ignore[union-attr]
        self.poll.start()

    def reply(self, status: int, body: bytes, extra: Sequence[Header]) -> None:
        connection = self.request.connection
        if connection is None:
            return
        headers = HTTPHeaders()
        headers["Content-Type"] = CONTENT_TYPE
        headers["Content-Length"] = str(len(body))
        headers["Cache-Control"] = "no-store"
        headers["Date"] = http_date()
        for name, value in extra:
            headers[name] = value
        start = ResponseStartLine("HTTP/1.1", status, responses.get(status, "Unknown"))
        connection.write_headers(start, headers, body)
        connection.finish()


async def open_execution_page(
    core: Core, request: HTTPServerRequest, principal: Principal, path: dict[str, str]
) -> tuple[Source, int]:
    """An execution's page from ``after``, up to ``limit`` events, held up to ``wait``."""
    after = cursor(request)
    execution = await core.authorize_follow(principal, path["execution_id"], after)
    limit = int_argument(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    wait = int_argument(request, "wait", 0, 0, MAX_WAIT)
    return ExecutionPage(core, execution, after, limit), wait


async def open_streams_page(
    core: Core, request: HTTPServerRequest, principal: Principal, path: dict[str, str]
) -> tuple[Source, int]:
    """Several executions' page (``s=ID:AFTER`` repeated), up to ``limit`` events each,
    held up to ``wait`` until any of them has something."""
    requested = stream_cursors(request, required=True)
    limit = int_argument(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    wait = int_argument(request, "wait", 0, 0, MAX_WAIT)
    return MultiPage(core, requested, limit), wait


class LongPollRouter(Router):
    """A long-poll rule's target: a ``PollRequest`` for each matching request."""

    def __init__(self, core: Core, opener: PollOpener) -> None:
        self.core = core
        self.opener = opener

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> HTTPMessageDelegate | None:
        path = {k: v.decode() if isinstance(v, bytes) else v for k, v in kwargs.get("path_kwargs", {}).items()}
        return PollRequest(self.core, request, self.opener, path)


@functools.lru_cache(maxsize=2)
def _formatted_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def http_date() -> str:
    """The ``Date`` header (RFC 9110 6.6.1), formatted once per second."""
    return _formatted_date(int(time.time()))


def rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAM_PATH, wants_page), LongPollRouter(core, open_execution_page))


def streams_rule(core: Core) -> Rule:
    return Rule(RequestMatches(STREAMS_PATH, wants_page), LongPollRouter(core, open_streams_page))
