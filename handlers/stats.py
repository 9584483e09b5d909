"""``GET /api/stats``: the console's overview — open connections, throughput,
publish→deliver latency, slow-consumer drops, refusals, queues and the store and broker
health of every Herald process, with ten minutes of chart series (core/health.py).

Scope ``executions:read``: the figures are counts and queue names, no execution's
content, and ``/metrics`` already shows them without a token. Worker names and
execution ids stay behind ``GET /api/queues``.
"""

from __future__ import annotations

from typing import Any

from core.auth import Scope, require
from core.health import HealthProbe
from core.service import Core
from handlers.base import ApiHandler


class StatsHandler(ApiHandler):
    """Answers the probe's latest view; never pings on the request path."""

    def initialize(self, core: Core, probe: HealthProbe) -> None:  # type: ignore[override]
        super().initialize(core)
        self.probe = probe

    def get(self) -> None:
        require(self.principal, Scope.EXECUTIONS_READ)
        self.answer(200, self.probe.stats())


def routes(core: Core, probe: HealthProbe) -> list[tuple[str, Any, dict[str, Any]]]:
    """``/api/stats``, served from ``probe``."""
    return [(r"/api/stats", StatsHandler, {"core": core, "probe": probe})]
