"""The executions API (PROTOCOL.md section 4): create, list, read, publish, cancel,
and stream tickets."""

from __future__ import annotations

from typing import Any

from core.auth import Principal, Scope, may_publish, may_read, may_write, require
from core.errors import ErrorCode, HeraldError, bad_request, forbidden
from core.model import Status, validate_new_execution, validate_publish_body
from handlers.base import ApiHandler
from transports.errors import as_herald_error

MAX_LIST = 200


class ExecutionsHandler(ApiHandler):
    """``POST /api/executions`` and ``GET /api/executions``."""

    async def post(self) -> None:
        require(self.principal, Scope.EXECUTIONS_WRITE)
        kind, input_, queue = validate_new_execution(self.json_body())
        execution = await self.core.create_execution(self.principal.sub, kind, input_, queue)
        self.set_header("Location", f"/api/executions/{execution.id}")
        self.answer(201, execution.to_public())

    async def get(self) -> None:
        require(self.principal, Scope.EXECUTIONS_READ)
        status = self.get_query_argument("status", None)
        try:
            status_filter = Status(status) if status else None
        except ValueError:
            raise bad_request("status must be one of " + ", ".join(s.value for s in Status)) from None
        limit = self.int_argument("limit", 50, 1, MAX_LIST)
        found = await self.core.list_executions(
            owner=None if self.principal.admin else self.principal.sub,
            status=status_filter,
            kind=self.get_query_argument("kind", None) or None,
            queue=self.get_query_argument("queue", None) or None,
            limit=limit + 1,
            before=self.get_query_argument("before", None) or None,
        )
        page = found[:limit]
        next_before = page[-1].id if len(found) > limit else None
        self.answer(200, {"executions": [e.to_public() for e in page], "next_before": next_before})


class ExecutionHandler(ApiHandler):
    """``GET /api/executions/ID``."""

    async def get(self, execution_id: str) -> None:
        execution = await self.core.get_execution(execution_id)
        if not may_read(self.principal, execution):
            raise forbidden("this token may not read that execution")
        self.answer(200, execution.to_public())


class EventsHandler(ApiHandler):
    """``POST /api/executions/ID/events``: publish one event or a list of them.

    A GET reaches this handler only when the transport it asked for is turned off.
    """

    async def post(self, execution_id: str) -> None:
        check_publish_scope(self.principal)
        items = validate_publish_body(self.json_body())
        execution = await self.core.execution_for_auth(execution_id)
        if not may_publish(self.principal, execution):
            raise forbidden("this token may not publish to that execution")
        if not self.principal.has(Scope.WORKERS):  # workers and admin: no rate (docs/security.md)
            self.core.publish_limits.charge(self.principal.sub, len(items))
        seqs = await self.core.publish(execution_id, items)
        self.answer(202, {"seq": seqs})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.request.method == "POST":  # a refused publish, counted by its error code
            error = as_herald_error(kwargs.get("exc_info", (None, None, None))[1], status_code)
            self.core.metrics.publish_refused.labels(error.code.value).inc()
        super().write_error(status_code, **kwargs)

    def get(self, execution_id: str) -> None:
        raise HeraldError(
            ErrorCode.BAD_REQUEST,
            400,
            "that transport is turned off on this server; see /api/negotiate",
            {"transports": list(self.core.settings.transports)},
        )


class CancelHandler(ApiHandler):
    """``POST /api/executions/ID/cancel`` ``{reason?}``: a ``cancelled`` event."""

    async def post(self, execution_id: str) -> None:
        require(self.principal, Scope.EXECUTIONS_WRITE)
        body = self.json_body()
        if not isinstance(body, dict) or set(body) - {"reason"}:
            raise bad_request("the body must be {reason?}")
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise bad_request("reason must be a string")
        execution = await self.core.execution_for_auth(execution_id)
        if not may_write(self.principal, execution):
            raise forbidden("this token may not cancel that execution")
        data = {"reason": reason} if reason else {}
        seqs = await self.core.publish_server_event(execution_id, "cancelled", data)
        self.answer(202, {"seq": seqs})


class TicketsHandler(ApiHandler):
    """``POST /api/tickets``: a single-use, 30-second stand-in for the caller's token,
    for URLs (``EventSource`` and long-poll cannot send headers)."""

    async def post(self) -> None:
        ticket = await self.core.tickets.issue(self.principal)
        self.answer(201, {"ticket": ticket, "expires_in": int(self.core.tickets.ttl)})


def check_publish_scope(principal: Principal) -> None:
    """Publishing needs ``events:publish``, or ``workers`` (which may_publish narrows)."""
    if not (principal.has(Scope.EVENTS_PUBLISH) or principal.has(Scope.WORKERS)):
        raise HeraldError(ErrorCode.FORBIDDEN, 403, "the token lacks the 'events:publish' scope")
