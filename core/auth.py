"""JWT → Principal, and who may do what (PROTOCOL.md section 5).

Decoding pins the algorithm list from configuration (``none`` is never accepted, even
if configured) and requires ``sub`` and ``exp``. The permission checks are pure
functions of a Principal and an Execution, so they are tested without a server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt

from core.errors import ErrorCode, forbidden, unauthorized
from core.model import Execution


class Scope(StrEnum):
    EXECUTIONS_READ = "executions:read"
    EXECUTIONS_WRITE = "executions:write"
    EVENTS_PUBLISH = "events:publish"
    WORKERS = "workers"
    ADMIN = "admin"


ALL_SCOPES = tuple(s.value for s in Scope)
SYMMETRIC = ("HS256", "HS384", "HS512")
#: Verified tokens remembered at most (cleared whole when full: a cache, not a store).
VERIFIED_CACHE = 10_000
#: Seconds a remembered token stays without being presented (at most; at least half).
VERIFIED_IDLE = 120.0
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA")


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is calling: the token's subject, scopes, share list and expiry."""

    sub: str
    scopes: frozenset[str]
    exp: float
    executions: frozenset[str] | None = None

    @property
    def admin(self) -> bool:
        return Scope.ADMIN.value in self.scopes

    def has(self, scope: Scope) -> bool:
        return scope.value in self.scopes or self.admin


class Authenticator:
    """Verifies tokens with one key and a fixed algorithm list."""

    def __init__(self, *, secret: str | None = None, public_key: str | None = None, algorithms: Iterable[str] = ()):
        if (secret is None) == (public_key is None):
            raise ValueError("configure exactly one of a shared secret or a public key")
        algs = [a for a in algorithms if a and a.lower() != "none"]
        if not algs:
            algs = ["HS256"] if secret is not None else ["RS256", "ES256"]
        allowed = SYMMETRIC if secret is not None else ASYMMETRIC
        bad = [a for a in algs if a not in allowed]
        if bad:
            raise ValueError(f"algorithms {bad} do not fit the configured key")
        self.algorithms = algs
        self._key: Any = secret if secret is not None else public_key
        self._secret = secret
        #: Tokens presented since the last ``forget_idle``, and those presented in the
        #: period before it (two generations: an idle token goes within two periods).
        self._verified: dict[str, Principal] = {}
        self._verified_before: dict[str, Principal] = {}
        self._forgot_at = time.monotonic()

    def decode(self, token: str) -> Principal:
        """Verify ``token``; raise 401 ``unauthorized`` or ``token_expired``.

        A verified token is remembered until its ``exp`` (keyed by the whole token,
        signature included, so only that exact token hits) while it keeps being
        presented: a long-poller presents the same token every few seconds, and
        verifying a signature costs more than the rest of a poll's bookkeeping. One
        not presented for ``VERIFIED_IDLE`` seconds is forgotten (``forget_idle``),
        so clients that reconnect with fresh tokens leave nothing behind."""
        cached = self._verified.get(token)
        if cached is None:
            cached = self._verified_before.pop(token, None)
            if cached is not None:
                self._verified[token] = cached
        if cached is not None:
            if cached.exp > time.time():
                return cached
            del self._verified[token]
        principal = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = principal
        return principal

    def forget_idle(self, mono: float) -> None:
        """The shared timer's call: every ``VERIFIED_IDLE / 2`` seconds, the tokens not
        presented in the period before the last one are forgotten."""
        if mono - self._forgot_at < VERIFIED_IDLE / 2:
            return
        self._forgot_at = mono
        self._verified_before = self._verified
        self._verified = {}

    def _verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired", ErrorCode.TOKEN_EXPIRED) from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"invalid token: {exc}") from None
        return principal_from_claims(claims)

    def mint(
        self,
        sub: str,
        scopes: Iterable[str] = ALL_SCOPES,
        ttl: float = 3600,
        executions: Iterable[str] | None = None,
    ) -> str:
        """Sign a token with the shared secret (development token, tests, demos)."""
        if self._secret is None:
            raise ValueError("minting needs the shared secret")
        claims: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl), "scope": " ".join(scopes)}
        if executions is not None:
            claims["executions"] = list(executions)
        return jwt.encode(claims, self._secret, algorithm=self.algorithms[0])


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise unauthorized("the token's sub must be a non-empty string")
    scope = claims.get("scope", "")
    if isinstance(scope, list):
        scopes = frozenset(str(s) for s in scope)
    elif isinstance(scope, str):
        scopes = frozenset(scope.split())
    else:
        raise unauthorized("the token's scope must be a space-separated string")
    shared = claims.get("executions")
    executions = None
    if shared is not None:
        if not isinstance(shared, list) or not all(isinstance(x, str) for x in shared):
            raise unauthorized("the token's executions must be a list of ids")
        executions = frozenset(shared)
    return Principal(sub=sub, scopes=scopes, exp=float(claims["exp"]), executions=executions)


def require(principal: Principal, scope: Scope) -> None:
    """Raise 403 unless the principal holds ``scope`` (or ``admin``)."""
    if not principal.has(scope):
        raise forbidden(f"the token lacks the '{scope.value}' scope")


def may_read(principal: Principal, execution: Execution) -> bool:
    """Its own executions, those the token lists, or all with ``admin``. A share
    token (one listing ``executions``) needs no ``executions:read`` scope for them."""
    if principal.admin:
        return True
    if principal.executions is not None and execution.id in principal.executions:
        return True
    return principal.has(Scope.EXECUTIONS_READ) and execution.owner == principal.sub


def may_publish(principal: Principal, execution: Execution) -> bool:
    """``events:publish`` on its own executions; ``workers`` on executions that wait
    for a queue; ``admin`` on all."""
    if principal.admin:
        return True
    if principal.has(Scope.WORKERS) and execution.queue is not None:
        return True
    return principal.has(Scope.EVENTS_PUBLISH) and execution.owner == principal.sub


def may_write(principal: Principal, execution: Execution) -> bool:
    """Cancel: ``executions:write`` on its own executions, or ``admin``."""
    if principal.admin:
        return True
    return principal.has(Scope.EXECUTIONS_WRITE) and execution.owner == principal.sub


BEARER_SUBPROTOCOL = "herald.bearer."
PROTOCOL_NAME = "herald.v1"


@dataclass(slots=True, frozen=True)
class Credentials:
    """Where a request's credential came from; ``kind`` is one of ``bearer``,
    ``subprotocol``, ``ticket``, ``access_token``, ``cookie``."""

    kind: str
    value: str


def find_credentials(
    *,
    authorization: str | None,
    subprotocols: Iterable[str] = (),
    ticket: str | None = None,
    access_token: str | None = None,
    cookie: str | None = None,
) -> Credentials | None:
    """Pick the credential a request carries, strongest first: the header, the
    WebSocket subprotocol, a stream ticket, the legacy parameter, the cookie."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("Authorization must be 'Bearer <jwt>'")
        return Credentials("bearer", value.strip())
    for proto in subprotocols:
        if proto.startswith(BEARER_SUBPROTOCOL):
            return Credentials("subprotocol", proto[len(BEARER_SUBPROTOCOL) :])
    if ticket:
        return Credentials("ticket", ticket)
    if access_token:
        return Credentials("access_token", access_token)
    if cookie:
        return Credentials("cookie", cookie)
    return None
