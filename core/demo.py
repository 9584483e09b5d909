"""The demo simulator: a built-in producer so a new user sees Herald work at once.

It plays a scripted LLM-style execution (stages with progress, an answer streamed
token by token, a partial result, then ``complete``) over about 20 seconds, divided by
``speed``. It publishes through ``Core.publish`` like any other producer, so every
transport, the dashboard feed and the store see ordinary events.

When a real worker serves the demo's queue (``make run`` starts the example workers),
the demo is an ordinary queued execution instead (``WorkerDemo``), so a new user sees a
remote worker at work; the simulator is the fallback for a bare ``python server.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import HeraldError
from core.model import Execution, PublishItem

if TYPE_CHECKING:
    from core.service import Core

log = logging.getLogger("herald.demo")

KIND = "chat"
PROMPT = "Why is my checkout service slow since this morning's deploy?"
ANSWER = (
    "The deploy at 09:12 added a synchronous call to the pricing service inside the "
    "checkout request. Pricing answers in 480 ms at the 95th percentile, so checkout "
    "latency rose from 210 ms to 690 ms. Make the call asynchronous or cache prices "
    "for 60 seconds; both bring latency back under 250 ms."
)
#: The dashboard's example questions and their scripted answers.
ANSWERS = {
    PROMPT: ANSWER,
    "Why did the nightly backup job fail on db-3?": (
        "The backup on db-3 stopped at 02:41 when its volume reached 100%: yesterday's "
        "log rotation did not run, and 38 GB of old WAL files stayed on disk. Remove the "
        "archived WAL files, re-enable the rotation timer and run the backup again; it "
        "needs about 55 minutes."
    ),
    "Why are API error rates up in eu-west since 14:00?": (
        "Since 14:00 one of the three eu-west load balancers sends 31% of its requests to "
        "an instance that fails its health check only on /ready. Those requests answer "
        "502. Take the instance out of the pool and fix its readiness probe; the error "
        "rate drops from 4.2% to its usual 0.1%."
    ),
    "Why is the payments queue growing?": (
        "The payments queue grows by 120 messages a minute because two of its four "
        "consumers restart every few minutes: they run out of memory on the new receipt "
        "template. Raise their memory limit to 1 GiB or roll the template back; the queue "
        "drains in about 15 minutes."
    ),
}
#: Sentences for any other question, about its subject (``{topic}``).
_PARTS = (
    "I looked at what changed around {topic} in the last 24 hours.",
    "The metrics for {topic} moved first at {hour}:{minute:02d}, right after a configuration change.",
    "Error rates stayed flat, but the {percentile}th percentile latency rose by {rise} ms.",
    "The logs show {count} retries from one client in that window.",
    "Roll the change back, or limit that client to {limit} requests per second, and watch the same metrics for "
    "ten minutes.",
)


def answer_for(prompt: str) -> str:
    """The demo's answer to ``prompt``: the scripted one for the dashboard's example
    questions, else a short diagnosis about the question's subject, the same for the
    same question (seeded by it) and different from one question to the next."""
    if prompt in ANSWERS:
        return ANSWERS[prompt]
    rng = random.Random(prompt)
    words = [w.strip("?.!,") for w in prompt.split()]
    topic = " ".join(w for w in words[2:8] if w) or "this"
    values = {
        "topic": topic,
        "hour": rng.randrange(0, 24),
        "minute": rng.randrange(0, 60),
        "percentile": rng.choice((95, 99)),
        "rise": rng.randrange(40, 900),
        "count": rng.randrange(200, 5000),
        "limit": rng.choice((10, 50, 100)),
    }
    return " ".join(part.format(**values) for part in _PARTS)


STAGES = [
    (5, "queued", "Waiting for a model slot..."),
    (15, "ai_fetching", "Fetching traces and deploy history..."),
    (30, "analysing", "Comparing latency before and after the deploy..."),
    (45, "writing", "Writing the diagnosis..."),
]
#: Seconds the whole script takes at speed 1.
DURATION = 20.0


def script(prompt: str = PROMPT) -> list[tuple[float, PublishItem]]:
    """The demo as (delay before, event) pairs; the delays add up to ``DURATION``."""
    answer = answer_for(prompt)
    steps: list[tuple[float, PublishItem]] = []
    for progress, stage, text in STAGES:
        steps.append((1.5, PublishItem("progress", {"progress": progress, "stage": stage, "status_text": text})))
        steps.append((0.5, PublishItem("log", {"level": "info", "message": text})))
    words = answer.split(" ")
    token_time = DURATION - sum(d for d, _ in steps) - 2.0
    for i, word in enumerate(words):
        steps.append((token_time / len(words), PublishItem("token", {"text": word if i == 0 else " " + word})))
        if i % 12 == 11:
            progress = 45 + int(50 * (i + 1) / len(words))
            steps.append((0.0, PublishItem("progress", {"progress": progress, "stage": "writing"})))
    summary = answer.split(". ")[0].rstrip(".")
    steps.append((1.0, PublishItem("result", {"partial": True, "summary": summary})))
    result: dict[str, Any] = {"answer": answer, "confidence": 0.87}
    if prompt == PROMPT:
        result["root_cause"] = "synchronous pricing call"
    steps.append((1.0, PublishItem("complete", {"result": result})))
    return steps


@dataclass(frozen=True)
class WorkerDemo:
    """A demo served by a connected example worker: what to create, on which queue."""

    kind: str
    queue: str
    input: dict[str, Any]


#: The dashboard's two demos, by the name ``POST /api/demo`` takes.
DIAGNOSIS_QUEUE = "demo"
LLM_QUEUE = "llm"
#: The LLM demo's answer length and its pace at speed 1 (~20 s).
LLM_TOKENS = 240
LLM_TOKENS_PER_SECOND = 12.0


def worker_demo(name: str, speed: float, prompt: str | None = None) -> WorkerDemo:
    """The execution a worker-served demo creates: about ``DURATION / speed`` seconds
    (examples/diagnosis_worker.py reads ``seconds``, examples/llm_worker.py reads
    ``tokens`` and ``tokens_per_second``)."""
    if name == "llm":
        pace = {"tokens": LLM_TOKENS, "tokens_per_second": LLM_TOKENS_PER_SECOND * speed}
        return WorkerDemo("chat", LLM_QUEUE, {"prompt": prompt or PROMPT, "demo": True, **pace})
    seconds = round(DURATION / speed, 3)
    return WorkerDemo("diagnosis", DIAGNOSIS_QUEUE, {"subject": "checkout-service", "seconds": seconds, "demo": True})


class DemoSimulator:
    """Starts demo executions and plays their script; keeps its tasks so they can be
    stopped with the server."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, owner: str, speed: float = 1.0, prompt: str | None = None) -> Execution:
        """Create a demo execution owned by ``owner`` and start playing it."""
        prompt = prompt or PROMPT
        execution = await self.core.create_execution(owner, KIND, {"prompt": prompt, "demo": True}, None)
        task = asyncio.ensure_future(self.play(execution.id, max(0.1, min(100.0, speed)), prompt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return execution

    async def play(self, execution_id: str, speed: float, prompt: str = PROMPT) -> None:
        """Publish the script; each event is keyed so a retried publish stores nothing twice."""
        try:
            for i, (delay, item) in enumerate(script(prompt)):
                if delay:
                    await asyncio.sleep(delay / speed)
                keyed = PublishItem(item.event, item.data, f"demo-{i}")
                await self.core.publish(execution_id, [keyed])
        except HeraldError as exc:  # cancelled by the user (409) or the store is gone
            log.info("demo %s stopped: %s", execution_id, exc.message)

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
