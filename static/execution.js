// The execution page: event log, streamed text as it arrives, the outcome in plain
// words, and a badge with the live transport and reconnect count.
import { Herald } from "/static/herald.js";
import {
  badge,
  clearProblem,
  elapsed,
  explain,
  freshToken,
  pageToken,
  problem,
  PROBLEMS,
  resumeNow,
  showWho,
  TERMINAL,
  urlOptions,
} from "/static/session.js";

const id = document.getElementById("execution").dataset.executionId;
const token = pageToken();
const $ = (x) => document.getElementById(x);
let created = null;
let count = 0;
let status = "pending";
let kind = null;

/** What to do about an error, by error_type. */
const ADVICE = {
  timeout: "Check the worker's log and host; start the execution again once the worker is healthy.",
  worker_lost: "The worker's connection kept dropping: check its network and memory, then start it again.",
};

/** The answer box of a run that ended before writing anything says so. */
function nothingCame(how) {
  if ($("stream-text").textContent) return;
  $("stream-empty").hidden = false;
  $("stream-empty").textContent =
    kind === "chat" ? `No text was written before it ${how}.` : `No findings were reported before it ${how}.`;
}

const FRIENDLY = {
  timeout: "It stopped reporting progress and timed out.",
  worker_lost: "The worker running it went away, too many times.",
  cancelled: "It was cancelled.",
};

function setStatus(next) {
  status = next;
  $("status").textContent = next;
  $("status").dataset.status = next;
  delete $("status").dataset.stale;
  $("status").title = "";
  $("bar").dataset.status = next;
  $("cancel").hidden = TERMINAL.has(next);
}

/** While the server cannot be reached, the status is only the last one known. */
function markStale(stale) {
  const el = $("status");
  if (stale && !TERMINAL.has(status)) {
    el.dataset.stale = "true";
    el.textContent = `${status}?`;
    el.title = "last known status: the server does not answer right now";
  } else if (el.dataset.stale) setStatus(status);
}

function setProgress(progress, stage, text) {
  $("bar").style.width = `${progress}%`;
  $("percent").textContent = `${Math.round(progress)}%`;
  if (stage) $("stage").textContent = stage;
  if (text !== undefined) $("status-text").textContent = text || "";
}

function phase(name) {
  $("phases").hidden = false;
  let reached = true;
  for (const li of $("phases").children) {
    li.className = li.dataset.phase === name ? "current" : reached ? "past" : "";
    if (li.dataset.phase === name) reached = false;
    if (li.dataset.phase === "done") li.textContent = "Done";
  }
  $("caret").hidden = name !== "streaming";
}

/** A run that ended without finishing: the phases it reached stay, the rest is crossed
 * out, and the last one names how it ended. */
function phaseEnded(how) {
  $("phases").hidden = kind !== "chat";
  const streamed = Boolean($("stream-text").textContent);
  for (const li of $("phases").children) {
    if (li.dataset.phase === "sending") li.className = "past";
    else if (li.dataset.phase === "streaming") li.className = streamed ? "past" : "skipped";
    else {
      li.className = "ended";
      li.textContent = how;
    }
  }
  $("caret").hidden = true;
}

function outcome(kind, html) {
  const el = $("outcome");
  el.hidden = false;
  el.className = "outcome " + kind;
  el.replaceChildren(...html);
}

function para(text, cls) {
  const p = document.createElement("p");
  p.textContent = text;
  if (cls) p.className = cls;
  return p;
}

function summarise(event) {
  const d = event.data || {};
  switch (event.event) {
    case "progress":
      return `${d.progress}%${d.stage ? " · " + d.stage : ""}${d.status_text ? " · " + d.status_text : ""}`;
    case "token":
      return JSON.stringify(d.text);
    case "complete":
      return completeSummary(d.result);
    case "cancelled":
      return d.reason ? `reason: ${d.reason}` : "no reason given";
    case "log":
      return `[${d.level}] ${d.message}`;
    case "status":
      return d.status;
    case "error":
      return `${d.error_type}: ${d.message}`;
    default:
      return JSON.stringify(d);
  }
}

/** A `complete` row in words: the answer's text, a summary, or the result's fields. */
function completeSummary(r) {
  if (r && typeof r === "object") {
    const text = r.answer || r.text || r.summary;
    if (typeof text === "string") return text.length > 160 ? text.slice(0, 157) + "…" : text;
    return Object.entries(r)
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
      .join(" · ");
  }
  return r === undefined || r === null ? "finished" : String(r);
}

function logRow(event) {
  const tr = document.createElement("tr");
  tr.dataset.seq = event.seq;
  tr.dataset.event = event.event;
  const cells = [event.seq, created ? "+" + elapsed(created, event.timestamp) : event.timestamp.slice(11, 19), event.event, summarise(event)];
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  }
  tr.children[0].className = "num";
  tr.children[2].className = "mono event-" + event.event;
  $("log").prepend(tr);
  $("count").textContent = `(${++count})`;
  tr.children[3].title = tr.children[3].textContent;
}

function onEvent(event) {
  logRow(event);
  const d = event.data || {};
  if (event.event === "status") runnerKnown = false; // handed out again, or ended
  if (!$("runner").hidden && !runnerKnown) refreshRunner();
  switch (event.event) {
    case "status":
      setStatus(d.status);
      break;
    case "progress":
      setProgress(d.progress, d.stage, d.status_text);
      break;
    case "result":
      finding(d);
      break;
    case "token":
      $("stream-empty").hidden = true;
      $("stream-text").textContent += d.text;
      phase("streaming");
      break;
    case "complete": {
      setStatus("succeeded");
      setProgress(100);
      phase("done");
      const r = d.result;
      const parts = [para("Finished successfully.", "lead")];
      if (r && typeof r === "object" && (r.answer || r.text)) {
        if (!$("stream-text").textContent) {
          $("stream-empty").hidden = true;
          $("stream-text").textContent = r.answer || r.text;
        }
        if (r.root_cause) parts.push(para("Root cause: " + r.root_cause));
        if (r.confidence !== undefined) parts.push(para(`Confidence: ${Math.round(r.confidence * 100)}%`));
        if (r.tokens !== undefined) parts.push(para(`${r.tokens} tokens streamed.`, "muted"));
      } else if (r && typeof r === "object" && r.summary) {
        parts[0] = para(r.summary + ".", "lead");
        for (const [name, text] of Object.entries(r.findings || {})) parts.push(para(`${name}: ${text}`));
      } else if (r !== undefined && r !== null) {
        const pre = document.createElement("pre");
        pre.textContent = JSON.stringify(r, null, 2);
        parts.push(pre);
      }
      outcome("ok", parts);
      break;
    }
    case "error": {
      setStatus("failed");
      phaseEnded("Failed");
      nothingCame("failed");
      const parts = [para("It failed. " + (FRIENDLY[d.error_type] || d.message || "No reason was given."), "lead")];
      const detail = document.createElement("p");
      const code = document.createElement("code");
      code.className = "error-type";
      code.textContent = d.error_type;
      detail.append(code, d.message ? ` ${d.message}` : "");
      parts.push(detail);
      if (ADVICE[d.error_type]) parts.push(para(ADVICE[d.error_type], "muted"));
      outcome("bad", parts);
      break;
    }
    case "cancelled":
      setStatus("cancelled");
      phaseEnded("Cancelled");
      nothingCame("was cancelled");
      outcome("bad", [para("It was cancelled" + (d.reason ? ": " + d.reason : "."), "lead")]);
      break;
  }
}

/** A partial result (a finding) as it arrives; for executions that stream no text
 * the answer box says what it waits for instead. */
function finding(d) {
  if (d && d.partial && d.summary) return; // the simulator's early summary: the answer shows it
  const li = document.createElement("li");
  li.textContent = d && d.finding ? `${d.stage ? d.stage + ": " : ""}${d.finding}` : JSON.stringify(d);
  $("findings").hidden = false;
  $("findings").append(li);
  if (!$("stream-text").textContent) $("stream-empty").hidden = true;
}

// Which worker runs it: the document says (`worker`); refreshed when the execution is
// handed out or given back, which the stream shows as its first events or a status.
let runnerKnown = false;
let runnerAsked = 0;

function showRunner(ex) {
  if (!ex.queue) return;
  $("runner").hidden = false;
  $("queue").textContent = "queue " + ex.queue;
  $("worker").textContent = ex.worker || "no worker yet";
  $("worker").dataset.worker = ex.worker || "";
  runnerKnown = Boolean(ex.worker);
}

let runnerRetry = null;

async function refreshRunner() {
  if (runnerKnown || runnerRetry) return;
  const wait = runnerAsked + 1000 - Date.now(); // at most one request a second
  if (wait > 0) {
    runnerRetry = setTimeout(() => {
      runnerRetry = null;
      refreshRunner();
    }, wait);
    return;
  }
  runnerAsked = Date.now();
  try {
    showRunner(await Herald.api(token, "GET", `/api/executions/${id}`));
  } catch {
    /* the stream still shows everything else */
  }
}

/** The execution's input: the question asked, as a quote, and the other fields. */
function showInput(input) {
  const fields = Object.entries(input || {}).filter(([k]) => k !== "prompt");
  $("input-card").hidden = !(input && (input.prompt || fields.length));
  if (input && typeof input.prompt === "string") {
    $("prompt").hidden = false;
    $("prompt").textContent = input.prompt;
  }
  $("input-fields").replaceChildren(
    ...fields.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.className = "mono";
      dd.textContent = typeof v === "object" ? JSON.stringify(v) : String(v);
      return [dt, dd];
    }),
  );
}

/** The whole page replaced by one state in words (not found, forbidden, no token). */
function pageState(p, icon) {
  $("page-body").hidden = true;
  $("page-state").hidden = false;
  $("page-state").dataset.kind = p.kind;
  $("state-icon").textContent = icon;
  $("state-title").textContent = p.title;
  $("state-text").textContent = p.text;
}

function showDocument(ex) {
  created = ex.created_at;
  kind = ex.kind;
  showRunner(ex);
  showInput(ex.input);
  if (ex.kind !== "chat") {
    $("answer-title").textContent = "Results";
    $("stream-empty").textContent = "Findings appear here as the worker reports them.";
  }
  $("kind").textContent = ex.kind;
  $("created").textContent = new Date(ex.created_at).toLocaleString();
  setStatus(ex.status);
  setProgress(ex.progress, ex.stage);
  if (ex.kind === "chat") phase(ex.status === "pending" || ex.status === "running" ? "sending" : "done");
}

async function start() {
  let ex;
  try {
    ex = await Herald.api(token, "GET", `/api/executions/${id}`);
  } catch (err) {
    const p = explain(err, "see this execution");
    if (p.kind === "not-found") return pageState(PROBLEMS.notFound(`Execution ${id}`), "?");
    if (p.kind === "forbidden") {
      return pageState({ ...p, title: "This execution is not yours to see" }, "⛔");
    }
    if (p.kind === "expired" || p.kind === "unauthorized") return pageState(p, "🔑");
    return problem(p, { seconds: 5, run: start }); // unreachable or busy: try again
  }
  clearProblem();
  showDocument(ex);
  window.heraldHandle = Herald.follow(id, {
    token,
    ...urlOptions(),
    onEvent,
    onTokenExpired: freshToken,
    onReset(doc) {
      showDocument(doc);
      logRow({ seq: doc.last_seq, timestamp: doc.updated_at, event: "reset", data: { note: "older events were dropped by retention" } });
    },
    onState(s) {
      badge($("transport-badge"), s);
      const down = s.state === "waiting" || s.state === "lost";
      markStale(down);
      if (down && s.retryIn !== undefined) problem(PROBLEMS.unreachable(), { seconds: s.retryIn / 1000, run: resumeNow });
      else if (s.state === "open" || s.state === "done") clearProblem();
      else if (s.state === "failed") {
        problem({ kind: "failed", title: "The live stream stopped", text: `${s.reason}. Reload the page to try again.` });
      }
    },
  });
}

$("cancel").addEventListener("click", async () => {
  $("cancel").disabled = true;
  try {
    await Herald.api(token, "POST", `/api/executions/${id}/cancel`, { reason: "cancelled from its page" });
  } catch (err) {
    if (err.code !== "stream_closed") problem(explain(err, "cancel this execution"));
  } finally {
    $("cancel").disabled = false;
  }
});

if (!token) {
  pageState(PROBLEMS.noToken(), "🔑");
} else {
  showWho(token);
  start();
}
