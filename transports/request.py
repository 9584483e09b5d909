"""Reading a request: which transport it asks for (routing), who sends it, and its
arguments and cursor. Shared by RequestHandlers and the long-poll delegate, which
reads the parsed request below RequestHandler.

Transport choice is routing (Tornado ``routing.Matcher``): one ``Rule`` per transport on
the one stream URL, each matching on what the request can do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher, PathMatches

from core.auth import Credentials, Principal, find_credentials
from core.errors import ErrorCode, bad_request, unauthorized
from core.multiplex import MAX_STREAMS, too_many
from core.service import Core

STREAM_PATH = r"/api/executions/(?P<execution_id>[A-Za-z0-9_-]{1,64})/events"
#: Several executions' streams over one connection (``s=ID:AFTER``, repeated).
STREAMS_PATH = r"/api/streams"
_EXECUTION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f]")  # as RequestHandler.get_argument


class RequestMatches(Matcher):
    """Matches a path *and* a predicate on the request (method, headers)."""

    def __init__(self, path: str, predicate: Callable[[HTTPServerRequest], bool]) -> None:
        self.path = PathMatches(path)
        self.predicate = predicate

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if not self.predicate(request):
            return None
        return self.path.match(request)

    def reverse(self, *args: Any) -> str | None:
        return self.path.reverse(*args)


def wants_websocket(request: HTTPServerRequest) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def wants_event_stream(request: HTTPServerRequest) -> bool:
    return request.method == "GET" and "text/event-stream" in request.headers.get("Accept", "")


def wants_page(request: HTTPServerRequest) -> bool:
    """Any GET that asks for neither a WebSocket nor an event stream: those, when their
    transport is turned off, fall through to an error instead of a JSON page."""
    return request.method == "GET" and not wants_websocket(request) and not wants_event_stream(request)


def query_argument(request: HTTPServerRequest, name: str) -> str | None:
    """The last value of a query parameter, decoded and stripped as Tornado's
    ``get_query_argument`` does; None when absent."""
    values = request.query_arguments.get(name)
    if not values:
        return None
    try:
        text = values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"{name} is not valid UTF-8") from None
    return _CONTROL_CHARS.sub(" ", text).strip()


def request_credentials(
    request: HTTPServerRequest, cookie_name: str, subprotocols: Iterable[str] = ()
) -> Credentials | None:
    cookie = request.cookies.get(cookie_name)
    return find_credentials(
        authorization=request.headers.get("Authorization"),
        subprotocols=subprotocols,
        ticket=query_argument(request, "ticket"),
        access_token=query_argument(request, "access_token"),
        cookie=cookie.value if cookie is not None else None,
    )


async def authenticate_request(
    core: Core, request: HTTPServerRequest, subprotocols: Iterable[str] = (), *, stream: bool = False
) -> Principal:
    """The caller's Principal from header, subprotocol, ticket, parameter or cookie. A
    ticket opens streams only (``stream``): it is redeemed for the request's path, again
    for that path's reconnects (a request carrying ``Last-Event-ID``)."""
    creds = request_credentials(request, core.settings.cookie_name, subprotocols)
    if creds is None:
        raise unauthorized("no credentials: send 'Authorization: Bearer <jwt>' or a ticket")
    began = time.perf_counter()
    try:
        if creds.kind == "ticket":
            if not stream:
                raise unauthorized("a ticket opens streams only: send 'Authorization: Bearer <jwt>'")
            reconnect = bool(request.headers.get("Last-Event-ID", "").strip())
            return await core.tickets.redeem(creds.value, request.path, reconnect)
        return core.auth.decode(creds.value)
    finally:
        core.metrics.auth_seconds.observe(time.perf_counter() - began)


def int_argument(request: HTTPServerRequest, name: str, default: int, low: int, high: int) -> int:
    raw = query_argument(request, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", **{name: raw}) from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}", **{name: value})
    return value


def cursor(request: HTTPServerRequest, header: bool = False) -> int:
    """``after`` (or, for SSE, ``Last-Event-ID``, which wins)."""
    raw = request.headers.get("Last-Event-ID") if header else None
    if raw is None or raw.strip() == "":
        raw = query_argument(request, "after")
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise bad_request("the cursor must be an integer", ErrorCode.CURSOR_OUT_OF_RANGE, after=raw) from None
    if value < 0:
        raise bad_request("the cursor must not be negative", ErrorCode.CURSOR_OUT_OF_RANGE, after=value)
    return value


def stream_cursors(request: HTTPServerRequest, *, required: bool) -> dict[str, int]:
    """The executions an ``/api/streams`` request names, each with its cursor:
    ``s=ID:AFTER`` (``AFTER`` 0 when left out), repeated, at most ``MAX_STREAMS``, each
    execution once. ``required``: SSE and long-poll must name one; a WebSocket may
    subscribe later."""
    values = request.query_arguments.get("s", [])
    if len(values) > MAX_STREAMS:
        raise too_many()
    if required and not values:
        raise bad_request("name the executions to follow: s=ID:AFTER, repeated")
    cursors: dict[str, int] = {}
    for value in values:
        try:
            text = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise bad_request("s is not valid UTF-8") from None
        execution_id, _, raw = text.partition(":")
        if not _EXECUTION_ID.fullmatch(execution_id):
            raise bad_request("s must be ID:AFTER with an execution id", s=text)
        if execution_id in cursors:
            raise bad_request("each execution may be named once", s=text)
        try:
            after = int(raw) if raw else 0
        except ValueError:
            raise bad_request("the cursor must be an integer", ErrorCode.CURSOR_OUT_OF_RANGE, s=text) from None
        if after < 0:
            raise bad_request("the cursor must not be negative", ErrorCode.CURSOR_OUT_OF_RANGE, s=text)
        cursors[execution_id] = after
    return cursors
