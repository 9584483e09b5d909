"""Herald's error tree: one exception type, rendered in one place.

Every refusal the server makes — bad JSON, a missing scope, a closed stream, a store
that does not answer — is a ``HeraldError`` with a snake_case ``code``, an HTTP
``status`` and a human message. Handlers render it as the contract's error shape
(``{"error": {"code", "message", "details"}}``); the WebSocket transport maps the status
to a close code. Nothing else in the server invents error JSON.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """The codes clients may branch on; documented in docs/protocol.md."""

    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    INVALID_EVENT = "invalid_event"
    CURSOR_OUT_OF_RANGE = "cursor_out_of_range"
    UNAUTHORIZED = "unauthorized"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    STREAM_CLOSED = "stream_closed"
    CONFLICT = "conflict"
    EVENT_TOO_LARGE = "event_too_large"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    RATE_LIMITED = "rate_limited"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL = "internal_error"


class HeraldError(Exception):
    """A refusal with a code, an HTTP status, a message and optional details."""

    def __init__(
        self,
        code: ErrorCode,
        status: int,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """The contract's error body."""
        return {"error": {"code": self.code.value, "message": self.message, "details": self.details}}


def bad_request(message: str, code: ErrorCode = ErrorCode.BAD_REQUEST, /, **details: Any) -> HeraldError:
    return HeraldError(code, 400, message, details)


def unauthorized(message: str, code: ErrorCode = ErrorCode.UNAUTHORIZED) -> HeraldError:
    return HeraldError(code, 401, message)


def forbidden(message: str) -> HeraldError:
    return HeraldError(ErrorCode.FORBIDDEN, 403, message)


def not_found(message: str = "no such execution") -> HeraldError:
    return HeraldError(ErrorCode.NOT_FOUND, 404, message)


def stream_closed(execution_id: str, status: str) -> HeraldError:
    return HeraldError(
        ErrorCode.STREAM_CLOSED,
        409,
        "the execution has ended; its stream is closed",
        {"execution_id": execution_id, "status": status},
    )


def store_unavailable(reason: str = "the store did not answer") -> HeraldError:
    return HeraldError(ErrorCode.STORE_UNAVAILABLE, 503, reason, retry_after=2)


class StoreUnavailable(Exception):
    """Raised by a store when its backend cannot be reached; mapped to 503."""
