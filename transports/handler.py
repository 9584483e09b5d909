"""HeraldRequestHandler: the base of every Herald RequestHandler (API calls, pages, the
SSE transport): it receives the Core and renders every error one way."""

from __future__ import annotations

from typing import Any

import tornado.web

from core.auth import Principal
from core.errors import HeraldError
from core.service import Core
from transports.errors import as_herald_error, retry_after
from transports.request import authenticate_request, cursor, int_argument


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

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HeraldError):
            return  # an answer, not a fault
        super().log_exception(typ, value, tb)

    async def authenticate(self, *, stream: bool = False) -> Principal:
        """The caller's Principal from header, ticket (``stream`` requests only),
        parameter or cookie."""
        return await authenticate_request(self.core, self.request, stream=stream)

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        return int_argument(self.request, name, default, low, high)

    def cursor(self, header: bool = False) -> int:
        """``after`` (or, for SSE, ``Last-Event-ID``, which wins)."""
        return cursor(self.request, header)
