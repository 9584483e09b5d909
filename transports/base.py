"""What every transport shares: request matching, authentication, cursor parsing, the
error shape, and the socket write that skips Tornado's per-write overhead.

Transport choice is routing (Tornado ``routing.Matcher``): one ``Rule`` per transport on
the one stream URL, each matching on what the request can do.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import tornado.web
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError
from tornado.routing import Matcher, PathMatches

from core.auth import Credentials, Principal, find_credentials
from core.errors import ErrorCode, HeraldError, bad_request, unauthorized
from core.stream import Core

log = logging.getLogger("herald.transport")

STREAM_PATH = r"/api/executions/(?P<execution_id>[A-Za-z0-9_-]{1,64})/events"


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


_CODES_BY_STATUS = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.EVENT_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


def as_herald_error(exc: BaseException | None, status: int) -> HeraldError:
    """Any exception a handler let out, as the contract's error (no stack traces)."""
    if isinstance(exc, HeraldError):
        return exc
    if isinstance(exc, tornado.web.HTTPError):
        status = exc.status_code
        message = exc.log_message or exc.reason or tornado.httputil.responses.get(status, "error")
        if exc.args and "%" in (exc.log_message or ""):
            message = exc.log_message % exc.args
        return HeraldError(_CODES_BY_STATUS.get(status, ErrorCode.BAD_REQUEST), status, message)
    if status < 500:
        return HeraldError(_CODES_BY_STATUS.get(status, ErrorCode.BAD_REQUEST), status, "bad request")
    return HeraldError(ErrorCode.INTERNAL, 500, "internal error; the server log has the details")


def retry_after(error: HeraldError) -> str | None:
    """The ``Retry-After`` value an error answer carries: its own, or 1 s for 429/503."""
    if error.retry_after is not None or error.status in (429, 503):
        return str(error.retry_after or 1)
    return None


class HeraldRequestHandler(tornado.web.RequestHandler):
    """Base for every HTTP handler: receives the Core, renders errors one way."""

    core: Core

    def initialize(self, core: Core) -> None:
        self.core = core

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = as_herald_error(exc, status_code)
        self.set_status(error.status)
        retry = retry_after(error)
        if retry is not None:
            self.set_header("Retry-After", retry)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(error.to_dict())

    def log_exception(self, typ, value, tb) -> None:  # type: ignore[override]
        if isinstance(value, HeraldError):
            return  # an answer, not a fault
        super().log_exception(typ, value, tb)

    def credentials(self, subprotocols: list[str] | None = None) -> Credentials | None:
        return request_credentials(self.request, self.core.settings.cookie_name, subprotocols or ())

    def authenticate(self, subprotocols: list[str] | None = None) -> Principal:
        """The caller's Principal from header, subprotocol, ticket, parameter or cookie."""
        return authenticate_request(self.core, self.request, subprotocols or ())

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        return int_argument(self.request, name, default, low, high)

    def cursor(self, header: bool = False) -> int:
        """``after`` (or, for SSE, ``Last-Event-ID``, which wins)."""
        return cursor(self.request, header)


# --- Reading a request (shared by RequestHandlers and the long-poll delegate) ----------
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f]")  # as RequestHandler.get_argument


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


def authenticate_request(core: Core, request: HTTPServerRequest, subprotocols: Iterable[str] = ()) -> Principal:
    """The caller's Principal from header, subprotocol, ticket, parameter or cookie."""
    creds = request_credentials(request, core.settings.cookie_name, subprotocols)
    if creds is None:
        raise unauthorized("no credentials: send 'Authorization: Bearer <jwt>' or a ticket")
    if creds.kind == "ticket":
        return core.tickets.redeem(creds.value)
    return core.auth.decode(creds.value)


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


# --- The access log -----------------------------------------------------------------
REDACTED_PARAMS = ("access_token", "ticket", "token")
ACCESS_LOG = logging.getLogger("tornado.access")


def redacted_uri(uri: str) -> str:
    """The request URI with credentials in the query replaced by ``***``."""
    parts = urlsplit(uri)
    if not parts.query:
        return uri
    query = [(k, "***" if k in REDACTED_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def log_access(status: int, request: HTTPServerRequest) -> None:
    """One access line, without tokens or tickets; nothing is formatted when the
    level is off (redacting the URI costs more than the rest of a long-poll answer)."""
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not ACCESS_LOG.isEnabledFor(level):
        return
    ACCESS_LOG.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        redacted_uri(request.uri or ""),
        request.remote_ip,
        1000.0 * request.request_time(),
    )


class _SentHeaders(HTTPHeaders):
    """Stands in for header maps a long-lived stream holds after they went on the wire;
    any later change is a bug, so it fails loudly instead of writing into shared state."""

    def __setitem__(self, name: str, value: str) -> None:
        raise RuntimeError("these headers were already sent")

    def add(self, name: str, value: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("these headers were already sent")


SENT_HEADERS = _SentHeaders()


#: Stands in for a request's parsed arguments once they were read (read-only, shared).
NO_ARGUMENTS: Mapping[str, list[bytes]] = MappingProxyType({})


def shed_arguments(request: HTTPServerRequest) -> None:
    """Drop a request's parsed query once the handler has read it. Tornado keeps it
    twice (``query_arguments`` and a deep copy in ``arguments``), and a token in the
    query (``?access_token=``, what proxies and the shared bench use) is ~250 bytes in
    each: ~1.5-2 KB per held long-poll or stream. The token also leaves memory."""
    request.query_arguments = request.arguments = NO_ARGUMENTS  # type: ignore[assignment]
    request.body_arguments = request.files = NO_ARGUMENTS  # type: ignore[assignment]
    request.__dict__.pop("_cookies", None)  # parsed on demand again, from the headers


def shed_handshake(handler: tornado.web.RequestHandler) -> None:
    """Drop what a stream no longer needs once its response headers are written: the
    response header map, the request's parsed headers and arguments, and the query
    (with any token in it) from the URI it keeps. A held connection is mostly Tornado's
    own objects (~16 KB); these are 2-4 KB of it that Herald can free."""
    request = handler.request
    handler._headers = SENT_HEADERS  # noqa: SLF001 - RequestHandler has no public way
    request.headers = SENT_HEADERS
    shed_arguments(request)
    request.uri = request.path
    request.query = ""


class FastWriter:
    """Writes bytes to a connection's socket directly when Tornado has nothing queued
    for it, and through ``IOStream.write`` otherwise (so order is kept).

    This is what makes a fan-out cheap: no per-write Future, no buffer append, no
    callback per subscriber on the common path. It is also the Core's ``DirectWriter``:
    the hub calls ``write`` itself, with the batch's bytes in ``encoding`` (``ws``,
    ``sse`` or ``sse_chunk``) built once for all subscribers. A subscriber whose unsent
    bytes exceed ``limit`` is slow: ``write`` returns False and ``on_slow`` closes
    it with a code that tells the client to resume with its cursor. The test is on
    what is *already* waiting: one batch of any size may be queued behind a reader
    that keeps up (a 1,000-event publish can exceed ``limit`` by itself), so the most
    a subscriber holds is ``limit`` plus one batch.
    """

    __slots__ = ("stream", "socket", "limit", "buffer", "send", "encoding", "on_slow")

    def __init__(self, stream: IOStream, limit: int, encoding: str, on_slow: Callable[[], None]) -> None:
        self.stream = stream
        self.limit = limit
        self.encoding = encoding
        self.on_slow = on_slow
        # Tornado keeps one buffer object for the stream's life (None once closed).
        self.buffer = stream._write_buffer  # noqa: SLF001 - see class docstring
        # TLS streams must go through the SSL layer: a buffer that never looks empty
        # to the hub and no socket here send everything through ``queue``.
        self.socket: socket.socket | None = None if isinstance(stream, SSLIOStream) else stream.socket
        self.send = self.socket.send if self.socket is not None else _never_sent
        if self.socket is None:
            self.buffer = _ALWAYS_BUSY

    def write(self, data: bytes) -> bool:
        """Send now if Tornado has nothing queued, else queue behind it; False when the
        subscriber is slow (the caller then calls ``on_slow``)."""
        if not self.buffer._size:  # noqa: SLF001 - see class docstring
            try:
                sent = self.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.stream.close()  # its close handler unsubscribes it
                return True
            if sent == len(data):
                return True
            data = data[sent:]
        return self.queue(data)

    def queue(self, data: bytes) -> bool:
        """Append behind Tornado's buffer (it flushes when the socket drains)."""
        stream = self.stream
        buffered = stream._write_buffer  # noqa: SLF001 - see class docstring
        if buffered is None or stream.closed():
            return True
        if len(buffered) > self.limit:
            return False
        try:
            stream.write(data)
        except StreamClosedError:
            pass
        return True


class _Busy:
    """Stands in for the write buffer of a TLS stream: never empty."""

    __slots__ = ()
    _size = 1


_ALWAYS_BUSY = _Busy()


def _never_sent(data: bytes) -> int:
    return 0
