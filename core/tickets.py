"""Stream tickets: single-use, short-lived stand-ins for a JWT in a URL.

A browser's ``EventSource`` cannot send headers, so SSE and long-poll URLs carry
``?ticket=``. A ticket is worth the Principal it was issued for, to open one stream:

- it is redeemed once, within ``ttl`` seconds of being issued, for one stream (the
  request's path), and then only for that stream's reconnects — an ``EventSource``
  retrying the same URL with ``Last-Event-ID`` — so a plain ``EventSource`` survives a
  network cut or a server restart;
- it never outlives its token's ``exp``;
- it opens streams only (every other endpoint refuses it);
- it lives in the store, so any process of a deployment redeems it, once.

A leaked access log line is therefore worth one stream of one execution, until the
token would have expired anyway.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from core.auth import Principal, principal_from_claims
from core.errors import unauthorized
from core.store.base import Store


def principal_claims(principal: Principal) -> dict[str, Any]:
    """A Principal as the claims that make it again (``principal_from_claims``)."""
    claims: dict[str, Any] = {"sub": principal.sub, "scope": sorted(principal.scopes), "exp": principal.exp}
    if principal.executions is not None:
        claims["executions"] = sorted(principal.executions)
    return claims


class TicketBook:
    """Issues and redeems tickets, through the store."""

    def __init__(self, store: Store, ttl: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self._clock = clock

    async def issue(self, principal: Principal) -> str:
        now = self._clock()
        if principal.exp <= now:
            raise unauthorized("the token has expired")
        ticket = "tk_" + secrets.token_urlsafe(24)
        await self.store.put_ticket(ticket, principal_claims(principal), now + self.ttl, principal.exp)
        return ticket

    async def redeem(self, ticket: str, stream: str, reconnect: bool) -> Principal:
        """The ticket's Principal for ``stream``; 401 when unknown, already used for
        another stream, past its first-use window (unless ``reconnect`` to the same
        stream), or past its token's ``exp``."""
        claims = await self.store.redeem_ticket(ticket, stream, reconnect, self._clock())
        if claims is None:
            raise unauthorized("unknown, used or expired ticket: get a new one from POST /api/tickets")
        return principal_from_claims(claims)
