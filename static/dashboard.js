// The dashboard: the caller's executions, newest first, kept live by the feed
// (/api/executions/feed: a snapshot, then one message per change).
import { Herald } from "/static/herald.js";
import { badge, elapsed, freshToken, notice, pageToken, showWho, TERMINAL, urlOptions } from "/static/session.js";

const token = pageToken();
const rows = new Map(); // id -> {summary, tr}
const body = document.getElementById("executions");
const QUEUES_EVERY = Number(new URLSearchParams(location.search).get("queuesEvery") || 3000);
let queuesTimer = null;

function cell(tr, name) {
  return tr.querySelector(`[data-col="${name}"]`);
}

function render(summary) {
  let row = rows.get(summary.id);
  if (row && row.summary.last_seq > summary.last_seq) return; // an older view of it
  if (!row) {
    const tr = document.createElement("tr");
    tr.dataset.id = summary.id;
    tr.innerHTML = `<td><a class="mono" data-col="id"></a></td><td data-col="kind"></td>
      <td><span class="status" data-col="status"></span></td>
      <td class="wide"><div class="progress-row"><div class="bar"><div class="fill" data-col="bar"></div></div><span class="num" data-col="percent"></span></div></td>
      <td class="mono" data-col="stage"></td><td data-col="worker"></td><td class="num" data-col="elapsed"></td>`;
    row = { tr, summary };
    rows.set(summary.id, row);
    placeByCreation(tr, summary);
  }
  row.summary = summary;
  const a = cell(row.tr, "id");
  a.textContent = summary.id;
  a.href = `/executions/${summary.id}`;
  cell(row.tr, "kind").textContent = summary.kind;
  const status = cell(row.tr, "status");
  status.textContent = summary.status;
  status.dataset.status = summary.status;
  cell(row.tr, "bar").style.width = `${summary.progress}%`;
  cell(row.tr, "bar").dataset.status = summary.status;
  cell(row.tr, "percent").textContent = `${Math.round(summary.progress)}%`;
  cell(row.tr, "stage").textContent = summary.stage || "—";
  showWorker(cell(row.tr, "worker"), summary);
  tick(row);
  document.getElementById("empty").hidden = rows.size > 0;
}

/** Who runs it: the worker's name, "queued on Q" while no worker holds it, or the
 * built-in simulator for an execution with no queue. */
function showWorker(td, summary) {
  td.dataset.worker = summary.worker || "";
  td.className = summary.worker ? "mono" : "muted";
  if (summary.worker) td.textContent = summary.worker;
  else if (summary.queue) td.textContent = TERMINAL.has(summary.status) ? `queue ${summary.queue}` : `queued on ${summary.queue}`;
  else {
    td.textContent = "—";
    td.title = "no queue: published over HTTP, or by the built-in demo simulator";
  }
}

function placeByCreation(tr, summary) {
  for (const other of body.children) {
    const o = rows.get(other.dataset.id);
    if (o && o.summary.created_at < summary.created_at) return body.insertBefore(tr, other);
  }
  body.append(tr);
}

function tick(row) {
  const s = row.summary;
  cell(row.tr, "elapsed").textContent = elapsed(s.created_at, TERMINAL.has(s.status) ? s.updated_at : null);
}

if (!token) {
  notice("No token. Open the URL the server printed (it ends in #token=...).");
} else {
  showWho(token);
  Herald.feed({
    token,
    ...urlOptions(),
    onTokenExpired: freshToken,
    onSnapshot(list) {
      for (const s of list) render(s);
      document.getElementById("empty").hidden = rows.size > 0;
    },
    onChange: render,
    onState: (s) => badge(document.getElementById("feed-badge"), s),
  });
  setInterval(() => rows.forEach(tick), 1000);
  startButton("start-demo", "diagnosis");
  startButton("start-llm", "llm");
  pollQueues();
}

/** A button that starts a demo: served by a worker on queue demo/llm when one is
 * connected, else by the server's built-in simulator (handlers/demo.py decides). */
function startButton(id, demo) {
  document.getElementById(id).addEventListener("click", async (e) => {
    const speed = Number(new URLSearchParams(location.search).get("speed") || 1);
    e.target.disabled = true;
    try {
      const execution = await Herald.api(token, "POST", "/api/demo", { speed, demo });
      render({ ...execution });
      notice("");
      pollQueues();
    } catch (err) {
      notice("Could not start a demo: " + err.message);
    } finally {
      e.target.disabled = false;
    }
  });
}

// --- the queue panel: GET /api/queues every few seconds (?queuesEvery=ms) ---
async function pollQueues() {
  clearTimeout(queuesTimer);
  const badgeEl = document.getElementById("queues-badge");
  try {
    const { queues } = await Herald.api(token, "GET", "/api/queues");
    renderQueues(queues);
    const workers = queues.reduce((n, q) => n + q.workers.length, 0);
    badgeEl.textContent = `${workers} worker${workers === 1 ? "" : "s"} · every ${+(QUEUES_EVERY / 1000).toFixed(1)}s`;
    badgeEl.dataset.state = "open";
  } catch (err) {
    badgeEl.textContent = "unavailable";
    badgeEl.title = err.message;
    badgeEl.dataset.state = "failed";
  }
  queuesTimer = setTimeout(pollQueues, QUEUES_EVERY);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderQueues(queues) {
  const box = document.getElementById("queues");
  document.getElementById("queues-empty").hidden = queues.length > 0;
  box.replaceChildren(...queues.map(renderQueue));
}

function renderQueue(q) {
  const tile = el("div", "queue");
  tile.dataset.queue = q.name;
  const head = el("div", "queue-head");
  head.append(el("span", "mono queue-name", q.name));
  const waiting = el("span", "queue-length", `${q.pending} waiting`);
  waiting.dataset.col = "pending";
  waiting.dataset.count = String(q.pending);
  head.append(waiting);
  tile.append(head);
  if (!q.workers.length) {
    tile.append(el("p", "muted no-workers", q.waiting_claims ? `${q.waiting_claims} claim(s) waiting` : "no worker connected"));
    return tile;
  }
  const list = el("ul", "workers");
  for (const w of q.workers) {
    const li = el("li");
    li.dataset.worker = w.name;
    li.dataset.held = String(w.executions.length);
    li.append(el("span", "dot"), el("span", "mono worker-name", w.name));
    const since = w.since ? `since ${elapsed(w.since)} ago` : "claims over HTTP";
    const cap = w.capacity ? ` · ${w.executions.length}/${w.capacity} in hand` : ` · ${w.executions.length} in hand`;
    li.append(el("span", "muted worker-meta", ` ${w.transport} · ${since}${cap}`));
    for (const id of w.executions) {
      const a = el("a", "mono held", id.slice(0, 10) + "…");
      a.href = `/executions/${id}`;
      a.title = id;
      a.dataset.execution = id;
      li.append(a);
    }
    list.append(li);
  }
  tile.append(list);
  return tile;
}
