"""Log set-up: ``--log-format text`` (the default, for a terminal) or ``json`` (one
object per line, for a log shipper), and a redaction pass that keeps secrets out of
every line in either format.

A JSON line has ``time``, ``level``, ``logger``, ``message``, and for a request the
fields an operator filters on: ``method``, ``path`` (query secrets replaced by
``***``), ``status``, ``duration_ms``, and, when the code logging it knows them,
``transport``, ``execution_id`` and ``subject`` (passed as ``extra=``). Access lines
are written by ``transports.access_log.log_access`` with positional arguments; the
``AccessFields`` filter lifts those into fields, so the text line stays as it was and
the JSON line gets them as keys. python-json-logger renders the object (a maintained
formatter for the standard ``logging`` module, so nothing else in Herald changes how
it logs).

Redaction is a backstop, not the first line: the access log already redacts
``access_token``, ``ticket`` and ``token`` in URLs. ``Redact`` also masks anything
shaped like a JWT (three base64url parts, the first starting ``eyJ``), a stream ticket
(``tk_…``) and ``Bearer`` credentials, in the message and in every string field, so
an exception message quoting a header cannot leak a token.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: Fields a record may carry (``extra=``) that the JSON line keeps, in this order.
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "transport", "execution_id", "subject", "remote_ip")

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_TICKET = re.compile(r"\btk_[A-Za-z0-9_-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s,;\"']+")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:access_token|ticket|token)=)[^&\s\"']+")
_EXECUTION = re.compile(r"/api/executions/(ex_[A-Za-z0-9]+)")


def redact(text: str) -> str:
    """``text`` with tokens, tickets and bearer credentials replaced by ``***``."""
    text = _BEARER.sub(r"\1***", text)
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _JWT.sub("***", text)
    return _TICKET.sub("tk_***", text)


#: Formats tracebacks for ``Redact`` (the text and JSON formats print them alike).
_TRACEBACK = logging.Formatter()


class Redact(logging.Filter):
    """Formats the message once, redacted, so neither format can print a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep logging's own error path
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            # A traceback quotes exception messages (a URL, a header value): formatted
            # once here, redacted, and kept as exc_text, which both formats print.
            record.exc_text = redact(_TRACEBACK.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class AccessFields(logging.Filter):
    """Turns an access line's arguments (status, method, uri, remote ip, ms — the shape
    ``transports.access_log.log_access`` writes) into request fields on the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "tornado.access" and isinstance(args, tuple) and len(args) == 5:
            status, method, uri, remote_ip, ms = args
            if isinstance(status, int) and isinstance(method, str) and isinstance(uri, str) and isinstance(ms, float):
                path = uri.split("?", 1)[0]
                record.status = status
                record.method = method
                record.path = redact(path)
                record.remote_ip = remote_ip
                record.duration_ms = round(ms, 3)
                if getattr(record, "execution_id", None) is None and (found := _EXECUTION.search(path)):
                    record.execution_id = found.group(1)
        return True


class HeraldJsonFormatter(JsonFormatter):
    """python-json-logger with Herald's key names and only the fields we document."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        for name in list(log_data):
            if name not in ("time", "level", "logger", "message", "exc_info", "stack_info", *REQUEST_FIELDS):
                del log_data[name]  # extras we do not document stay out of the shipped line
        log_data["level"] = record.levelname.lower()


def configure_logging(level: str = "info", fmt: str = "text", stream: Any = None) -> logging.Handler:
    """Replace the root logger's handlers with one that writes ``fmt`` to ``stream``
    (stderr by default); returns that handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(AccessFields())
    handler.addFilter(Redact())
    handler.setFormatter(HeraldJsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
