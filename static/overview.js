// The overview: GET /api/stats every 2 s (every Herald process together, see
// core/health.py): figures as tiles, the last minutes as charts, queues and processes.
import { Herald } from "/static/herald.js";
import { formatValue, lineChart } from "/static/charts.js";
import { clearProblem, explain, pageToken, problem, PROBLEMS, showWho } from "/static/session.js";

const token = pageToken();
const EVERY = Number(new URLSearchParams(location.search).get("every") || 2000);
const $ = (id) => document.getElementById(id);
const COLORS = { websocket: "#3b5bdb", sse: "#7048e8", longpoll: "#f08c00", worker: "#2f9e44" };
let timer = null;
let failures = 0;

function tile(name, value, sub, state = "") {
  const el = document.querySelector(`[data-figure="${name}"]`);
  el.querySelector("[data-col=value]").textContent = value;
  el.querySelector("[data-col=sub]").textContent = sub;
  el.dataset.state = state;
}

function render(stats) {
  const now = stats.now;
  const by = now.connections_by_transport || {};
  const parts = Object.entries(by)
    .filter(([, n]) => n > 0)
    .map(([t, n]) => `${t} ${n}`);
  tile("connections", formatValue(Object.values(by).reduce((a, b) => a + b, 0)), parts.join(" · ") || "none open");
  tile("published", formatValue(now.published_per_s), `${formatValue(now.published_total)} since start`);
  tile("delivered", formatValue(now.delivered_per_s), `${formatValue(now.delivered_total)} since start`);
  const p99 = now.p99_ms;
  tile(
    "latency",
    p99 === null || p99 === undefined ? "—" : `${formatValue(p99)} ms`,
    p99 === null || p99 === undefined ? "p99: no delivery in the last 2 s" : `p99 · p50 ${formatValue(now.p50_ms)} ms`,
    p99 > 500 ? "bad" : "",
  );
  tile("drops", formatValue(now.slow_drops_total), "subscribers too slow to read", now.slow_drops_per_s > 0 ? "warn" : "");
  tile("refusals", formatValue(now.refused_total), "connections and publishes refused", now.refused_per_s > 0 ? "warn" : "");

  const s = stats.series;
  lineChart($("chart-connections"), s.t, [{ name: "open", values: s.connections, color: COLORS.websocket }], {
    title: "Open connections",
  });
  lineChart(
    $("chart-throughput"),
    s.t,
    [
      { name: "published", values: s.published_per_s, color: COLORS.worker },
      { name: "delivered", values: s.delivered_per_s, color: COLORS.websocket },
    ],
    { unit: "/s", title: "Events per second" },
  );
  lineChart(
    $("chart-latency"),
    s.t,
    [
      { name: "p50", values: s.p50_ms, color: COLORS.websocket },
      { name: "p99", values: s.p99_ms, color: COLORS.longpoll },
    ],
    { unit: "ms", title: "Store-ack to client write" },
  );
  lineChart(
    $("chart-trouble"),
    s.t,
    [
      { name: "drops", values: s.slow_drops_per_s, color: "#e03131" },
      { name: "refusals", values: s.refused_per_s, color: COLORS.longpoll },
    ],
    { unit: "/s", title: "Drops and refusals per second" },
  );
  renderQueues(stats.queues);
  renderProcesses(stats.processes);
  const b = stats.build;
  $("build").textContent = `Herald ${b.version} · Python ${b.python} · Tornado ${b.tornado} · ${b.store} store · ${b.broker} broker`;
}

function td(text, cls) {
  const cell = document.createElement("td");
  cell.textContent = text;
  if (cls) cell.className = cls;
  return cell;
}

function renderQueues(queues) {
  $("queues-none").hidden = queues.length > 0;
  const most = Math.max(1, ...queues.map((q) => q.pending));
  $("queue-rows").replaceChildren(
    ...queues.map((q) => {
      const tr = document.createElement("tr");
      tr.dataset.queue = q.name;
      const stuck = q.pending > 0 && q.workers === 0;
      tr.dataset.state = stuck ? "stuck" : "";
      const bar = document.createElement("td");
      bar.className = "wide";
      bar.innerHTML = '<div class="bar"><div class="fill"></div></div>';
      bar.querySelector(".fill").style.width = `${(100 * q.pending) / most}%`;
      if (stuck) bar.querySelector(".fill").dataset.status = "failed";
      const name = td(q.name, "mono");
      if (stuck) name.title = "executions wait and no worker serves this queue";
      tr.append(name, td(String(q.pending), "num"), td(String(q.workers), "num"), bar);
      if (stuck) {
        const hint = document.createElement("div");
        hint.className = "hint";
        hint.textContent = "Waiting with no worker: start one on this queue.";
        name.append(hint);
      }
      return tr;
    }),
  );
}

function health(check) {
  const cell = document.createElement("td");
  const dot = document.createElement("span");
  dot.className = "health";
  dot.dataset.up = String(Boolean(check.up));
  cell.append(dot, check.up ? `${formatValue(1000 * check.rtt_seconds)} ms` : `down (${check.error || "no answer"})`);
  return cell;
}

function renderProcesses(processes) {
  $("process-rows").replaceChildren(
    ...processes.map((p) => {
      const tr = document.createElement("tr");
      tr.append(td(p.process, "mono"), health(p.store), health(p.broker), td(String(p.connections), "num"));
      return tr;
    }),
  );
}

async function poll() {
  clearTimeout(timer);
  const badge = $("stats-badge");
  try {
    const stats = await Herald.api(token, "GET", "/api/stats");
    failures = 0;
    clearProblem();
    render(stats);
    badge.textContent = `live · every ${EVERY / 1000}s`;
    badge.dataset.state = "open";
    timer = setTimeout(poll, EVERY);
  } catch (err) {
    const p = explain(err, "see the server's figures");
    badge.textContent = p.kind === "unreachable" ? "offline" : "stopped";
    badge.dataset.state = "failed";
    if (p.kind === "unreachable" || p.kind === "busy") {
      failures += 1;
      problem(p, { seconds: Math.min(30, 2 ** failures), run: poll });
    } else {
      problem(p); // a token problem: retrying would not help
    }
  }
}

if (!token) {
  problem(PROBLEMS.noToken());
  $("stats-badge").textContent = "not signed in";
  $("stats-badge").dataset.state = "failed";
} else {
  showWho(token);
  poll();
}
