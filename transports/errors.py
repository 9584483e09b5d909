"""Rendering a failure as the contract's error: any exception a handler or transport
lets out becomes a ``HeraldError`` (never a stack trace on the wire), with the
``Retry-After`` it carries."""

from __future__ import annotations

import tornado.httputil
import tornado.web

from core.errors import ErrorCode, HeraldError

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
        if exc.args and exc.log_message and "%" in exc.log_message:
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
