"""Herald's composition root: Settings → Store, Broker → Core → Application.

``python server.py`` with no options serves on 127.0.0.1:8080 with the embedded store
and in-process broker, and prints a dashboard URL with a development token. Every
option is also an environment variable ``HERALD_<NAME>`` (the README's configuration table).
This is the only module that names a concrete Store or Broker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

import tornado.web
from tornado.httpserver import HTTPServer

from core.auth import ALL_SCOPES, Authenticator
from core.broker.base import Broker
from core.dispatch import Dispatcher
from core.health import start_health_probe
from core.logs import FORMATS, configure_logging
from core.runtime import tune_gc
from core.service import Core
from core.sessions import drain_window
from core.settings import Secret, Settings
from core.store.base import Store
from handlers import demo, feed, stats, workers
from handlers.base import UnknownEndpoint
from handlers.executions import CancelHandler, EventsHandler, ExecutionHandler, ExecutionsHandler, TicketsHandler
from handlers.ops import HealthHandler, MetricsHandler, NegotiateHandler, ReadyHandler
from handlers.pages import PageHandler
from handlers.streams import StreamsHandler
from transports import TRANSPORTS
from transports.access_log import log_access
from transports.handler import HeraldRequestHandler, StaticFiles, preflight_rule
from transports.poll_server import PollServer
from transports.request import STREAM_PATH, STREAMS_PATH
from transports.websocket import HeraldSocket

log = logging.getLogger("herald")
#: Seconds a request's body may take to arrive (1 MiB at 16 KiB/s), then the connection closes.
BODY_TIMEOUT = 60.0
HERE = os.path.dirname(os.path.abspath(__file__))


def dev_directory() -> str:
    """Where development mode keeps ``dev-secret`` and ``dev-token``: ``.herald/`` in the
    checkout when this file runs from one (``make run``, ``pip install -e .``), else in
    the current directory, because an installed ``server.py`` sits in site-packages,
    which is no place for a secret and is shared by every project of the venv."""
    in_checkout = os.path.exists(os.path.join(HERE, "setup.cfg"))
    return os.path.join(HERE if in_checkout else os.getcwd(), ".herald")


def uri_database(uri: str | None) -> str | None:
    """The database a MongoDB URI names (``mongodb://host/mydb?...`` → ``mydb``), or None.

    Parsed by hand, as PyMongo does, because ``pymongo.uri_parser.parse_uri`` resolves
    ``mongodb+srv://`` names in DNS, which option parsing must not wait for."""
    if not uri or "://" not in uri:
        return None
    path = uri.split("://", 1)[1].partition("/")[2]
    name = unquote_plus(path.partition("?")[0])
    return name or None


# name, type, default, help — each also HERALD_<NAME>.
OPTIONS: list[tuple[str, Any, Any, str]] = [
    ("host", str, "127.0.0.1", "address to listen on"),
    ("port", int, 8080, "port to listen on"),
    ("mongo-uri", str, None, "MongoDB URI; without it the embedded in-memory store is used"),
    ("mongo-database", str, None, "MongoDB database name; default: the one in --mongo-uri, else herald"),
    ("mongo-write-concern", str, "majority", "write concern for publishes (journaled): majority, 1, ..."),
    ("redis-url", str, None, "Redis URL for the broker (several processes); default in-process"),
    ("jwt-secret", str, None, "HS256 shared secret; without it (and no public key) a dev secret is made"),
    ("jwt-public-key", str, None, "PEM public key (or @path) for RS256/ES256 tokens"),
    ("jwt-algorithms", str, "", "comma-separated accepted algorithms (default HS256, or RS256,ES256)"),
    ("transports", str, "websocket,sse,longpoll", "transports offered, in preference order"),
    ("heartbeat", float, 15.0, "seconds between heartbeats on open streams"),
    ("retention", float, 86400.0, "seconds events are kept"),
    ("max-event-bytes", int, 65536, "largest accepted event envelope, in bytes"),
    ("longpoll-wait", float, 25.0, "wait advertised to long-poll clients, seconds"),
    ("coalesce-ms", float, 2.0, "window in which events arriving together share one write"),
    ("max-connections", int, 20000, "open stream connections this process accepts"),
    ("max-buffer-bytes", int, 4 * 1024 * 1024, "unsent bytes after which a subscriber is dropped as slow"),
    ("max-attempts", int, 3, "times an execution is handed to a worker before it fails"),
    ("execution-timeout", float, 120.0, "seconds without an event before a running execution fails"),
    ("allowed-origins", str, "", "comma-separated origins whose pages may call the API (CORS); default none"),
    ("max-connections-per-subject", int, 100, "open connections one token subject may hold (0: no limit)"),
    ("publish-rate", float, 1000.0, "events per second one token subject may publish (0: no limit)"),
    ("publish-burst", int, 0, "events one token subject may publish at once (default: twice --publish-rate)"),
    ("max-body-bytes", int, 1024 * 1024, "largest request body; larger is refused 413 before it is read"),
    ("header-timeout", float, 10.0, "seconds to send request headers; also the idle keep-alive timeout"),
    ("drain-timeout", float, 10.0, "seconds a SIGTERM drain may take before the process exits"),
    ("log-level", str, "info", "debug, info, warning, error"),
    ("log-format", str, "text", "text (for a terminal) or json (one object per line, for a log shipper)"),
]


def parse_settings(argv: Sequence[str], environ: Mapping[str, str], prog: str = "server.py") -> Settings:
    """Command line over environment over defaults, into one typed Settings."""
    parser = argparse.ArgumentParser(prog=prog, description="Herald: execution event streams")
    for name, typ, default, help_ in OPTIONS:
        env = "HERALD_" + name.upper().replace("-", "_")
        value = environ.get(env, default)
        parser.add_argument(
            f"--{name}", type=typ, default=typ(value) if value is not None else None, help=f"{help_} (${env})"
        )
    args = parser.parse_args(list(argv))
    transports = tuple(t.strip() for t in args.transports.split(",") if t.strip())
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not transports:
        parser.error(f"--transports takes a list of {', '.join(TRANSPORTS)}")
    if args.log_format not in FORMATS:
        parser.error(f"--log-format takes one of {', '.join(FORMATS)}")
    public_key = args.jwt_public_key
    if public_key and public_key.startswith("@"):
        with open(public_key[1:]) as fh:
            public_key = fh.read()
    return Settings(
        host=args.host,
        port=args.port,
        mongo_uri=Secret(args.mongo_uri) if args.mongo_uri else None,
        mongo_database=args.mongo_database or uri_database(args.mongo_uri) or "herald",
        mongo_write_concern=args.mongo_write_concern,
        redis_url=Secret(args.redis_url) if args.redis_url else None,
        jwt_secret=Secret(args.jwt_secret) if args.jwt_secret else None,
        jwt_public_key=public_key,
        jwt_algorithms=tuple(a.strip() for a in args.jwt_algorithms.split(",") if a.strip()),
        transports=transports,
        heartbeat=args.heartbeat,
        retention=args.retention,
        max_event_bytes=args.max_event_bytes,
        longpoll_wait=args.longpoll_wait,
        coalesce_ms=args.coalesce_ms,
        max_connections=args.max_connections,
        max_connections_per_subject=args.max_connections_per_subject,
        publish_rate=args.publish_rate,
        publish_burst=args.publish_burst,
        max_body_bytes=args.max_body_bytes,
        header_timeout=args.header_timeout,
        allowed_origins=tuple(o.strip().rstrip("/") for o in args.allowed_origins.split(",") if o.strip()),
        drain_timeout=args.drain_timeout,
        max_buffer_bytes=args.max_buffer_bytes,
        max_attempts=args.max_attempts,
        execution_timeout=args.execution_timeout,
        log_level=args.log_level,
        log_format=args.log_format,
        dev=not (args.jwt_secret or public_key),
    )


def dev_secret(directory: str | None = None) -> str:
    """A development secret kept in ``.herald/`` (``dev_directory``) so dev tokens survive restarts."""
    directory = directory or dev_directory()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "dev-secret")
    if not os.path.exists(path):
        with open(path, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        os.chmod(path, 0o600)
    with open(path) as fh:
        return fh.read().strip()


def build_store(settings: Settings) -> Store:
    if settings.mongo_uri:
        from core.store.mongo import MongoStore

        return MongoStore(
            settings.mongo_uri.value,
            settings.mongo_database,
            settings.mongo_write_concern,
            retention=settings.retention,
        )
    from core.store.memory import MemoryStore

    return MemoryStore()


def build_broker(settings: Settings) -> Broker:
    if settings.redis_url:
        from core.broker.redis import RedisBroker

        return RedisBroker(settings.redis_url.value)
    from core.broker.local import LocalBroker

    return LocalBroker()


def build_core(settings: Settings) -> Core:
    if settings.jwt_public_key:
        auth = Authenticator(public_key=settings.jwt_public_key, algorithms=settings.jwt_algorithms)
    else:
        secret = settings.jwt_secret.value if settings.jwt_secret else dev_secret()
        auth = Authenticator(secret=secret, algorithms=settings.jwt_algorithms)
    return Core(settings, build_store(settings), build_broker(settings), auth)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log without tokens or tickets (``transports.access_log.log_access``),
    naming the transport and the token subject where the handler knows them."""
    if isinstance(handler, HeraldRequestHandler | HeraldSocket):
        log_access(handler.get_status(), handler.request, handler.log_transport, handler.log_subject)
    else:
        log_access(handler.get_status(), handler.request)


def make_app(core: Core, extra_handlers: list[Any] | None = None) -> tornado.web.Application:
    """The Tornado application: API routes, one stream URL with a rule per transport."""
    c = {"core": core}
    dispatcher = Dispatcher(core)
    probe = start_health_probe(core, dispatcher)  # store/broker health, queues, the console's figures
    # The stream URL first: it takes almost every request under load (a long-poll is one
    # request per page), and Tornado tries rules in order.
    handlers: list[Any] = [rule(core) for name in core.settings.transports for rule in TRANSPORTS[name]]
    handlers += [(STREAM_PATH, EventsHandler, c), (STREAMS_PATH, StreamsHandler, c)]
    handlers += [
        *feed.routes(core),  # before /api/executions/ID, which "feed" would match
        *demo.routes(core, dispatcher),
        *workers.routes(core, dispatcher),
        (r"/api/negotiate", NegotiateHandler, c),
        (r"/healthz", HealthHandler, c),
        (r"/readyz", ReadyHandler, c),
        (r"/metrics", MetricsHandler, c),
        *stats.routes(core, probe),
        (r"/api/tickets", TicketsHandler, c),
        (r"/api/executions", ExecutionsHandler, c),
        (r"/api/executions/([A-Za-z0-9_-]{1,64})", ExecutionHandler, c),
        (r"/api/executions/([A-Za-z0-9_-]{1,64})/cancel", CancelHandler, c),
    ]
    handlers += extra_handlers or []
    handlers += [
        (r"/", PageHandler, {"core": core, "template": "dashboard.html"}),
        (r"/overview", PageHandler, {"core": core, "template": "overview.html"}),
        (r"/executions/([A-Za-z0-9_-]{1,64})", PageHandler, {"core": core, "template": "execution.html"}),
    ]
    return tornado.web.Application(
        # CORS preflights (OPTIONS) before every other rule, which would ask for a token.
        [preflight_rule(core), *handlers],
        static_path=os.path.join(HERE, "static"),
        static_handler_class=StaticFiles,  # CORS headers: herald.js may be imported cross-origin
        static_handler_args={"settings": core.settings},
        log_function=log_request,
        websocket_max_message_size=max(65536, core.settings.max_event_bytes * 2),
        # Unknown paths, ids that miss a route (too long, %2F, %00) included: the error shape.
        default_handler_class=UnknownEndpoint,
        default_handler_args=c,
    )


def make_server(app: tornado.web.Application, settings: Settings) -> HTTPServer:
    """The HTTP server and its connection limits (docs/security.md): request headers
    within ``--header-timeout`` (slowloris; also how long an idle keep-alive connection
    is kept: Tornado has one timeout for both), a body within ``BODY_TIMEOUT``, and no
    body over ``--max-body-bytes`` (API handlers answer that ``413`` themselves). It
    answers long-polls on its own lean path (``transports.poll_server``)."""
    return PollServer(
        app,
        xheaders=False,
        idle_connection_timeout=settings.header_timeout,
        body_timeout=BODY_TIMEOUT,
        max_body_size=settings.max_body_bytes,
    )


def dashboard_url(core: Core, settings: Settings) -> str:
    token = core.auth.mint("dev", ALL_SCOPES, ttl=7 * 86400)
    path = os.path.join(dev_directory(), "dev-token")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(token)
    return f"http://{settings.host}:{settings.port}/#token={token}"


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM; then close streams with 1001 so clients resume elsewhere."""
    core = build_core(settings)
    await core.start()
    app = make_app(core)
    server = make_server(app, settings)
    server.listen(settings.port, settings.host, backlog=4096)
    tune_gc()
    log.info(
        "Herald listening on http://%s:%d (%s store, %s broker)",
        settings.host,
        settings.port,
        "MongoDB" if settings.mongo_uri else "embedded",
        "Redis" if settings.redis_url else "in-process",
    )
    if settings.dev:
        print(
            f"\nDashboard (development token, valid 7 days):\n  {dashboard_url(core, settings)}\n"
            "The token is also in .herald/dev-token\n",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    await shut_down(server, core, settings.drain_timeout)


async def shut_down(server: HTTPServer, core: Core, drain_timeout: float) -> None:
    """The graceful drain: stop accepting connections, end every open one (WebSocket
    ``1001``, SSE end, held polls answered; feeds and workers too) spread over a short
    window with a retry hint each, so clients resume elsewhere with their cursors and
    not all at once, answer the publishes in flight, then close the store and the
    broker — within ``drain_timeout`` seconds."""
    log.info("shutting down")
    server.stop()  # no new connections; requests already read still get answers
    # Every answer from now on says `Connection: close`, so a keep-alive connection
    # (a publisher's, nginx's) carries no new request into the last moments.
    server.conn_params.no_keep_alive = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(1.0, drain_timeout - 0.5)  # the rest: the last writes, closing the store
    await core.sessions.drain_over(drain_window(drain_timeout), timeout=deadline - loop.time())
    await core.drain(timeout=max(0.2, deadline - loop.time()))
    await asyncio.sleep(0.2)  # let the last answers and close frames leave
    await core.stop()


def main(argv: Sequence[str] | None = None, prog: str = "server.py") -> None:
    """``python server.py`` and ``herald serve`` (which passes its own ``prog``)."""
    settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ, prog)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
