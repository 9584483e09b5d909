"""The pages with real workers, in Debian's Chromium: a ``server.py`` process, the
example workers as processes of their own (examples/diagnosis_worker.py,
examples/llm_worker.py) connected over WebSocket, and the dashboard and execution pages
showing who runs what — the queue panel, the worker of each execution, and an LLM
answer going ``sending → streaming → done``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures_browser import BrowserHerald, start_herald

pytestmark = pytest.mark.browser
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkerProcess:
    """One example worker, run as ``make run`` runs it, with a ``workers`` token."""

    def __init__(self, herald: BrowserHerald, script: str, queue: str, name: str) -> None:
        token = herald.auth.mint("worker-box", ("workers",), ttl=600)
        args = [sys.executable, os.path.join(ROOT, "examples", script), "--url", herald.url, "--token", token]
        args += ["--queue", queue, "--name", name, "--capacity", "2"]
        self.herald, self.queue, self.name = herald, queue, name
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_connected(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.name} exited with {self.process.returncode}"
            queues = {q["name"]: q for q in self.herald.api("GET", "/api/queues")["queues"]}
            if any(w["name"] == self.name for w in queues.get(self.queue, {}).get("workers", [])):
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not connect to queue {self.queue}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


@pytest.fixture(scope="module")
def served() -> Iterator[BrowserHerald]:
    """A server with the diagnosis worker on queue ``demo`` and the LLM worker on ``llm``."""
    herald = start_herald()
    workers = [
        WorkerProcess(herald, "diagnosis_worker.py", "demo", "diag-w1"),
        WorkerProcess(herald, "llm_worker.py", "llm", "llm-w1"),
    ]
    try:
        for worker in workers:
            worker.wait_connected()
        yield herald
    finally:
        for worker in workers:
            worker.stop()
        herald.process.stop()


def test_dashboard_shows_queues_and_the_worker_running_each_demo(page: Any, served: BrowserHerald):
    h = served
    token = h.mint(sub="wendy")
    page.goto(f"{h.url}/?speed=10&queuesEvery=200#token={token}")
    page.wait_for_selector("#feed-badge[data-state=open]")
    # The queue panel lists each queue with its connected worker and an empty queue.
    page.wait_for_selector("[data-queue=demo] li[data-worker=diag-w1]", timeout=5000)
    page.wait_for_selector("[data-queue=llm] li[data-worker=llm-w1]")
    assert page.locator("[data-queue=demo] [data-col=pending]").inner_text() == "0 waiting"
    assert "websocket" in page.locator("[data-queue=demo] li[data-worker=diag-w1]").inner_text()

    # The demo button queues a diagnosis the worker runs (2 s at speed 10).
    page.click("#start-demo")
    row = page.locator("#executions tr").first
    row.locator("[data-col=worker][data-worker=diag-w1]").wait_for(timeout=5000)
    execution_id = row.get_attribute("data-id")
    held = f"[data-queue=demo] li[data-worker=diag-w1] a[data-execution={execution_id}]"
    page.wait_for_selector(held, timeout=3000)  # the panel shows it in the worker's hands
    assert row.locator("[data-col=kind]").inner_text() == "diagnosis"
    row.locator("[data-col=status][data-status=succeeded]").wait_for(timeout=10_000)
    assert row.locator("[data-col=percent]").inner_text() == "100%"
    assert row.locator("[data-col=worker]").inner_text() == "diag-w1"
    page.wait_for_selector(held, state="detached", timeout=3000)  # and out of them when done

    # The LLM button queues a chat on queue llm, served by the LLM worker.
    page.click("#start-llm")
    llm_row = page.locator(f"#executions tr:not([data-id={execution_id}])").first
    llm_row.locator("[data-col=worker][data-worker=llm-w1]").wait_for(timeout=5000)
    assert llm_row.locator("[data-col=kind]").inner_text() == "chat"
    llm_row.locator("[data-col=status][data-status=succeeded]").wait_for(timeout=10_000)

    # The diagnosis's page: who ran it, the partial results, the final report.
    page.goto(f"{h.url}/executions/{execution_id}")
    page.wait_for_selector("#outcome.ok")
    assert page.locator("#worker").inner_text() == "diag-w1"
    assert page.locator("#queue").inner_text() == "queue demo"
    assert page.locator("#findings li").count() == 3
    assert "Diagnosis of checkout-service finished" in page.locator("#outcome").inner_text()
    document = h.api("GET", f"/api/executions/{execution_id}", token=token)
    assert document["worker"] == "diag-w1" and document["status"] == "succeeded"


# Records each phase the page shows, with how much text it shows at that moment.
RECORD_PHASES = """() => {
  window.phases = [];
  const note = () => {
    const current = document.querySelector('#phases li.current');
    const name = current ? current.dataset.phase : null;
    const last = window.phases[window.phases.length - 1];
    if (name && (!last || last[0] !== name)) {
      window.phases.push([name, document.getElementById('stream-text').textContent.length]);
    }
  };
  note();
  new MutationObserver(note).observe(document.getElementById('phases'), { subtree: true, attributes: true });
}"""


def test_execution_page_streams_an_llm_answer_sending_streaming_done(page: Any, served: BrowserHerald):
    h = served
    token = h.mint(sub="lena")
    source = {"prompt": "How does Herald stream an answer?", "tokens": 150, "tokens_per_second": 75}
    execution_id = h.api("POST", "/api/executions", {"kind": "chat", "queue": "late-llm", "input": source}, token)["id"]
    page.goto(f"{h.url}/executions/{execution_id}#token={token}")
    page.wait_for_selector("#transport-badge[data-state=open]")
    page.evaluate(RECORD_PHASES)
    # No worker serves queue late-llm yet: the question is sent, no token has come.
    assert page.locator("#phases li.current").inner_text().lower() == "sending"
    assert page.locator("#worker").inner_text() == "no worker yet"
    assert page.locator("#stream-text").inner_text() == ""

    worker = WorkerProcess(h, "llm_worker.py", "late-llm", "llm-late")
    try:
        page.wait_for_selector("#phases li.current[data-phase=streaming]", timeout=10_000)
        page.wait_for_selector("#outcome.ok", timeout=10_000)
    finally:
        worker.stop()
    answer = h.api("GET", f"/api/executions/{execution_id}", token=token)["result"]["text"]
    assert page.locator("#stream-text").text_content() == answer, "the whole streamed answer, once"
    assert page.locator("#phases li.current").inner_text().lower() == "done"
    assert page.locator("#caret").is_hidden()
    phases = page.evaluate("window.phases")
    assert [name for name, _ in phases] == ["sending", "streaming", "done"]
    assert 0 < phases[1][1] < len(answer), "streaming showed while the answer was still partial"
    assert page.locator("#worker").inner_text() == "llm-late"
    assert page.locator("#log tr[data-event=token]").count() == 150
