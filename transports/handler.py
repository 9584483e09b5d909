"""HeraldRequestHandler: the base of every Herald RequestHandler (API calls, pages, the
SSE transport): it receives the Core, renders every error one way and carries the CORS
headers of ``transports.cors``. ``Preflight`` answers ``OPTIONS``; ``StaticFiles`` is
Tornado's static file handler with the same CORS headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.routing import Rule

from core.auth import Principal
from core.errors import HeraldError
from core.service import Core
from core.settings import Settings
from transports.access_log import log_failure
from transports.cors import ALLOWED_METHODS, Header, answer_headers, preflight_headers
from transports.errors import as_herald_error, retry_after
from transports.request import RequestMatches, authenticate_request, cursor, int_argument


class HeraldRequestHandler(tornado.web.RequestHandler):
    """Base for every HTTP handler: receives the Core, renders errors one way."""

    core: Core
    #: What the access line names besides the request (a JSON log's fields).
    log_transport: str | None = None
    log_subject: str | None = None
    #: This answer's CORS headers. Tornado sets default headers before ``initialize``
    #: (none known yet) and again when an error clears the answer (these, then).
    cors: Sequence[Header] = ()

    def initialize(self, core: Core) -> None:
        self.core = core
        self.cors = answer_headers(self.request.headers.get("Origin"), self.request.path, core.settings)
        for name, value in self.cors:
            self.set_header(name, value)

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        for name, value in self.cors:
            self.set_header(name, value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = as_herald_error(exc, status_code)
        self.set_status(error.status)
        retry = retry_after(error)
        if retry is not None:
            self.set_header("Retry-After", retry)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(error.to_dict())

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HeraldError):
            return  # an answer, not a fault
        log_failure(self.request, typ, value, tb)  # Tornado's own would log the raw URI and headers

    async def authenticate(self, *, stream: bool = False) -> Principal:
        """The caller's Principal from header, ticket (``stream`` requests only),
        parameter or cookie."""
        principal = await authenticate_request(self.core, self.request, stream=stream)
        self.log_subject = principal.sub
        return principal

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        return int_argument(self.request, name, default, low, high)

    def cursor(self, header: bool = False) -> int:
        """``after`` (or, for SSE, ``Last-Event-ID``, which wins)."""
        return cursor(self.request, header)


class Preflight(HeraldRequestHandler):
    """``OPTIONS`` on ``/api/*``: a CORS preflight (or a plain question about methods).
    Routed before the API handlers, whose ``prepare`` would ask for the token a
    preflight never carries."""

    def options(self) -> None:
        answer_preflight(self, self.core.settings)


def answer_preflight(handler: tornado.web.RequestHandler, settings: Settings) -> None:
    """``204`` with ``Allow`` and, for an allowed origin, what it may send. Another
    origin gets no CORS header, as on every answer: the browser then refuses the
    request it asked about, and says so in the page's console."""
    origin = handler.request.headers.get("Origin")
    for name, value in preflight_headers(origin, handler.request.path, settings):
        handler.set_header(name, value)
    handler.set_header("Allow", ALLOWED_METHODS)
    handler.set_status(204)
    handler.finish()


def is_options(request: HTTPServerRequest) -> bool:
    return request.method == "OPTIONS"


def preflight_rule(core: Core) -> Rule:
    """Every ``OPTIONS`` under ``/api/`` goes to ``Preflight`` (``/static/`` is routed
    by Tornado before any rule: ``StaticFiles`` answers its own)."""
    return Rule(RequestMatches(r"/api/.*", is_options), Preflight, {"core": core})


class StaticFiles(tornado.web.StaticFileHandler):
    """``/static/*`` with the CORS headers of ``transports.cors``: ``herald.js`` is an
    ES module, and a page on an allowed origin ``import``s it with a CORS request."""

    cors: Sequence[Header] = ()

    def initialize(  # type: ignore[override]
        self, path: str, default_filename: str | None = None, *, settings: Settings
    ) -> None:
        super().initialize(path, default_filename)
        self.herald_settings = settings
        self.cors = answer_headers(self.request.headers.get("Origin"), self.request.path, settings)
        for name, value in self.cors:
            self.set_header(name, value)

    def set_default_headers(self) -> None:
        for name, value in self.cors:
            self.set_header(name, value)

    def options(self, path: str) -> None:
        answer_preflight(self, self.herald_settings)
