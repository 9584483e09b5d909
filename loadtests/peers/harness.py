#!/usr/bin/env python3
"""Side-by-side benchmark of real-time event servers: fan-out over WebSocket and SSE,
long-poll, idle memory per connection and server CPU per delivered message.

The server under test runs pinned to CPU 0; this harness (the publisher) and the load
client workers (loadgen.py, or loadgen.js for WebSocket with --client node) run pinned
to CPU 1. All traffic goes to 127.0.0.1. Every loop is bounded in count and time.

For each peer and each test KIND:N (ws:1000, sse:5000, lp:1000 ...):
  start the server, measure its RSS, connect N subscribers, measure RSS again
  (-> KB per idle connection), send one probe message (-> how many subscribers are live),
  then a warm-up burst and REPS times: a fixed-rate phase (FIXED_DPS deliveries/s, at
  least FIXED_MSGS messages and FIXED_S seconds) and a burst phase (messages as fast as
  the publisher gets answers, 2 in flight, with at most WINDOW_S seconds' worth of the
  peer's delivery rate published and not yet received; at most BURST_DELIVERIES/N
  messages and BURST_S seconds of publishing).
Each message is b'@T<16-digit CLOCK_MONOTONIC us>#<seq>|x...' (MSG_SIZE bytes), so the
workers measure publish->receive latency against the same clock.

usage: harness.py [--peers a,b] [--tests ws:1000,sse:1000] [--reps 3] [--client py|node]
                  [--raw FILE.jsonl] [--md FILE.md]
"""
import argparse, asyncio, datetime, json, os, platform, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = "0", "1"
now_us = lambda: time.monotonic_ns() // 1000

MSG_SIZE = 200
FIXED_DPS = 10_000        # fixed-rate phase: deliveries per second (rate = FIXED_DPS / N msg/s)
FIXED_DPS_LP = 2_000      # long-poll: each delivery is a whole HTTP request
FIXED_MSGS = 4            # ... and at least this many messages
FIXED_S = 2.0             # ... over at least this many seconds
BURST_DELIVERIES = 400_000
BURST_S = 2.5
WINDOW_DELIVERIES = 200_000  # burst: at most this many deliveries published and not yet received,
WINDOW_S = 0.5               # ... and at most what the peer delivered in this long so far
WINDOW_MSGS = 20             # ... (the first 0.1 s: at most this many messages)
DRAIN_IDLE_S = 2.0        # a phase ends when nothing more arrives for this long
DRAIN_MAX_S = 15.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def tree(pids):
    """pids plus all their descendants (from /proc)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rfind(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_s(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rfind(")") + 2:].split()
            t += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return t / TICK


def core_busy():
    """Busy seconds per CPU from /proc/stat (user nice system irq softirq steal)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = line.split()
                out[v[0]] = sum(int(v[i]) for i in (1, 2, 3, 6, 7, 8)) / TICK
    return out


def rss_kb(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        t += int(line.split()[1])
        except OSError:
            pass
    return t


# ---------------------------------------------------------------- peers

LIVE = set()  # peers and worker processes started and not yet stopped (cleanup on SIGTERM)

class Peer:
    """A server under test. start() launches it pinned to CPU 0; stop() ends what it started."""
    name = "?"
    transports = {}   # kind -> (loadgen flavor, path)
    default_skip = ()  # kinds run only with --all-transports

    def __init__(self):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix=f"bench-{self.name}-")
        self.port = free_port()

    def spawn(self, argv, **kw):
        LIVE.add(self)
        p = subprocess.Popen(["taskset", "-c", SERVER_CPU] + argv, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(self.dir, "stderr.log"), "ab"), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def pids(self):
        return tree([p.pid for p in self.procs])

    def pub_request(self, body):
        return f"http://127.0.0.1:{self.port}/pub", body

    def stop(self):
        LIVE.discard(self)
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)  # its own session: only what this peer started
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nchan(Peer):
    name = "nchan"
    transports = {"ws": ("nchan", "/ws"), "sse": ("nchan", "/sse"), "lp": ("nchan", "/lp")}

    def start(self):
        with open(os.path.join(HERE, "peers/nchan.conf.tmpl")) as f:
            conf = f.read().replace("DIR", self.dir).replace("PORT", str(self.port))
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.spawn(["/usr/sbin/nginx", "-c", path, "-p", self.dir + "/", "-e", self.dir + "/error.log"])
        return wait_port(self.port)


class Pushpin(Peer):
    name = "pushpin"
    transports = {"ws": ("pushpin", "/ws"), "sse": ("pushpin", "/sse"), "lp": ("pushpin", "/lp")}
    # Long-poll through this stateless origin has no cursor (what is published between two
    # polls is lost) and pushpin answers 502 to many of 1,000 simultaneous re-polls: not
    # comparable, so only run when asked for with --all-transports.
    default_skip = ("lp",)

    def start(self):
        self.origin = free_port()
        self.pubport = free_port()
        for sub in ("run", "log"):
            os.makedirs(os.path.join(self.dir, sub))
        with open(os.path.join(HERE, "peers/pushpin.conf.tmpl")) as f:
            conf = f.read().replace("DIR", self.dir).replace("PUBPORT", str(self.pubport)).replace("PORT", str(self.port))
        with open(os.path.join(self.dir, "pushpin.conf"), "w") as f:
            f.write(conf)
        with open(os.path.join(self.dir, "routes"), "w") as f:
            f.write(f"* 127.0.0.1:{self.origin},over_http\n")
        self.spawn([PY, os.path.join(HERE, "peers/pushpin_origin.py"), str(self.origin)])
        self.spawn(["pushpin", "--config", os.path.join(self.dir, "pushpin.conf")], cwd=self.dir)
        return wait_port(self.origin) and wait_port(self.port) and wait_port(self.pubport)

    def pub_request(self, body):
        text = body.decode()
        item = {"channel": "bench", "formats": {"ws-message": {"content": text},
                                                "http-stream": {"content": f"data: {text}\n\n"},
                                                "http-response": {"body": text}}}
        return f"http://127.0.0.1:{self.pubport}/publish/", json.dumps({"items": [item]}).encode()


class PyPeer(Peer):
    script, args = "", []

    def start(self):
        self.spawn([PY, os.path.join(HERE, "peers", self.script), str(self.port)] + self.args)
        return wait_port(self.port)


class TornadoPlain(PyPeer):
    name, script = "tornado-plain", "tornado_plain.py"
    transports = {"ws": ("plain", "/ws"), "sse": ("plain", "/sse"), "lp": ("plain", "/lp")}


class SockjsTornado(PyPeer):
    name, script = "sockjs-tornado", "sockjs_server.py"
    transports = {"ws": ("sockjs", "/sockjs"), "sse": ("sockjs", "/sockjs"), "lp": ("sockjs", "/sockjs")}


class SocketioTornado(PyPeer):
    name, script, args = "socketio-tornado", "socketio_server.py", ["tornado"]
    transports = {"ws": ("sio", "/socket.io/?EIO=4&transport=websocket"),
                  "lp": ("sio", "/socket.io/?EIO=4&transport=polling")}


class SocketioAiohttp(SocketioTornado):
    name, args = "socketio-aiohttp", ["aiohttp"]


class Herald(PyPeer):
    """Herald (loadtests/herald_peer.py: one execution, POST /pub publishes the body)."""

    name = "herald"
    path = (
        "/api/executions/ex_bench/events?access_token=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCIsImV4cCI6"
        "NDEwMjQ0NDgwMCwic2NvcGUiOiJleGVjdXRpb25zOnJlYWQifQ.RLcMjlRQSOx2uKZ5LYhE_j27YCxsxsxSGFWfmno8G8I"
    )
    transports = {"ws": ("plain", path), "sse": ("plain", path), "lp": ("herald", path)}
    # This harness lives in Herald's loadtests/peers/: the checkout is two levels up.
    herald = os.environ.get("HERALD_DIR", os.path.normpath(os.path.join(HERE, "..", "..")))

    def start(self):  # Herald's own venv (pyjwt, prometheus_client, ...), not the bench venv
        self.spawn(
            [
                os.environ.get("HERALD_PYTHON", os.path.join(self.herald, ".venv/bin/python")),
                os.path.join(self.herald, "loadtests/herald_peer.py"),
                str(self.port),
            ]
        )
        return wait_port(self.port)


PEERS = {c.name: c for c in (Nchan, Pushpin, TornadoPlain, SockjsTornado, SocketioTornado, SocketioAiohttp, Herald)}


# ---------------------------------------------------------------- load client workers

class Worker:
    def __init__(self, proc):
        self.proc = proc

    async def ask(self, cmd, timeout=30):
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        return json.loads(line)


async def start_workers(args, peer, kind, n):
    flavor, path = peer.transports[kind]
    port = peer.port
    w = args.workers
    stride = max(1, n // 500)
    share = [n // w + (1 if i < n % w else 0) for i in range(w)]
    ws, first = [], 0
    for i in range(w):
        if args.client == "node" and kind == "ws":
            argv = ["node", os.path.join(HERE, "loadgen.js")]
        else:
            argv = [PY, os.path.join(HERE, "loadgen.py")]
        argv += ["--kind", kind, "--flavor", flavor, "--port", str(port), "--path", path,
                 "--n", str(share[i]), "--first", str(first), "--stride", str(stride)]
        if argv[1].endswith(".py"):
            argv += ["--coalesce-ms", str(args.coalesce_ms)]
        first += share[i]
        env = dict(os.environ, NODE_PATH=os.path.join(os.environ.get("BENCH_ENV", "/tmp/benchenv"), "node/node_modules"))
        proc = await asyncio.create_subprocess_exec("taskset", "-c", CLIENT_CPU, *argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, limit=1 << 26, env=env)
        ws.append(Worker(proc))
        LIVE.add(proc)
    readies = []
    for wk in ws:
        line = await asyncio.wait_for(wk.proc.stdout.readline(), 120)
        readies.append(json.loads(line))
    return ws, readies


async def stop_workers(ws):
    for wk in ws:
        LIVE.discard(wk.proc)
        try:
            wk.proc.stdin.write(b"quit\n")
            await wk.proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            pass
    for wk in ws:
        try:
            await asyncio.wait_for(wk.proc.wait(), 10)
        except asyncio.TimeoutError:
            wk.proc.kill()
            await wk.proc.wait()


async def snap(ws):
    s = [await wk.ask("snap") for wk in ws]
    return {"count": sum(x["count"] for x in s), "resp": sum(x["resp"] for x in s),
            "last": max(x["last"] for x in s), "open": sum(x["open"] for x in s),
            "closed": sum(x["closed"] for x in s), "errors": sum(x.get("errors", 0) for x in s),
            "cpu": sum(x["cpu"] for x in s)}


async def lat(ws, since_us):
    """Latencies of the messages published since since_us (a late message of an earlier
    phase does not count in this one)."""
    out = []
    for wk in ws:
        r = await wk.ask("lat")
        out += [x for x, ts in zip(r["lat"], r.get("ts", [])) if ts >= since_us]
    return out


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p * len(xs)))] / 1000, 2)


# ---------------------------------------------------------------- phases

class Publisher:
    def __init__(self, peer):
        self.peer = peer
        self.seq = 0
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4, force_close=False))
        self.errors = 0

    async def send(self):
        self.seq += 1
        head = b"@T%016d#%08d|" % (now_us(), self.seq)
        body = head + b"x" * (MSG_SIZE - len(head))
        url, data = self.peer.pub_request(body)
        try:
            async with self.session.post(url, data=data, headers={"Content-Type": "text/plain"}) as r:
                await r.read()
                if r.status >= 300:
                    self.errors += 1
        except aiohttp.ClientError:
            self.errors += 1

    async def close(self):
        await self.session.close()


async def phase(peer, pub, ws, live, nmsgs, rate):
    """Publish nmsgs (at rate msg/s, or as fast as answers come back with 2 in flight when
    rate is None), wait until every live subscriber has them or nothing more arrives."""
    pids = peer.pids()
    s0 = await snap(ws)
    scpu0, hcpu0, busy0 = cpu_s(pids), sum(os.times()[:2]), core_busy()
    t0 = now_us()
    deadline = time.monotonic() + (nmsgs / rate * 1.5 + 5 if rate else BURST_S)
    sent = 0
    if rate:
        for i in range(nmsgs):
            delay = (t0 + i * 1e6 / rate - now_us()) / 1e6
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() > deadline:
                break
            await pub.send()
            sent += 1
    else:
        # As fast as possible, but with at most `window` messages published and not yet
        # received by every live subscriber (peers whose publish call returns before the
        # fan-out, like pushpin, would otherwise queue without bound and drop).
        # The window adapts to the peer: WINDOW_S seconds of what it has delivered so far.
        cap = max(2, WINDOW_DELIVERIES // live)
        state = {"got": s0["count"], "changed": time.monotonic(), "done": False, "window": min(cap, WINDOW_MSGS)}
        tw0 = time.monotonic()

        async def watcher():
            while not state["done"]:
                c = (await snap(ws))["count"]
                if c != state["got"]:
                    state["got"], state["changed"] = c, time.monotonic()
                    el = time.monotonic() - tw0
                    if el > 0.1:
                        state["window"] = max(5, min(cap, int((c - s0["count"]) / live / el * WINDOW_S)))
                await asyncio.sleep(0.02)

        async def lane():
            nonlocal sent
            while sent < nmsgs and time.monotonic() < deadline:
                while (sent - (state["got"] - s0["count"]) / live >= state["window"]
                       and time.monotonic() - state["changed"] < 0.5 and time.monotonic() < deadline):
                    await asyncio.sleep(0.005)
                sent += 1
                await pub.send()
        wt = asyncio.create_task(watcher())
        await asyncio.gather(lane(), lane())
        state["done"] = True
        await wt
    t_pub = now_us()
    expected = sent * live
    got, last_change, prev = s0["count"], time.monotonic(), -1
    end = time.monotonic() + DRAIN_MAX_S
    while time.monotonic() < end:
        s1 = await snap(ws)
        got = s1["count"]
        if got - s0["count"] >= expected:
            break
        if got != prev:
            prev, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > DRAIN_IDLE_S:
            break
        await asyncio.sleep(0.1)
    s1 = await snap(ws)
    scpu1, hcpu1, busy1 = cpu_s(pids), sum(os.times()[:2]), core_busy()
    wall = (now_us() - t0) / 1e6
    lats = await lat(ws, t0)
    delivered = s1["count"] - s0["count"]
    span = max(s1["last"] - t0, 1) / 1e6
    return {
        "msgs": sent, "rate": rate, "expected": expected, "delivered": delivered,
        "loss_pct": round(100 * (1 - delivered / expected), 2) if expected else None,
        "pub_s": round((t_pub - t0) / 1e6, 3), "span_s": round(span, 3),
        "deliv_per_s": round(delivered / span), "responses": s1["resp"] - s0["resp"],
        "resp_per_s": round((s1["resp"] - s0["resp"]) / span), "http_5xx": s1["errors"] - s0["errors"],
        "p50_ms": pct(lats, 0.5), "p99_ms": pct(lats, 0.99), "max_ms": pct(lats, 1.0), "lat_n": len(lats),
        "server_cpu_s": round(scpu1 - scpu0, 2), "client_cpu_s": round(s1["cpu"] - s0["cpu"] + hcpu1 - hcpu0, 2),
        "server_cpu_pct": round(100 * (scpu1 - scpu0) / span), "client_cpu_pct": round(100 * (s1["cpu"] - s0["cpu"] + hcpu1 - hcpu0) / span),
        "server_cpu_s_per_M": round((scpu1 - scpu0) / delivered * 1e6, 1) if delivered else None,
        "client_cpu_s_per_M": round((s1["cpu"] - s0["cpu"] + hcpu1 - hcpu0) / delivered * 1e6, 1) if delivered else None,
        "pub_errors": pub.errors,
        # whole-core busy time over the phase: core 0 minus the server = other load (noise)
        "core_busy_pct": {k: round(100 * (busy1[k] - busy0[k]) / wall) for k in busy1},
        "other_on_server_core_pct": round(100 * ((busy1["cpu0"] - busy0["cpu0"]) - (scpu1 - scpu0)) / wall),
    }


async def run_test(args, peer_name, kind, n, emit):
    peer = PEERS[peer_name]()
    rec = {"peer": peer_name, "kind": kind, "n": n, "client": args.client if kind == "ws" else "py"}
    t_test = time.monotonic()
    ws = []
    pub = None
    try:
        if not peer.start():
            rec["error"] = "server did not start"
            emit(rec)
            return
        time.sleep(1.0)
        rss0 = rss_kb(peer.pids())
        t = time.monotonic()
        ws, readies = await start_workers(args, peer, kind, n)
        rec["connect_s"] = round(time.monotonic() - t, 2)
        rec["open"] = sum(r["ready"] for r in readies)
        rec["failed"] = sum(r["failed"] for r in readies)
        await asyncio.sleep(1.0)
        rss1 = rss_kb(peer.pids())
        rec["rss0_mb"] = round(rss0 / 1024, 1)
        rec["rss_mb"] = round(rss1 / 1024, 1)
        rec["kb_per_conn"] = round((rss1 - rss0) / max(rec["open"], 1), 1)
        pub = Publisher(peer)
        probe = await phase(peer, pub, ws, rec["open"], 1, 100.0)
        rec["live"] = live = probe["delivered"]
        if live == 0:
            rec["error"] = "probe message reached no subscriber"
            emit(rec)
            return
        fixed_rate = (FIXED_DPS_LP if kind == "lp" else FIXED_DPS) / live
        nfixed = max(FIXED_MSGS, int(fixed_rate * FIXED_S))
        nburst = max(10, BURST_DELIVERIES // live)
        await phase(peer, pub, ws, live, max(5, nburst // 4), None)  # warm-up, not recorded
        rec["reps"] = []
        for r in range(args.reps):
            fixed = await phase(peer, pub, ws, live, nfixed, fixed_rate)
            burst = await phase(peer, pub, ws, live, nburst, None)
            rec["reps"].append({"fixed": fixed, "burst": burst})
            print(f"  {peer_name} {kind}:{n} rep{r + 1}: fixed {fixed['rate']:.1f}/s p50 {fixed['p50_ms']} p99 {fixed['p99_ms']} ms"
                  f" loss {fixed['loss_pct']}% | burst {burst['deliv_per_s']:,}/s p50 {burst['p50_ms']} p99 {burst['p99_ms']}"
                  f" loss {burst['loss_pct']}% srv {burst['server_cpu_pct']}% cli {burst['client_cpu_pct']}%"
                  f" srv {burst['server_cpu_s_per_M']} s/M cli {burst['client_cpu_s_per_M']} s/M"
                  f" other {burst['other_on_server_core_pct']}%", flush=True)
        s = await snap(ws)
        rec["closed_during"] = s["closed"]
        rec["wall_s"] = round(time.monotonic() - t_test, 1)
        emit(rec)
    except Exception as e:  # record and go on with the next test
        rec["error"] = f"{type(e).__name__}: {e}"
        emit(rec)
    finally:
        if pub:
            await pub.close()
        await stop_workers(ws)
        peer.stop()


# ---------------------------------------------------------------- report

def med(reps, phase_name, key):
    xs = [r[phase_name][key] for r in reps if r[phase_name].get(key) is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "–"
    if isinstance(x, (int, float)) and abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if isinstance(x, float) else f"{x}"


def versions():
    def sh(cmd):
        try:
            r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception:
            return "?"
    import importlib.metadata as md
    py = {}
    for d in ("tornado", "python-socketio", "python-engineio", "sockjs-tornado", "uvloop", "aiohttp"):
        try:
            py[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "nginx": sh("/usr/sbin/nginx -v"), "nchan": sh("dpkg-query -W libnginx-mod-nchan"),
            "pushpin": sh("dpkg-query -W pushpin"), "node": sh("node --version"), **py}


def report(recs, args):
    lines = []
    lines.append("| peer | test | open/live | KB/conn idle | fixed rate msg/s | fixed p50 / p99 ms | fixed loss % "
                 "| burst deliveries/s | burst p50 / p99 ms | burst loss % | server CPU % / client CPU % (burst) "
                 "| server CPU s per 1M deliveries | deliveries per server CPU-second | LP responses/s (burst) "
                 "| other load on server core % (burst) |")
    lines.append("|" + "---|" * 15)
    for r in recs:
        t = f"{r['kind']}:{r['n']}"
        if "error" in r and not r.get("reps"):
            lines.append(f"| {r['peer']} | {t} | {r.get('open', '–')} | – | – | – | – | – | – | – | – | – | – | {r['error']} | – |")
            continue
        reps = r["reps"]
        lines.append(
            f"| {r['peer']} | {t} | {r['open']}/{r['live']} | {r['kb_per_conn']} "
            f"| {reps[0]['fixed']['rate']:.1f} | {fmt(med(reps, 'fixed', 'p50_ms'))} / {fmt(med(reps, 'fixed', 'p99_ms'))} "
            f"| {fmt(med(reps, 'fixed', 'loss_pct'))} "
            f"| {fmt(med(reps, 'burst', 'deliv_per_s'))} | {fmt(med(reps, 'burst', 'p50_ms'))} / {fmt(med(reps, 'burst', 'p99_ms'))} "
            f"| {fmt(med(reps, 'burst', 'loss_pct'))} "
            f"| {fmt(med(reps, 'burst', 'server_cpu_pct'))} / {fmt(med(reps, 'burst', 'client_cpu_pct'))}"
            f"{' (client-bound)' if (med(reps, 'burst', 'client_cpu_pct') or 0) >= 90 else ''} "
            f"| {fmt(med(reps, 'burst', 'server_cpu_s_per_M'))} "
            f"| {fmt(round(1e6 / med(reps, 'burst', 'server_cpu_s_per_M'), -3)) if med(reps, 'burst', 'server_cpu_s_per_M') else '–'} "
            f"| {fmt(med(reps, 'burst', 'resp_per_s')) if r['kind'] == 'lp' else '–'} "
            f"| {fmt(med(reps, 'burst', 'other_on_server_core_pct'))} |")
    return "\n".join(lines)


async def main(args):
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    recs = []
    raw = open(args.raw, "a") if args.raw else None

    def emit(rec):
        recs.append(rec)
        if raw:
            raw.write(json.dumps(rec) + "\n")
            raw.flush()

    t0 = time.time()
    ver = versions()
    emit({"versions": ver, "args": vars(args), "started": datetime.datetime.now().isoformat(timespec="seconds")})
    recs.clear()
    for peer in args.peers.split(","):
        for test in args.tests.split(","):
            kind, n = test.split(":")
            if kind not in PEERS[peer].transports or (kind in PEERS[peer].default_skip and not args.all_transports):
                continue
            print(f"== {peer} {kind}:{n}", flush=True)
            await run_test(args, peer, kind, int(n), emit)
    table = report(recs, args)
    print(table)
    print(f"total {time.time() - t0:.0f} s")
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"<!-- generated by harness.py {datetime.datetime.now().isoformat(timespec='seconds')}, "
                    f"{args.reps} reps, medians; client {args.client}; wall {time.time() - t0:.0f} s -->\n"
                    f"<!-- {json.dumps(ver)} -->\n\n")
            f.write(table + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--peers", default="nchan,pushpin,tornado-plain,sockjs-tornado,socketio-tornado")
    p.add_argument("--tests", default="ws:1000,ws:5000,ws:10000,sse:1000,sse:5000,lp:1000")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--client", choices=["py", "node"], default="py")
    p.add_argument("--all-transports", action="store_true", help="also run tests a peer skips by default (pushpin lp)")
    p.add_argument("--coalesce-ms", type=float, default=0.0, help="passed to loadgen.py (epoll engine)")
    p.add_argument("--raw", help="append one JSON record per test to this file")
    p.add_argument("--md", help="write the summary table to this file")
    p.add_argument("--from-raw", metavar="FILE", help="only print the table of an earlier run's --raw file")
    args = p.parse_args()
    if args.from_raw:
        with open(args.from_raw) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        print(report([r for r in recs if "peer" in r], args))
        sys.exit(0)

    def on_term(*_):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, on_term)
    try:
        asyncio.run(main(args))
    finally:
        for x in list(LIVE):  # only what this run started
            if isinstance(x, Peer):
                x.stop()
            else:
                try:
                    os.kill(x.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
