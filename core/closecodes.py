"""WebSocket close codes Herald uses (PROTOCOL.md section 2), named, not literals."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000  # after the terminal event
    GOING_AWAY = 1001  # server shutting down: reconnect elsewhere with the cursor
    PROTOCOL_ERROR = 1002  # a client frame broke RFC 6455 (unmasked)
    INVALID_DATA = 1007  # a text message that is not UTF-8
    MESSAGE_TOO_BIG = 1009  # a client message over the server's limit
    TRY_AGAIN_LATER = 1013  # store unavailable, or the subscriber was too slow
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401  # also reason "token_expired"
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    CONFLICT = 4409  # 409: a worker name taken on its queue (the contract's 4409)
    TOO_MANY_CONNECTIONS = 4429

    @classmethod
    def for_status(cls, status: int) -> CloseCode:
        """The close code that reports an HTTP-status refusal after the upgrade."""
        return {
            400: cls.BAD_REQUEST,
            401: cls.UNAUTHORIZED,
            403: cls.FORBIDDEN,
            404: cls.NOT_FOUND,
            409: cls.CONFLICT,
            413: cls.BAD_REQUEST,
            429: cls.TOO_MANY_CONNECTIONS,
        }.get(status, cls.TRY_AGAIN_LATER)
