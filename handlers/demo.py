"""``POST /api/demo`` ``{speed?}``: start a demo execution (core/demo.py) owned by the
caller, so the dashboard's button shows Herald working without any producer."""

from __future__ import annotations

from typing import Any

from core.auth import Scope, require
from core.demo import DemoSimulator
from core.errors import bad_request
from core.stream import Core
from handlers.base import ApiHandler


class DemoHandler(ApiHandler):
    """Creates and starts one demo execution; answers ``201`` with it."""

    def initialize(self, core: Core, simulator: DemoSimulator) -> None:  # type: ignore[override]
        super().initialize(core)
        self.simulator = simulator

    async def post(self) -> None:
        require(self.principal, Scope.EXECUTIONS_WRITE)
        body = self.json_body(optional=True)
        speed = body.get("speed", 1) if isinstance(body, dict) else None
        if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.1 <= speed <= 100:
            raise bad_request("speed must be a number between 0.1 and 100")
        execution = await self.simulator.start(self.principal.sub, float(speed))
        self.set_header("Location", f"/api/executions/{execution.id}")
        self.answer(201, execution.to_public())


def routes(core: Core) -> list[tuple[str, Any, dict[str, Any]]]:
    return [(r"/api/demo", DemoHandler, {"core": core, "simulator": DemoSimulator(core)})]
