"""A rolling restart (issue 13): 2 ``server.py`` processes behind the project's nginx
config on SecantusDB and Redis, subscribers on every transport reconnecting by
themselves with their cursors (and the drain's retry hint), a publisher publishing
throughout; ``SIGTERM`` one process, start it again, then the other. Nothing
acknowledged is lost, nobody is stuck, every drain exits 0, reconnects are quick
(loose bound: the machine is shared)."""

from __future__ import annotations

import asyncio
import re

import pytest

from loadtests import chaos

pytestmark = [pytest.mark.timeout(180), pytest.mark.mongo]


def test_rolling_restart_loses_nothing_and_strands_nobody() -> None:
    options = chaos.parse_args(
        [
            "rolling",
            "--subscribers",
            "60",
            "--executions",
            "2",
            "--rate",
            "10",
            "--warmup",
            "4",
            "--settle",
            "30",
            "--seed",
            "13",
        ]
    )
    report = asyncio.run(chaos.main(options))
    print(report.table())
    exits = [re.search(r"exit code (\S+)", note) for note in report.notes]
    assert [m[1] for m in exits if m] == ["0", "0"], report.notes
    for name, stats in report.stats.items():
        assert (stats.lost, stats.stuck, stats.duplicates, stats.order) == (0, 0, 0, 0), (name, stats)
        assert report.delivered_pct(name) == 100.0, name
        if name != "longpoll":  # a drained poll is simply answered: its client sees no drop
            assert stats.reconnect, f"{name}: no reconnect seen: was anyone on a drained process?"
            assert chaos.percentile(stats.reconnect, 95) < 5.0, (name, sorted(stats.reconnect)[-5:])
