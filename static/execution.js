// The execution page: event log, streamed text as it arrives, the outcome in plain
// words, and a badge with the live transport and reconnect count.
import { Herald } from "/static/herald.js";
import { badge, elapsed, freshToken, notice, pageToken, showWho, urlOptions } from "/static/session.js";

const id = document.getElementById("execution").dataset.executionId;
const token = pageToken();
const $ = (x) => document.getElementById(x);
let created = null;
let count = 0;

const FRIENDLY = {
  timeout: "It stopped reporting progress and timed out.",
  worker_lost: "The worker running it went away, too many times.",
  cancelled: "It was cancelled.",
};

function setStatus(status) {
  $("status").textContent = status;
  $("status").dataset.status = status;
  $("bar").dataset.status = status;
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
  }
  $("caret").hidden = name !== "streaming";
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
    case "error":
      setStatus("failed");
      phase("done");
      outcome("bad", [para("It failed. " + (FRIENDLY[d.error_type] || d.message || "No reason was given."), "lead"),
        para(`(${d.error_type}${d.message && FRIENDLY[d.error_type] ? ": " + d.message : ""})`, "muted")]);
      break;
    case "cancelled":
      setStatus("cancelled");
      phase("done");
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

function showDocument(ex) {
  created = ex.created_at;
  showRunner(ex);
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

if (!token) {
  notice("No token. Open the URL the server printed (it ends in #token=...).");
} else {
  showWho(token);
  try {
    showDocument(await Herald.api(token, "GET", `/api/executions/${id}`));
  } catch (err) {
    notice("Cannot show this execution: " + err.message);
  }
  window.heraldHandle = Herald.follow(id, {
    token,
    ...urlOptions(),
    onEvent,
    onTokenExpired: freshToken,
    onReset(ex) {
      showDocument(ex);
      logRow({ seq: ex.last_seq, timestamp: ex.updated_at, event: "reset", data: { note: "older events were dropped by retention" } });
    },
    onState(s) {
      badge($("transport-badge"), s);
      if (s.state === "failed") notice("The stream stopped: " + s.reason);
    },
  });
}
