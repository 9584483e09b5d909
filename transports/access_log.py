"""The access log, without credentials: tokens and tickets in a query become ``***``."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tornado.httputil import HTTPServerRequest

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
