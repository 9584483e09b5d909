"""Cross-origin reads (CORS) for the pages of ``--allowed-origins``: which headers an
answer carries, decided from the request's ``Origin`` and path alone (pure functions,
tested without sockets).

A page served from another origin than Herald (an SPA on a CDN, a webview, a second
port in development) may call ``/api/*`` and load ``/static/*`` (``herald.js`` is an
ES module, and a module imported from another origin is a CORS request) when its
origin is listed in ``Settings.allowed_origins``. Its answers name that origin in
``Access-Control-Allow-Origin`` and expose ``Retry-After``; a preflight learns the
methods and request headers the contract uses. Other origins get no CORS headers, so
the browser keeps the answer from the page.

Cookies never cross origins: no answer carries ``Access-Control-Allow-Credentials``, so
a browser neither sends the ``herald_token`` cookie with a cross-origin ``fetch`` nor
lets the page read an answer to one that did. A cross-origin page authenticates with a
bearer token (header, WebSocket subprotocol) or a ticket. ``origin_allowed`` is also
the CSRF check's question (is this state-changing request's origin one we trust?).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from core.settings import Settings

#: One CORS header: (name, value).
Header = tuple[str, str]

#: The paths whose answers may be read cross-origin (PROTOCOL: "/api/* and /static/*").
CORS_PATHS = ("/api/", "/static/")
#: What a preflight allows: every method and request header the contract uses.
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID"
#: Seconds a browser may reuse a preflight. Ten minutes: a long-poll client that sends
#: ``Authorization`` preflights once in a while, not once per poll, and a shortened
#: ``--allowed-origins`` list takes effect soon (Chromium caps it at two hours anyway).
PREFLIGHT_MAX_AGE = 600
#: Answer headers a cross-origin page may read beyond the CORS-safelisted ones: a
#: ``429``/``503`` says when to retry.
EXPOSED_HEADERS = "Retry-After"


def origin_allowed(origin: str | None, settings: Settings) -> bool:
    """Whether ``origin`` (an ``Origin`` header, ``scheme://host[:port]``) is one of
    ``--allowed-origins``. Case-insensitive, as origins are; ``null`` (a sandboxed
    frame, a ``file:`` page) and an absent header are never allowed."""
    if not origin or not settings.allowed_origins:
        return False
    origin = origin.lower()
    return any(origin == allowed.lower() for allowed in settings.allowed_origins)


def origin_trusted(origin: str, host: str, settings: Settings) -> bool:
    """Whether a page of ``origin`` may act with the visitor's cookie: this server's own
    (the origin's host and port are the request's ``Host``) or one of
    ``--allowed-origins``; never ``null``. The CSRF check of cookie-authenticated
    ``POST``s and the check of cookie-authenticated WebSockets ask this one question."""
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == host.lower() or origin_allowed(origin, settings)


def answer_headers(origin: str | None, path: str, settings: Settings) -> list[Header]:
    """The CORS headers of an answer to a request from ``origin`` for ``path``.

    With any origin allowed, every ``/api/*`` and ``/static/*`` answer says ``Vary:
    Origin``: the same URL is answered with or without ``Access-Control-Allow-Origin``,
    and a cache (the browser's own included) must not give a same-origin copy of
    ``herald.js`` to a cross-origin ``import``."""
    if not settings.allowed_origins or not path.startswith(CORS_PATHS):
        return []
    if origin is None or not origin_allowed(origin, settings):
        return [("Vary", "Origin")]
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Vary", "Origin"),
        ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
    ]


def preflight_headers(origin: str | None, path: str, settings: Settings) -> list[Header]:
    """What a preflight (``OPTIONS`` with ``Origin``) from an allowed origin adds to
    ``answer_headers``; nothing for any other origin."""
    if not path.startswith(CORS_PATHS) or not origin_allowed(origin, settings):
        return []
    return [
        ("Access-Control-Allow-Methods", ALLOWED_METHODS),
        ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
        ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE)),
    ]
