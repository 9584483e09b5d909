"""Operational endpoints: negotiation, health, readiness, metrics. No token needed."""

from __future__ import annotations

import asyncio

from core.errors import StoreUnavailable
from handlers.base import ApiHandler

READY_TIMEOUT = 2.0


class NegotiateHandler(ApiHandler):
    """``GET /api/negotiate``: the transports this server offers, in preference order."""

    needs_token = False

    def get(self) -> None:
        s = self.core.settings
        self.answer(
            200,
            {
                "transports": list(s.transports),
                "heartbeat": s.heartbeat,
                "longpoll_wait": s.longpoll_wait,
                "max_event_bytes": s.max_event_bytes,
                "protocol": 1,
            },
        )


class HealthHandler(ApiHandler):
    """``GET /healthz``: the process answers."""

    needs_token = False

    def get(self) -> None:
        self.answer(200, {"status": "ok"})


class ReadyHandler(ApiHandler):
    """``GET /readyz``: 200 when the store and the broker answer, 503 otherwise."""

    needs_token = False

    async def get(self) -> None:
        checks: dict[str, str] = {}
        for name, component in (("store", self.core.store), ("broker", self.core.broker)):
            try:
                await asyncio.wait_for(component.ping(), READY_TIMEOUT)
                checks[name] = "ok"
            except (TimeoutError, StoreUnavailable, OSError, Exception) as exc:  # noqa: BLE001
                checks[name] = f"unavailable: {exc.__class__.__name__}"
        ok = all(v == "ok" for v in checks.values())
        if not ok:
            self.set_header("Retry-After", "2")
        self.answer(200 if ok else 503, {"status": "ready" if ok else "unavailable", "checks": checks})


class MetricsHandler(ApiHandler):
    """``GET /metrics``: Prometheus text format."""

    needs_token = False

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.core.metrics.render())
