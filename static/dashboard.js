// The executions list: the caller's executions, newest first, a page at a time
// (GET /api/executions with filters), kept live by the feed (/api/executions/feed: a
// snapshot, then one message per change; one connection shared by the origin's
// dashboard tabs), with a cancel action per running execution.
import { Herald } from "/static/herald.js";
import {
  badge,
  clearProblem,
  elapsed,
  explain,
  freshToken,
  notice,
  pageToken,
  problem,
  PROBLEMS,
  resumeNow,
  showWho,
  TERMINAL,
  urlOptions,
} from "/static/session.js";

const token = pageToken();
const rows = new Map(); // id -> {summary, tr}
const body = document.getElementById("executions");
const params = new URLSearchParams(location.search);
const QUEUES_EVERY = Number(params.get("queuesEvery") || 3000);
const PAGE_SIZE = Number(params.get("pageSize") || 20);
let queuesTimer = null;
// The list's view: filters, the page (the ids to pass as `before`, one per page back), search.
const view = { status: "", kind: "", queue: "", id: "", pages: [null], next: null };
const seenKinds = new Set();
const seenQueues = new Set();

function cell(tr, name) {
  return tr.querySelector(`[data-col="${name}"]`);
}

function render(summary) {
  let row = rows.get(summary.id);
  if (row && row.summary.last_seq > summary.last_seq) return; // an older view of it
  if (!row) {
    const tr = document.createElement("tr");
    tr.dataset.id = summary.id;
    tr.innerHTML = `<td data-label="Execution"><a class="mono" data-col="id"></a></td><td data-label="Kind" data-col="kind"></td>
      <td data-label="Status"><span class="status" data-col="status"></span></td>
      <td class="wide" data-label="Progress"><div class="progress-row"><div class="bar"><div class="fill" data-col="bar"></div></div><span class="num" data-col="percent"></span></div></td>
      <td class="mono" data-label="Stage" data-col="stage"></td><td data-label="Worker" data-col="worker"></td>
      <td class="num" data-label="Elapsed" data-col="elapsed"></td>
      <td class="row-actions"><button class="danger" type="button" data-col="cancel" hidden>Cancel</button></td>`;
    tr.querySelector("[data-col=cancel]").addEventListener("click", () => cancel(summary.id, tr));
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
  cell(row.tr, "cancel").hidden = TERMINAL.has(summary.status);
  tick(row);
  remember(summary);
  showEmpty();
}

/** Kinds and queues seen, offered as suggestions in the filter fields. */
function remember(summary) {
  for (const [set, value, list] of [
    [seenKinds, summary.kind, "kinds"],
    [seenQueues, summary.queue, "queue-names"],
  ]) {
    if (!value || set.has(value)) continue;
    set.add(value);
    const option = document.createElement("option");
    option.value = value;
    document.getElementById(list).append(option);
  }
}

function filtered() {
  return Boolean(view.status || view.kind || view.queue || view.id);
}

function showEmpty() {
  const empty = document.getElementById("empty");
  empty.hidden = rows.size > 0;
  if (view.id) empty.textContent = `No execution ${view.id} that you may see. Check the id, or clear the search.`;
  else if (filtered()) empty.textContent = "No execution matches these filters. Clear them to see every execution.";
  else if (view.pages.length > 1) empty.textContent = "No older executions.";
  else empty.textContent = "No executions yet. Start a demo to see one stream live.";
}

/** A change from the feed: update the row we show, or add a new one on the first page
 * when it matches the filters and is newer than the page's oldest row (rows never
 * vanish under the reader's eyes). */
function onChange(summary) {
  if (rows.has(summary.id)) return render(summary);
  if (view.id || view.pages.length > 1) return;
  if (view.status && summary.status !== view.status) return;
  if (view.kind && summary.kind !== view.kind) return;
  if (view.queue && summary.queue !== view.queue) return;
  // A full page shows the newest executions: an older one belongs to a later page.
  const last = body.lastElementChild && rows.get(body.lastElementChild.dataset.id);
  if (rows.size >= PAGE_SIZE && last && summary.created_at < last.summary.created_at) return;
  render(summary);
}

async function cancel(id, tr) {
  const button = tr.querySelector("[data-col=cancel]");
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    await Herald.api(token, "POST", `/api/executions/${id}/cancel`, { reason: "cancelled from the dashboard" });
    button.hidden = true;
    clearProblem();
  } catch (err) {
    if (err.code === "stream_closed") button.hidden = true; // it ended meanwhile
    else problem(explain(err, "cancel this execution"));
  } finally {
    button.disabled = false;
    button.textContent = "Cancel";
  }
}

// --- the page: filters, search, paging -------------------------------------------------
async function load() {
  const pageLabel = document.getElementById("page-label");
  try {
    let list;
    let next = null;
    if (view.id) {
      try {
        list = [await Herald.api(token, "GET", `/api/executions/${encodeURIComponent(view.id)}`)];
      } catch (err) {
        if (err.status !== 404 && err.status !== 403) throw err;
        list = [];
      }
    } else {
      const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
      for (const name of ["status", "kind", "queue"]) if (view[name]) q.set(name, view[name]);
      const before = view.pages[view.pages.length - 1];
      if (before) q.set("before", before);
      const page = await Herald.api(token, "GET", `/api/executions?${q}`);
      list = page.executions;
      next = page.next_before;
    }
    rows.clear();
    body.replaceChildren();
    for (const s of list) render(s);
    view.next = next;
    document.getElementById("older").disabled = !next;
    document.getElementById("newer").disabled = view.pages.length <= 1;
    pageLabel.textContent = view.id ? "search" : `page ${view.pages.length}`;
    document.getElementById("f-clear").hidden = !filtered();
    showEmpty();
    clearProblem();
  } catch (err) {
    const p = explain(err, "list executions");
    if (p.kind === "unreachable" || p.kind === "busy") problem(p, { seconds: 5, run: load });
    else problem(p);
  }
}

function wireFilters() {
  const form = document.getElementById("filters");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    view.status = String(data.get("status") || "");
    view.kind = String(data.get("kind") || "").trim();
    view.queue = String(data.get("queue") || "").trim();
    view.id = String(data.get("id") || "").trim();
    view.pages = [null];
    load();
  });
  document.getElementById("f-status").addEventListener("change", () => form.requestSubmit());
  document.getElementById("f-clear").addEventListener("click", () => {
    form.reset();
    form.requestSubmit();
  });
  document.getElementById("older").addEventListener("click", () => {
    if (!view.next) return;
    view.pages.push(view.next);
    load();
  });
  document.getElementById("newer").addEventListener("click", () => {
    if (view.pages.length <= 1) return;
    view.pages.pop();
    load();
  });
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

/** The feed's state in words: a lost server, a token that is no longer good. */
function feedProblem(s) {
  if (s.state === "open") {
    if (document.getElementById("notice").dataset.kind === "unreachable") clearProblem();
  } else if ((s.state === "waiting" || s.state === "lost") && s.retryIn !== undefined) {
    problem(PROBLEMS.unreachable(), { seconds: s.retryIn / 1000, run: resumeNow });
  } else if (s.state === "failed") {
    problem({ kind: "failed", title: "Live updates stopped", text: `${s.reason}. Reload the page to try again.` });
  }
}

const PROMPTS = [
  "Why is my checkout service slow since this morning's deploy?",
  "Why did the nightly backup job fail on db-3?",
  "Why are API error rates up in eu-west since 14:00?",
  "Why is the payments queue growing?",
];
let promptTurn = 0;

/** The LLM demo asks the question typed, or the next example question. */
function wireAsk() {
  const input = document.getElementById("prompt");
  input.placeholder = PROMPTS[0];
  document.getElementById("ask").addEventListener("submit", (e) => {
    e.preventDefault();
    const prompt = input.value.trim() || PROMPTS[promptTurn++ % PROMPTS.length];
    input.value = "";
    input.placeholder = PROMPTS[promptTurn % PROMPTS.length];
    startDemo(document.getElementById("start-llm"), "llm", prompt);
  });
}

/** A button that starts a demo: served by a worker on queue demo/llm when one is
 * connected, else by the server's built-in simulator (handlers/demo.py decides). */
function startButton(id, demo) {
  document.getElementById(id).addEventListener("click", (e) => startDemo(e.target, demo));
}

async function startDemo(button, demo, prompt) {
  const speed = Number(new URLSearchParams(location.search).get("speed") || 1);
  button.disabled = true;
  try {
    const body = { speed, demo };
    if (prompt) body.prompt = prompt;
    const execution = await Herald.api(token, "POST", "/api/demo", body);
    onChange({ ...execution });
    notice("");
    pollQueues();
  } catch (err) {
    problem(explain(err, "start a demo"));
  } finally {
    button.disabled = false;
  }
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
    badgeEl.textContent = err.status === undefined ? "server unreachable" : "unavailable";
    badgeEl.title = explain(err, "see the queues").title;
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

// --- start --------------------------------------------------------------------------------
if (!token) {
  problem(PROBLEMS.noToken());
  for (const id of ["feed-badge", "queues-badge"]) {
    const el = document.getElementById(id);
    el.textContent = "not signed in";
    el.dataset.state = "failed";
  }
  for (const id of ["start-demo", "start-llm"]) document.getElementById(id).disabled = true;
  document.getElementById("empty").hidden = false;
  document.getElementById("empty").textContent = "Sign in to see your executions (see the note above).";
} else {
  showWho(token);
  wireFilters();
  load();
  Herald.feed({
    token,
    ...urlOptions(),
    // One feed connection for all the origin's dashboard tabs; ?share=false: this tab's own.
    share: params.get("share") !== "false",
    onTokenExpired: freshToken,
    onSnapshot(list) {
      for (const s of list) onChange(s);
      showEmpty();
    },
    onChange,
    onState: (s) => {
      badge(document.getElementById("feed-badge"), s);
      feedProblem(s);
    },
  });
  setInterval(() => rows.forEach(tick), 1000);
  startButton("start-demo", "diagnosis");
  wireAsk();
  pollQueues();
}
