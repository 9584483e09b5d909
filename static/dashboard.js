// The dashboard: the caller's executions, newest first, kept live by the feed
// (/api/executions/feed: a snapshot, then one message per change).
import { Herald } from "/static/herald.js";
import { badge, elapsed, freshToken, notice, pageToken, showWho, TERMINAL, urlOptions } from "/static/session.js";

const token = pageToken();
const rows = new Map(); // id -> {summary, tr}
const body = document.getElementById("executions");

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
      <td class="mono" data-col="stage"></td><td class="num" data-col="elapsed"></td>`;
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
  tick(row);
  document.getElementById("empty").hidden = rows.size > 0;
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
  document.getElementById("start-demo").addEventListener("click", async (e) => {
    const speed = Number(new URLSearchParams(location.search).get("speed") || 1);
    e.target.disabled = true;
    try {
      const execution = await Herald.api(token, "POST", "/api/demo", { speed });
      render({ ...execution });
      notice("");
    } catch (err) {
      notice("Could not start a demo: " + err.message);
    } finally {
      e.target.disabled = false;
    }
  });
}
