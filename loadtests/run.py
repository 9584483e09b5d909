"""Run a Locust preset against a Herald server this script starts, and check its targets.

``python loadtests/run.py floor|stress|smoke`` (``make loadtest`` runs ``floor``).

1. Starts ``server.py`` on a free 127.0.0.1 port (pinned to CPU 0 with ``taskset``
   where there are two CPUs), with a throw-away JWT secret.
2. Creates the preset's executions through the HTTP API (one per publisher unless it says more).
3. Runs Locust headless (``loadtests/locustfile.py``, pinned to CPU 1) with the
   preset's follower mix, publishers, duration and ``--processes``; CSV and the HTML
   report go to ``loadtests/reports/<preset>*``.
4. Samples the server's CPU time and RSS from ``/proc`` and its open streams from
   ``/metrics`` while Locust runs.
5. Prints target against measured and exits 1 when a target is missed.

Everything runs on 127.0.0.1 and is bounded: the preset's duration, then stop.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REPORTS = os.path.join(HERE, "reports")
TICK = os.sysconf("SC_CLK_TCK")
SECRET = "herald-loadtest-secret-0123456789abcdef"  # >= 32 bytes for HS256
BATCH = 5  # events per "publish batch" request (locustfile.Publisher)


@dataclass
class Preset:
    """A load shape and the targets it must meet."""

    ws: int
    sse: int
    lp: int
    publishers: int
    publish_rate: float  # publisher tasks per second (3 in 4 publish 1 event, 1 in 4 publish 5)
    duration: int  # seconds
    spawn_rate: int
    processes: int
    p99_ms: float
    min_events_per_s: float
    max_error_pct: float
    max_cpu_pct: float
    max_rss_mb: float
    min_connected_pct: float = 99.5
    executions: int = 0  # followers spread over these; 0: one per publisher

    @property
    def followers(self) -> int:
        return self.ws + self.sse + self.lp

    @property
    def execution_count(self) -> int:
        return self.executions or self.publishers


PRESETS = {
    # The seeds' floor: 100 concurrent followers, 10 publishers.
    "floor": Preset(60, 30, 10, 10, 7, 30, 50, 1, 100, 100, 0.5, 20, 100),
    # 10,000 concurrent followers, 60 % WebSocket / 30 % SSE / 10 % long-poll, over 100
    # executions (100 followers each, as many runs each watched by a few people), 10
    # publishers each cycling over 10 of them, ~10 events/s in all (~1,000 deliveries/s).
    # The load client (Locust, gevent, one core) is the limit: with 1,000 followers per
    # execution it parsed 1,000 frames per event and its own delay reached 2 s.
    "stress": Preset(6000, 3000, 1000, 10, 0.5, 120, 200, 2, 2000, 5, 0.5, 100, 1000, executions=100),
    # What ``make test`` runs: seconds, every transport, the same checks.
    "smoke": Preset(6, 3, 2, 2, 4, 12, 20, 1, 500, 5, 0.5, 50, 150),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: str, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > int(cpu):
        return ["taskset", "-c", cpu, *argv]
    return argv


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def mint(sub: str = "loadtest") -> str:
    import jwt

    scopes = "executions:read executions:write events:publish"
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600, "scope": scopes}, SECRET, algorithm="HS256")


def http(method: str, url: str, token: str, body: object | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def open_streams(base: str) -> int:
    """Open stream connections, from the server's own ``herald_connections`` gauge."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(sum(float(m) for m in re.findall(r"^herald_connections\{[^}]*\} ([0-9.e+]+)$", text, re.M)))


def start_server(port: int) -> subprocess.Popen:
    argv = [sys.executable, os.path.join(ROOT, "server.py"), "--port", str(port), "--jwt-secret", SECRET]
    argv += ["--log-level", "warning", "--max-connections", "20000", "--max-connections-per-subject", "0"]
    proc = subprocess.Popen(pinned("0", argv), cwd=ROOT, start_new_session=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit("the Herald server did not start")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def read_stats(prefix: str) -> list[dict]:
    with open(prefix + "_stats.csv") as f:
        return list(csv.DictReader(f))


def evaluate(
    p: Preset, rows: list[dict], wall: float, publishing: float, cpu_s: float, rss_mb: float, peak: int
) -> list[tuple]:
    """(target, limit, measured, ok) for each of the preset's targets; events/s over
    the ``publishing`` seconds, CPU over the whole ``wall`` time of the run."""
    by = {(r["Type"], r["Name"]): r for r in rows}
    total = next(r for r in rows if r["Name"] == "Aggregated")
    requests_n = int(total["Request Count"])
    failures = int(total["Failure Count"])
    delivers = [r for r in rows if r["Name"] == "deliver"]
    p99 = max((float(r["99%"]) for r in delivers if r["99%"] not in ("N/A", "")), default=float("inf"))
    singles = int(by.get(("POST", "publish"), {}).get("Request Count", 0))
    batches = int(by.get(("POST", "publish batch"), {}).get("Request Count", 0))
    events_per_s = (singles + BATCH * batches) / publishing
    kinds = {"WS": p.ws, "SSE": p.sse, "LP": p.lp}
    missing = [k for k, n in kinds.items() if n and not int(by.get((k, "deliver"), {}).get("Request Count", 0))]
    out = [
        ("p99 publish-to-deliver, worst transport (ms)", f"< {p.p99_ms:g}", round(p99, 1), p99 < p.p99_ms),
        (
            "events published per second",
            f"> {p.min_events_per_s:g}",
            round(events_per_s, 1),
            events_per_s > p.min_events_per_s,
        ),
        (
            "error ratio (%)",
            f"< {p.max_error_pct:g}",
            round(100 * failures / max(requests_n, 1), 3),
            100 * failures / max(requests_n, 1) < p.max_error_pct,
        ),
        (
            "server CPU (% of one core)",
            f"< {p.max_cpu_pct:g}",
            round(100 * cpu_s / wall, 1),
            100 * cpu_s / wall < p.max_cpu_pct,
        ),
        ("server RSS, peak (MB)", f"< {p.max_rss_mb:g}", round(rss_mb, 1), rss_mb < p.max_rss_mb),
        (
            "concurrent followers, peak (% of preset)",
            f">= {p.min_connected_pct:g}",
            round(100 * peak / p.followers, 1),
            100 * peak / p.followers >= p.min_connected_pct,
        ),
        ("transports with deliveries", "all in the mix", ", ".join(missing) or "all", not missing),
    ]
    return out


def run(name: str, extra: list[str]) -> int:
    p = PRESETS[name]
    os.makedirs(REPORTS, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port)
    locust = None
    try:
        token = mint()
        executions = [
            http("POST", base + "/api/executions", token, {"kind": "loadtest"})["id"] for _ in range(p.execution_count)
        ]
        prefix = os.path.join(REPORTS, name)
        env = dict(
            os.environ,
            HERALD_LOAD_TOKEN=token,
            HERALD_LOAD_EXECUTIONS=",".join(executions),
            HERALD_LOAD_MIX=f"{p.ws},{p.sse},{p.lp},{p.publishers}",
            HERALD_LOAD_PUBLISH_RATE=str(p.publish_rate),
            HERALD_LOAD_PROCESSES=str(p.processes),
        )
        argv = [sys.executable, "-m", "locust", "-f", os.path.join(HERE, "locustfile.py"), "--headless"]
        argv += ["-u", str(p.followers + p.publishers), "-r", str(p.spawn_rate), "-t", f"{p.duration}s"]
        argv += ["--host", base, "--csv", prefix, "--html", prefix + ".html", "--only-summary", "--stop-timeout", "1"]
        argv += ["--loglevel", "WARNING"]
        if p.processes > 1:
            argv += ["--processes", str(p.processes)]
        argv += extra
        cpu0, t0 = proc_cpu_s(server.pid), time.time()
        publish_at = t0 + 3 + (p.followers + p.publishers) / p.spawn_rate
        env["HERALD_LOAD_PUBLISH_AT"] = str(publish_at)
        locust = subprocess.Popen(pinned("1", argv), cwd=ROOT, env=env, start_new_session=True)
        rss, peak = proc_rss_mb(server.pid), 0
        deadline = t0 + p.duration + 120
        while locust.poll() is None and time.time() < deadline:
            time.sleep(1)
            rss = max(rss, proc_rss_mb(server.pid))
            with contextlib.suppress(OSError):
                peak = max(peak, open_streams(base))
        if locust.poll() is None:
            stop(locust)
            raise SystemExit("Locust did not finish in time")
        wall, cpu_s = time.time() - t0, proc_cpu_s(server.pid) - cpu0
        publishing = max(1.0, time.time() - publish_at)
        results = evaluate(p, read_stats(prefix), wall, publishing, cpu_s, rss, peak)
    finally:
        if locust is not None and locust.poll() is None:
            stop(locust)
        stop(server)
    followers = f"{p.ws} WebSocket + {p.sse} SSE + {p.lp} long-poll followers"
    print(f"\npreset {name}: {followers} over {p.execution_count} executions, {p.publishers} publishers,")
    print(f"{p.duration} s, server pinned to CPU 0; report {prefix}.html\n")
    print(f"| {'target':46} | {'limit':>14} | {'measured':>10} | ok |")
    print(f"|{'-' * 48}|{'-' * 16}|{'-' * 12}|----|")
    for label, limit, measured, ok in results:
        print(f"| {label:46} | {limit:>14} | {measured!s:>10} | {'yes' if ok else 'NO'} |")
    missed = [r[0] for r in results if not r[3]]
    print("\nall targets met" if not missed else f"\nMISSED: {'; '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Locust presets against a real Herald server")
    ap.add_argument("preset", choices=sorted(PRESETS))
    args, rest = ap.parse_known_args()
    sys.exit(run(args.preset, rest))
