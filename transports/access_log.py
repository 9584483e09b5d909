"""Logging a request without its credentials: the access line, and the failures
Tornado would log with the raw URI and the request's repr (its headers, a bearer
token and a cookie among them).

``redacted_uri`` is the one redaction of a URI: every line that names a request — the
access log, an uncaught exception in a handler, a WebSocket or a long-poll — goes
through it. ``core.logs.Redact`` is the backstop behind it, on every record.
"""

from __future__ import annotations

import logging
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import tornado.web
from tornado.httputil import HTTPServerRequest

REDACTED_PARAMS = ("access_token", "ticket", "token")
ACCESS_LOG = logging.getLogger("tornado.access")
#: Tornado's own loggers for a handler's failures, kept so filters and levels apply.
APP_LOG = logging.getLogger("tornado.application")
GENERAL_LOG = logging.getLogger("tornado.general")


def redacted_uri(uri: str) -> str:
    """The request URI with credentials in the query replaced by ``***``."""
    parts = urlsplit(uri)
    if not parts.query:
        return uri
    query = [(k, "***" if k in REDACTED_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def request_summary(request: HTTPServerRequest) -> str:
    """``METHOD /path?query (ip)`` with the query's credentials redacted."""
    return f"{request.method} {redacted_uri(request.uri or '')} ({request.remote_ip})"


def log_access(
    status: int, request: HTTPServerRequest, transport: str | None = None, subject: str | None = None
) -> None:
    """One access line, without tokens or tickets; nothing is formatted when the
    level is off (redacting the URI costs more than the rest of a long-poll answer).
    ``transport`` and ``subject`` become fields of a JSON log line (``--log-format``)."""
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
        extra={"transport": transport, "subject": subject},
    )


def log_failure(
    request: HTTPServerRequest,
    typ: type[BaseException] | None,
    value: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """What ``RequestHandler.log_exception`` logs, without the raw URI and without the
    request's repr: an ``HTTPError`` with a log message is a warning line, anything
    else an error with its traceback."""
    if isinstance(value, tornado.web.HTTPError):
        if value.log_message:
            message = value.log_message % value.args if value.args else value.log_message
            GENERAL_LOG.warning("%d %s: %s", value.status_code, request_summary(request), message)
        return
    APP_LOG.error("Uncaught exception %s", request_summary(request), exc_info=(typ, value, tb))  # type: ignore[arg-type]
