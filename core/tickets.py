"""Stream tickets: single-use, short-lived stand-ins for a JWT in a URL.

A browser's ``EventSource`` cannot send headers, so SSE and long-poll URLs carry
``?ticket=``. A ticket is worth the Principal it was issued for, once, for
``ttl`` seconds: a leaked access log line is useless. Tickets live in this process;
behind a load balancer with several processes, route the ticket request and the
stream to one process or use the cookie (documented in docs/protocol.md).
"""

from __future__ import annotations

import secrets
import time

from core.auth import Principal
from core.errors import unauthorized


class TicketBook:
    """Issues and redeems tickets."""

    def __init__(self, ttl: float = 30.0, clock=time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._tickets: dict[str, tuple[Principal, float]] = {}

    def issue(self, principal: Principal) -> str:
        self._sweep()
        ticket = "tk_" + secrets.token_urlsafe(24)
        self._tickets[ticket] = (principal, self._clock() + self.ttl)
        return ticket

    def redeem(self, ticket: str) -> Principal:
        """The ticket's Principal; the ticket is spent. 401 when unknown, used or late."""
        found = self._tickets.pop(ticket, None)
        if found is None:
            raise unauthorized("unknown or already used ticket")
        principal, deadline = found
        if self._clock() > deadline:
            raise unauthorized("the ticket has expired")
        return principal

    def _sweep(self) -> None:
        now = self._clock()
        if len(self._tickets) > 1000:
            for key in [k for k, (_, d) in self._tickets.items() if d < now]:
                del self._tickets[key]
