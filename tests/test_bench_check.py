"""The benchmark regression gate's verdict (``loadtests/bench.py --check``), without
running a benchmark: one run's records in, Herald's ratios to plain Tornado out, and
the failures against a baseline. The committed baseline must name the gate's own set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "loadtests"))

import bench  # noqa: E402


def record(server: str, test: str, fixed_cpu_s: float, kb: float) -> dict:
    """A test's record: the fixed-rate phase delivered 60,000 events for ``fixed_cpu_s``
    seconds of server CPU."""
    kind, n = test.split(":")
    fixed = {"delivered": 60_000, "server_cpu_s": fixed_cpu_s}
    return {"server": server, "kind": kind, "n": int(n), "kb_per_conn": kb, "reps": [{"fixed": fixed, "burst": {}}]}


def run_of(herald_cpu_s: float, herald_kb: float = 12.0) -> list[dict]:
    return [
        record("herald", "ws:1000", herald_cpu_s, herald_kb),
        record("plain", "ws:1000", 50.0, 15.0),
    ]


def test_ratios_are_herald_over_plain_in_the_same_run():
    measured = bench.ratios(run_of(2.0))
    # 30,000 against 1,200 deliveries per CPU-s at the fixed rate; 12 KB against 15 KB.
    assert measured == {
        "ws:1000": {"work_per_cpu_s": 25.0, "kb_per_idle_connection": 0.8, "herald_kb_per_idle_connection": 12.0}
    }


def test_a_test_missing_on_one_server_has_no_ratio():
    recs = run_of(2.0)
    recs[1] = {"server": "plain", "kind": "ws", "n": 1000, "error": "server did not start"}
    assert bench.ratios(recs) == {}
    assert bench.regressions({"ws:1000": ratio(25.0, 0.8, 12.0)}, {}) == [
        "ws:1000: no ratio measured (the test failed on one of the servers)"
    ]


def ratio(cpu: float, kb: float, herald_kb: float) -> dict[str, float]:
    return {"work_per_cpu_s": cpu, "kb_per_idle_connection": kb, "herald_kb_per_idle_connection": herald_kb}


@pytest.mark.parametrize(
    ("cpu", "kb", "herald_kb", "fails"),
    [
        (25.0, 0.8, 12.0, []),
        (19.0, 0.8, 12.0, []),  # 24 % lower: within the tolerance
        (18.0, 0.8, 12.0, ["deliveries"]),  # 28 % lower
        (25.0, 0.99, 14.9, []),  # 24 % more memory
        (25.0, 1.02, 15.3, ["KB per idle"]),  # 27.5 % more memory, 3.3 KB more
        (25.0, 1.10, 13.5, []),  # 37.5 % more, but 1.5 KB: RSS noise over 1,000 connections
        (50.0, 0.4, 6.0, []),  # better is never a failure
    ],
)
def test_the_gate_fails_on_a_ratio_more_than_a_quarter_worse(cpu, kb, herald_kb, fails):
    baseline = {"ws:1000": ratio(25.0, 0.8, 12.0)}
    measured = {"ws:1000": ratio(cpu, kb, herald_kb)}
    failures = bench.regressions(baseline, measured)
    assert len(failures) == len(fails)
    for failure, words in zip(failures, fails, strict=True):
        assert failure.startswith("ws:1000: ") and words in failure


def test_check_exits_1_on_a_regression_and_0_without(tmp_path, capsys):
    path = tmp_path / "baseline.json"
    bench.write_baseline(str(path), bench.ratios(run_of(2.0)), run_of(2.0))
    assert json.loads(path.read_text())["tests"]["ws:1000"]["work_per_cpu_s"] == 25.0
    assert bench.check(run_of(2.5), str(path)) == 0  # 20.0×: 20 % lower
    assert bench.check(run_of(3.0), str(path)) == 1  # 16.7×: 33 % lower
    out = capsys.readouterr().out
    assert (
        "REGRESSION ws:1000: deliveries per server CPU-s at the fixed rate 16.67× plain Tornado, baseline 25.0×" in out
    )
    assert out.rstrip().endswith("bench check: FAILED")


def test_the_committed_baseline_covers_the_gates_set():
    with open(bench.BASELINE) as f:
        baseline = json.load(f)["tests"]
    assert sorted(baseline) == sorted(bench.CHECK_TESTS.split(","))
    for ratios in baseline.values():
        assert set(ratios) == {"work_per_cpu_s", "kb_per_idle_connection", "herald_kb_per_idle_connection"}
        assert all(value > 0 for value in ratios.values())


def test_check_without_a_baseline_says_how_to_make_one(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "loadtests", "bench.py"), "--check", "--baseline", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no baseline at" in done.stderr and "--write-baseline" in done.stderr
    assert "Traceback" not in done.stderr
