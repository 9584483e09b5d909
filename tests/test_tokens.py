"""LLM token streaming on a real server: 10,000 tokens sent by a worker one WebSocket
frame each reach subscribers on every transport complete and in order, without one
store append per token; and the example LLM worker's answer arrives whole."""

from __future__ import annotations

import asyncio

import pytest

from examples.llm_worker import LlmWorker, generate
from tests.fixtures_server import Herald
from tests.fixtures_workers import connect_worker, count_appends, follow_all, worker_token
from worker import WorkerRunner

TOKENS = 10_000


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_ten_thousand_tokens_from_a_worker_arrive_complete_and_in_order(herald_run, transport):
    async def scenario(h: Herald) -> None:
        worker = await connect_worker(h, "chat", "llm")
        execution_id = (await h.create(queue="chat"))["id"]
        await worker.execute()
        follower = asyncio.ensure_future(follow_all(h, execution_id, transport, timeout=25))
        await asyncio.sleep(0.1)  # the subscriber is live before the first token
        appends = count_appends(h)
        for i in range(TOKENS):
            worker.event(execution_id, "token", {"text": f"t{i} "})  # one frame per token
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the server read while we write
        worker.event(execution_id, "complete", {"result": None})
        events = await follower
        tokens = [e["data"]["text"] for e in events if e["event"] == "token"]
        assert tokens == [f"t{i} " for i in range(TOKENS)]
        assert [e["seq"] for e in events] == list(range(1, TOKENS + 3))  # status, tokens, complete
        assert events[-1]["event"] == "complete"
        # Frames that arrive together are published together.
        assert appends[0] < TOKENS / 20, f"{appends[0]} store appends for {TOKENS} tokens"
        print(f"\n{transport}: {appends[0]} store appends for {TOKENS + 1} events")

    herald_run(scenario)


def test_the_example_llm_worker_streams_its_answer_token_by_token(herald_run):
    async def scenario(h: Herald) -> None:
        runner = WorkerRunner(LlmWorker(), h.base_url, worker_token(h), queue="chat", name="llm")
        serving = asyncio.ensure_future(runner.serve_forever())
        try:
            prompt = "why is the sky blue"
            params = {"prompt": prompt, "tokens": 2000, "tokens_per_second": 0}
            execution_id = (await h.create(kind="chat", queue="chat", input=params))["id"]
            events = await follow_all(h, execution_id, "sse")
            expected = list(generate(prompt, 2000))
            assert [e["data"]["text"] for e in events if e["event"] == "token"] == expected
            assert events[-1]["data"]["result"] == {"text": "".join(expected), "tokens": 2000}
        finally:
            runner.stop()
            await asyncio.wait_for(serving, 5)

    herald_run(scenario)
