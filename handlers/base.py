"""ApiHandler: the thin HTTP handler shape — parse, authorise, call Core, answer.

``prepare()`` authenticates (unless a handler says it needs no token), so a handler
method starts with ``self.principal`` set; JSON bodies are read through one method
that enforces the content type and reports malformed JSON in the error shape.
"""

from __future__ import annotations

import json
from typing import Any

from core.auth import Principal
from core.errors import ErrorCode, HeraldError, bad_request
from transports.handler import HeraldRequestHandler


class ApiHandler(HeraldRequestHandler):
    """Base of the JSON API handlers."""

    #: Set False on handlers that anyone may call (negotiate, health, metrics).
    needs_token = True
    principal: Principal

    async def prepare(self) -> None:
        # A ticket is refused here: tickets open streams only.
        if self.needs_token:
            self.principal = await self.authenticate()

    def json_body(self, *, optional: bool = False) -> Any:
        """The request body as JSON: 415 unless ``application/json``, 400 if malformed."""
        body = self.request.body
        if not body.strip() and optional:
            return {}
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise HeraldError(
                ErrorCode.UNSUPPORTED_MEDIA_TYPE, 415, "send the body as JSON with Content-Type: application/json"
            )
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"malformed JSON: {exc}", ErrorCode.BAD_JSON) from None

    def answer(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(body, separators=(",", ":")))
