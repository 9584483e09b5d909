"""An example worker that streams a long answer token by token, as an LLM would.

No model is downloaded: a small local generator writes an answer about the question's
subject from a few sentence shapes, deterministically (the same question gives the
same answer, another question another one).

    python examples/llm_worker.py --queue chat

Input (all optional): ``{"prompt": "...", "tokens": 400, "tokens_per_second": 200}``
(``tokens_per_second`` 0 streams as fast as the connection takes them).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.common import run_cli
from worker import Emit, Worker

#: Sentence shapes the answer is built from; ``{topic}`` is the question's subject.
SENTENCES = (
    "Looking at {topic}, the first thing that changed was a deploy {minutes} minutes before the symptoms.",
    "The {percentile}th percentile latency of {topic} went from {before} ms to {after} ms.",
    "Most of that time is spent waiting on a downstream call that used to be cached.",
    "The logs around {topic} show {retries} retries from the same {count} clients.",
    "Nothing in the error rate moved, which points at slowness rather than failures.",
    "Rolling back the last change to {topic} is the quickest way to confirm it.",
    "If that is not possible, raising the cache lifetime to {ttl} seconds should bring latency back down.",
    "Watch the same dashboards for {watch} minutes after the change to see whether it holds.",
)


def generate(prompt: str, count: int) -> Iterator[str]:
    """``count`` tokens (words with their leading space) of an answer about the
    question's subject: the same question gives the same answer, another question a
    different one (the sentences, their order and their numbers are seeded by it)."""
    rng = random.Random(prompt)
    words = [w.strip("?.!,") for w in prompt.split()]
    topic = " ".join(w for w in words[2:7] if w) or "the service"
    order = list(SENTENCES)
    rng.shuffle(order)
    produced = 0
    while produced < count:
        for shape in order:
            sentence = shape.format(
                topic=topic,
                minutes=rng.randrange(3, 90),
                percentile=rng.choice((95, 99)),
                before=rng.randrange(80, 300),
                after=rng.randrange(400, 2000),
                retries=rng.randrange(100, 9000),
                count=rng.randrange(2, 40),
                ttl=rng.choice((30, 60, 300)),
                watch=rng.choice((10, 15, 30)),
            )
            for word in sentence.split():
                if produced == count:
                    return
                yield (" " if produced else "") + word
                produced += 1


class LlmWorker(Worker):
    queue = "chat"

    async def run(self, execution: dict[str, Any], emit: Emit) -> Any:
        params = execution.get("input") or {}
        prompt = str(params.get("prompt", "Tell me about Herald"))
        count = int(params.get("tokens", 400))
        rate = float(params.get("tokens_per_second", 200))
        answer = []
        step = max(1, count // 10)  # a progress event every tenth of the answer, for dashboards
        for i, text in enumerate(generate(prompt, count)):
            await emit.token(text)
            answer.append(text)
            if (i + 1) % step == 0 and i + 1 < count:
                await emit.progress(round(100 * (i + 1) / count), stage="writing")
            if rate > 0:
                await asyncio.sleep(1 / rate)
        return {"text": "".join(answer), "tokens": count}


if __name__ == "__main__":
    run_cli(LlmWorker(), "Serve a queue with a streamed (simulated) LLM answer")
