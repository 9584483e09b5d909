"""``POST /api/demo`` ``{speed?, demo?, prompt?}``: start a demo execution owned by the caller, so
the dashboard's buttons show Herald working.

``demo`` is ``"diagnosis"`` (the default) or ``"llm"``. When a worker serves the demo's
queue (``demo`` or ``llm``; ``make run`` starts the example workers), the demo is an
ordinary queued execution that worker runs; otherwise the built-in simulator
(core/demo.py) plays it, so a bare ``python server.py`` still shows a demo running.
"""

from __future__ import annotations

from typing import Any

from core.auth import Scope, require
from core.demo import DemoSimulator, worker_demo
from core.dispatch import Dispatcher
from core.errors import bad_request
from core.service import Core
from handlers.base import ApiHandler

DEMOS = ("diagnosis", "llm")


class DemoHandler(ApiHandler):
    """Creates and starts one demo execution; answers ``201`` with it (its ``queue``
    says whether a worker serves it: ``null`` means the built-in simulator)."""

    def initialize(  # type: ignore[override]
        self, core: Core, simulator: DemoSimulator, dispatcher: Dispatcher | None
    ) -> None:
        super().initialize(core)
        self.simulator = simulator
        self.dispatcher = dispatcher

    async def post(self) -> None:
        require(self.principal, Scope.EXECUTIONS_WRITE)
        body = self.json_body()
        if not isinstance(body, dict):
            raise bad_request("the body must be an object {speed?, demo?, prompt?}")
        speed = body.get("speed", 1)
        if not isinstance(speed, int | float) or isinstance(speed, bool) or not 0.1 <= speed <= 100:
            raise bad_request("speed must be a number between 0.1 and 100")
        name = body.get("demo", "diagnosis")
        if name not in DEMOS:
            raise bad_request("demo must be 'diagnosis' or 'llm'")
        prompt = body.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or not 1 <= len(prompt.strip()) <= 300):
            raise bad_request("prompt must be a string of 1 to 300 characters")
        prompt = prompt.strip() if prompt else None
        plan = worker_demo(name, float(speed), prompt)
        if self.dispatcher is not None and self.dispatcher.serves(plan.queue):
            execution = await self.core.create_execution(self.principal.sub, plan.kind, plan.input, plan.queue)
        else:
            execution = await self.simulator.start(self.principal.sub, float(speed), prompt)
        self.set_header("Location", f"/api/executions/{execution.id}")
        self.answer(201, execution.to_public())


def routes(core: Core, dispatcher: Dispatcher | None) -> list[tuple[str, Any, dict[str, Any]]]:
    """``/api/demo``; with a dispatcher, demos go to connected example workers."""
    deps = {"core": core, "simulator": DemoSimulator(core), "dispatcher": dispatcher}
    return [(r"/api/demo", DemoHandler, deps)]
