"""An example worker that streams a long answer token by token, as an LLM would.

No model is downloaded: a small local generator strings words from the question and
a fixed vocabulary, deterministically (the same question gives the same answer).

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

from examples.common import run_cli  # noqa: E402
from worker import Emit, Worker  # noqa: E402

VOCABULARY = (
    "the stream carries every event in order and a client that reconnects resumes from its cursor "
    "so nothing is lost while the answer is written one token at a time across websocket sse and long poll"
).split()


def generate(prompt: str, count: int) -> Iterator[str]:
    """``count`` tokens (words with their leading space) seeded by the prompt."""
    rng = random.Random(prompt)
    words = [w for w in prompt.lower().split() if w.isalpha()] or ["answer"]
    for i in range(count):
        word = rng.choice(words) if rng.random() < 0.2 else rng.choice(VOCABULARY)
        yield (" " if i else "") + word + ("." if i % 17 == 16 else "")


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
