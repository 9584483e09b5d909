"""Herald's typed settings. ``server.py`` fills one instance from the command line and
``HERALD_*`` environment variables; everything else receives it."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.transport import STREAM_TRANSPORTS


class Secret(str):
    """A string that prints as ``'**********'`` so it never lands in a log."""

    def __repr__(self) -> str:
        return "'**********'"

    __str__ = __repr__

    @property
    def value(self) -> str:
        return str.__str__(self)


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    mongo_uri: Secret | None = None
    mongo_database: str = "herald"
    #: MongoDB write concern for publishes: "majority", "1", ... plus journaling.
    mongo_write_concern: str = "majority"
    redis_url: Secret | None = None
    jwt_secret: Secret | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ()
    transports: tuple[str, ...] = tuple(name.value for name in STREAM_TRANSPORTS)
    heartbeat: float = 15.0
    retention: float = 86400.0
    max_event_bytes: int = 65536
    longpoll_wait: float = 25.0
    #: Window within which events that arrive together are written as one write.
    coalesce_ms: float = 2.0
    max_connections: int = 20000
    #: Origins (``scheme://host[:port]``) whose pages may call the API cross-origin.
    allowed_origins: tuple[str, ...] = ()
    #: Open connections one token subject may hold, every transport counted (0: none).
    max_connections_per_subject: int = 100
    #: Events per second one token subject may publish (0: no limit), and the burst
    #: it may publish at once (0: twice the rate). core/ratelimit.py.
    publish_rate: float = 1000.0
    publish_burst: int = 0
    #: Largest request body; a larger Content-Length is refused 413 before it is read.
    max_body_bytes: int = 1024 * 1024
    #: Seconds a connection may take to send its request headers; also how long an
    #: idle keep-alive connection is kept (Tornado's one ``idle_connection_timeout``).
    header_timeout: float = 10.0
    #: Seconds a SIGTERM drain may take before the process exits.
    drain_timeout: float = 10.0
    #: Bytes a subscriber may have unsent before it is disconnected as too slow.
    max_buffer_bytes: int = 4 * 1024 * 1024
    max_attempts: int = 3
    execution_timeout: float = 120.0
    cookie_name: str = "herald_token"
    dev: bool = False
    dev_token_file: str | None = None
    log_level: str = "info"
    #: "text" or "json" (one object per line: core/logs.py).
    log_format: str = "text"
    extra: dict[str, str] = field(default_factory=dict)
