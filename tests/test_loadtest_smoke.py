"""The one load test in ``make test``: a short Locust run against a real Herald server.

``loadtests/run.py smoke`` starts ``server.py`` as a subprocess, runs Locust headless
(WebSocket, SSE and long-poll followers plus publishers) for ~12 seconds and checks
the preset's targets; here we also read Locust's own CSV to see that every transport
delivered events in order and nothing failed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_locust_smoke_run_meets_its_targets():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "loadtests", "run.py"), "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all targets met" in done.stdout
    with open(os.path.join(ROOT, "loadtests", "reports", "smoke_stats.csv")) as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    for kind in ("WS", "SSE", "LP"):
        assert int(rows[(kind, "deliver")]["Request Count"]) > 0, kind
        assert int(rows[(kind, "deliver")]["Failure Count"]) == 0, kind
        assert (kind, "order") not in rows, f"{kind} saw an event out of order"
    assert int(rows[("POST", "publish")]["Request Count"]) > 0
    assert int(rows[("POST", "publish batch")]["Request Count"]) > 0
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0
