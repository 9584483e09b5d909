"""``/api/streams`` when the transport a request asks for is turned off: the request
reaches this handler only because no transport rule took it (docs/protocol.md,
"Several streams over one connection")."""

from __future__ import annotations

from core.errors import ErrorCode, HeraldError
from handlers.base import ApiHandler


class StreamsHandler(ApiHandler):
    """A ``GET /api/streams`` no offered transport serves: ``400`` naming the offered ones."""

    def get(self) -> None:
        raise HeraldError(
            ErrorCode.BAD_REQUEST,
            400,
            "that transport is turned off on this server; see /api/negotiate",
            {"transports": list(self.core.settings.transports)},
        )
