"""HTML pages (jinja2): the dashboard and an execution page.

Pages carry no secrets: the page script reads the token from the URL fragment (which
browsers never send to the server) or from local storage, and calls the API.
"""

from __future__ import annotations

import os

import jinja2

from transports.handler import HeraldRequestHandler

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)


class PageHandler(HeraldRequestHandler):
    """Renders one template with the server's public settings."""

    def initialize(self, core, template: str) -> None:  # type: ignore[override]
        super().initialize(core)
        self.template = template

    def get(self, execution_id: str | None = None) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        page = _env.get_template(self.template).render(
            execution_id=execution_id, heartbeat=self.core.settings.heartbeat
        )
        self.finish(page)
