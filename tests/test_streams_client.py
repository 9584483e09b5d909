"""The Python client's multiplexed follow (``HeraldClient.follow_many``) against a real
server, on every transport: one connection for many executions, every event once and
in order per execution across a dropped connection, refusals reported per execution."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from client import HeraldClient
from client.streams import StreamsFollower
from core.transport import SHUTDOWN
from tests.fixtures_server import Herald

COMPLETE = {"event": "complete", "data": {"result": None}}


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll"])
def test_follow_many_one_connection_every_event_once_in_order(herald_run, transport: str) -> None:
    async def scenario(h: Herald) -> None:
        client = HeraldClient(h.base_url, h.mint())
        ids = [(await client.create("chat"))["id"] for _ in range(10)]
        for eid in ids:
            await h.tokens_batch(eid, 0, 2)
        follower = StreamsFollower(client, dict.fromkeys(ids, 1), transport=transport, wait=5)
        got: dict[str, list[int]] = {eid: [] for eid in ids}
        errors: list[tuple[str, Any]] = []

        async def read() -> None:
            async for eid, item in follower.items():
                if "seq" in item:
                    got[eid].append(item["seq"])
                else:
                    errors.append((eid, item))

        reading = asyncio.ensure_future(read())
        await asyncio.sleep(0.3)
        assert len(h.core.sessions) == 1, "one connection for ten executions"
        for eid in ids:
            await h.tokens_batch(eid, 2, 3)
        # End the connection under the follower (as a drain does): it resumes from its cursors.
        for session in h.core.sessions:
            session.close(SHUTDOWN)
        for eid in ids:
            await h.tokens_batch(eid, 5, 1)
            await h.publish(eid, COMPLETE)
        await asyncio.wait_for(reading, 15)
        for eid in ids:
            assert got[eid] == list(range(2, 9)), eid
        assert errors == []
        assert transport == "longpoll" or follower.connections == 2, "reconnected once"

    herald_run(scenario)


def test_follow_many_reports_a_refusal_for_its_execution_and_goes_on(herald_run) -> None:
    async def scenario(h: Herald) -> None:
        client = HeraldClient(h.base_url, h.mint())
        mine = (await client.create("chat"))["id"]
        theirs = (await h.create(token=h.mint("bob")))["id"]
        stream = client.follow_many({mine: 0, theirs: 0, "ex_missing": 0}, transport="sse")
        await h.tokens_batch(mine, 0, 1)
        await h.publish(mine, COMPLETE)
        items = [(eid, item) async for eid, item in stream]
        refusals = {eid: item["code"] for eid, item in items if item.get("control") == "error"}
        assert refusals == {theirs: "forbidden", "ex_missing": "not_found"}
        assert [item["seq"] for eid, item in items if eid == mine] == [1, 2, 3]

    herald_run(scenario)
