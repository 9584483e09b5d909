"""ApiHandler: the thin HTTP handler shape — parse, authorise, call Core, answer.

``prepare()`` runs on the request's headers, before a byte of its body is read
(``stream_request_body``): it authenticates (unless a handler says it needs no token),
refuses a cross-site request that rides the ``herald_token`` cookie (CSRF), and
refuses a ``Content-Length`` over ``--max-body-bytes`` (``413``). So an
unauthenticated or oversized upload costs the server nothing but its headers. The
body is then gathered up to the limit (a chunked body is cut there, with the same
``413``) and read as strict JSON (``core.jsonstrict``) through one method that
enforces the content type.
"""

from __future__ import annotations

import json
from typing import Any, cast

import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest

from core import jsonstrict
from core.auth import Principal
from core.errors import ErrorCode, HeraldError, forbidden
from core.service import Core
from core.settings import Settings
from transports.cors import origin_trusted
from transports.handler import HeraldRequestHandler
from transports.request import request_credentials

#: Methods that change state: the ones a cross-site page must not send with the cookie.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The connection's own body limit on API requests: the handler enforces the real one.
#: Tornado hands the body over in pieces of at most 64 KiB, so nothing past the limit
#: and one piece is ever held.
UNLIMITED = 1 << 62
#: A request refused on its headers whose announced body is at most this long has it
#: read and dropped first (nginx's "lingering close"); a longer or chunked one is not
#: read at all, and its connection closes after the answer.
DRAINED_BODY = 64 * 1024
#: ``Sec-Fetch-Site`` values of a request a page of this origin, or the user, made.
FIRST_PARTY_FETCH = frozenset({"same-origin", "none"})


@tornado.web.stream_request_body
class ApiHandler(HeraldRequestHandler):
    """Base of the JSON API handlers."""

    #: Set False on handlers that anyone may call (negotiate, health, metrics).
    needs_token = True
    principal: Principal

    def initialize(self, core: Core) -> None:
        super().initialize(core)
        self._received = bytearray()
        #: Refused before its body was read: the connection closes after the answer.
        self._body_unread = False
        #: Refused on its headers, answered once its small body was read and dropped.
        self._refusal: HeraldError | None = None

    async def prepare(self) -> None:
        """Runs on the headers alone: the body is read only for a request that passed."""
        try:
            await self._check_headers()
        except HeraldError as exc:
            if declared_length(self.request) <= DRAINED_BODY:
                # A small body is read and dropped before the refusal is answered, so
                # the connection survives: closing it with the body unread would reset
                # it under the client before the client had read the answer.
                self._refusal = exc
                setattr(self, self.request.method.lower(), self._refuse)  # what Tornado calls next
                return
            self._body_unread = True
            raise

    def _refuse(self, *args: str, **kwargs: str) -> None:
        assert self._refusal is not None
        raise self._refusal

    async def _check_headers(self) -> None:
        limit = self.core.settings.max_body_bytes
        # This handler enforces the limit itself (below, and in ``data_received``) so
        # that a refusal is an answer in the error shape: Tornado's own limit (the
        # server's, ``--max-body-bytes`` too) would cut the connection with a bare 400,
        # and it refuses a chunk by its declared size before the handler sees any.
        cast(HTTP1Connection, self.request.connection).set_max_body_size(UNLIMITED)
        if self.needs_token:
            # A ticket is refused here: tickets open streams only.
            self.principal = await self.authenticate()
            if self.request.method in STATE_CHANGING:
                check_not_cross_site(self.request, self.core.settings)
        declared = declared_length(self.request)
        if declared > limit and declared != float("inf"):
            raise body_too_large(limit)

    def data_received(self, chunk: bytes) -> None:
        """Gather the body up to ``--max-body-bytes``; past it, answer ``413`` (the
        connection then closes without reading the rest). Tornado delivers nothing
        once the answer is finished."""
        if self._refusal is not None:
            return  # dropped, not kept
        self._received += chunk
        limit = self.core.settings.max_body_bytes
        if len(self._received) > limit:
            self._received = bytearray()
            self._body_unread = True
            error = body_too_large(limit)
            self.send_error(error.status, exc_info=(HeraldError, error, None))

    def json_body(self) -> Any:
        """The request body as strict JSON: 415 unless ``application/json``, 400 if
        it is not strict JSON (``core.jsonstrict``). Every POST that takes a body
        requires one, even an empty object: a cross-site HTML form cannot send JSON."""
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise HeraldError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE, 415, "send the body as JSON with Content-Type: application/json"
            )
        return jsonstrict.loads(bytes(self._received))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self._body_unread:
            # Tornado closes a connection whose body it did not read; say so, or a
            # client reusing it for its next request meets a reset.
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    def answer(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body, separators=(",", ":"), allow_nan=False))


def declared_length(request: HTTPServerRequest) -> float:
    """The body length the headers announce: 0 for none, infinite for chunks."""
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return float("inf")
    length = request.headers.get("Content-Length", "0").strip()
    return int(length) if length.isdigit() else float("inf")


def body_too_large(limit: int) -> HeraldError:
    return HeraldError(
        ErrorCode.BODY_TOO_LARGE, 413, f"the body is larger than {limit} bytes", {"max_body_bytes": limit}
    )


def check_not_cross_site(request: HTTPServerRequest, settings: Settings) -> None:
    """CSRF: ``403`` for a state-changing request that a page of another origin made
    with the visitor's ``herald_token`` cookie. Bearer tokens are not ambient (a page
    cannot send one it does not hold), so only cookie-authenticated requests are asked.

    ``Origin`` decides when present: this server's own (its host and port are the
    request's ``Host``) or one of ``--allowed-origins``. Without it, ``Sec-Fetch-Site``
    must say ``same-origin`` or ``none`` (typed by the user). With neither header the
    request did not come from a browser page, which is what CSRF needs."""
    credentials = request_credentials(request, settings.cookie_name)
    if credentials is None or credentials.kind != "cookie":
        return
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin_trusted(origin, request.headers.get("Host", ""), settings):
            return
        raise forbidden(f"a cookie-authenticated {request.method} from the origin {origin} is refused (CSRF)")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in FIRST_PARTY_FETCH:
        raise forbidden(f"a cookie-authenticated {request.method} from a {fetch_site} page is refused (CSRF)")


class UnknownEndpoint(ApiHandler):
    """Every request no route matches — an unknown path, or an id that misses its
    route's pattern (too long, ``%2F``, ``%0D%0A``, ``%00``) — answered ``404`` in the
    error shape, whatever the method, instead of Tornado's HTML page. The path is not
    echoed back."""

    needs_token = False

    async def prepare(self) -> None:
        raise HeraldError(ErrorCode.NOT_FOUND, 404, "no such endpoint; the API is described in docs/protocol.md")
