// The page's token: taken from the URL fragment (`#token=...`, which browsers never
// send to a server), kept in localStorage, and removed from the address bar so it is
// not bookmarked or shared by accident. Shared by the dashboard and execution pages.
import { tokenExp } from "/static/herald.js";

const KEY = "herald.token";

export function pageToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    localStorage.setItem(KEY, fromUrl);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return localStorage.getItem(KEY);
}

/** onTokenExpired for the pages: a newer token stored by another tab, if any. */
export async function freshToken() {
  const stored = localStorage.getItem(KEY);
  const exp = stored && tokenExp(stored);
  if (exp && exp * 1000 > Date.now() + 5000) return stored;
  problem(PROBLEMS.expired());
  throw new Error("no fresh token");
}

/** A one-line notice (empty text hides it). */
export function notice(text) {
  const el = document.getElementById("notice");
  clearInterval(countdown);
  el.dataset.kind = "info";
  el.textContent = text;
  el.hidden = !text;
}

// --- problems in words: what happened and what to do -------------------------------------
const HOST = location.host;

/** The page's problems, each {kind, title, text}. */
export const PROBLEMS = {
  noToken: () => ({
    kind: "no-token",
    title: "You are not signed in",
    text:
      "This page needs a token. Open the dashboard URL the server printed when it started (it ends in " +
      "#token=…), or, on the server's machine, the token in .herald/dev-token.",
  }),
  expired: () => ({
    kind: "expired",
    title: "Your sign-in has expired",
    text: "Open the dashboard URL the server printed again (it carries a fresh #token=…), or ask for a new token.",
  }),
  unauthorized: (message) => ({
    kind: "unauthorized",
    title: "Your token was not accepted",
    text: `The server said: ${message}. It may belong to another Herald server; open the URL this server printed.`,
  }),
  forbidden: (what, message) => ({
    kind: "forbidden",
    title: `You may not ${what}`,
    text: `The server said: ${message}. Ask its owner for a share link, or for a token with that scope.`,
  }),
  notFound: (what) => ({
    kind: "not-found",
    title: `${what} does not exist`,
    text: "The link may be mistyped, or the execution was removed when its retention ran out.",
  }),
  unreachable: () => ({
    kind: "unreachable",
    title: `The server at ${HOST} does not answer`,
    text: "It may be restarting, or your network is down. Nothing is lost: the page resumes where it stopped.",
  }),
  busy: (message) => ({
    kind: "busy",
    title: "The server cannot answer right now",
    text: `The server said: ${message}. It usually passes in a few seconds.`,
  }),
};

/** An API error (from Herald.api, or fetch's TypeError when the server is down) as a problem. */
export function explain(err, what = "see this") {
  if (!err || err.status === undefined) return PROBLEMS.unreachable();
  if (err.status === 401) return err.code === "token_expired" ? PROBLEMS.expired() : PROBLEMS.unauthorized(err.message);
  if (err.status === 403) return PROBLEMS.forbidden(what, err.message);
  if (err.status === 404) return PROBLEMS.notFound("This");
  if (err.status === 429 || err.status >= 500) return PROBLEMS.busy(err.message);
  return { kind: "error", title: "Something went wrong", text: err.message };
}

let countdown = null;

/**
 * Show a problem in the page's notice box. With `retry` ({seconds, run}), it counts
 * down, offers "Retry now", and calls `run` when the count reaches zero.
 */
export function problem(p, retry = null) {
  const el = document.getElementById("notice");
  clearInterval(countdown);
  el.hidden = false;
  el.dataset.kind = p.kind;
  const title = document.createElement("strong");
  title.textContent = p.title;
  const text = document.createElement("span");
  text.textContent = " " + p.text;
  el.replaceChildren(title, text);
  if (!retry) return;
  let left = Math.max(1, Math.round(retry.seconds));
  const counter = document.createElement("span");
  counter.className = "countdown";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link";
  button.textContent = "Retry now";
  const fire = () => {
    clearInterval(countdown);
    counter.textContent = " Retrying…";
    retry.run();
  };
  button.addEventListener("click", fire);
  const show = () => (counter.textContent = ` Retrying in ${left} s. `);
  show();
  el.append(counter, button);
  countdown = setInterval(() => {
    left -= 1;
    if (left <= 0) fire();
    else show();
  }, 1000);
}

/** "Retry now" for a live stream: herald.js resumes at once on the browser's `online`
 * event, as it does when the network comes back. */
export function resumeNow() {
  window.dispatchEvent(new Event("online"));
}

/** Hide the notice box (after a problem went away). */
export function clearProblem() {
  notice("");
}

export function showWho(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    document.getElementById("who").textContent = "signed in as " + claims.sub;
  } catch {
    /* no token: the notice says so */
  }
}

/** Options the page URL may set: ?transport=sse forces one, ?connectTimeout= in ms. */
export function urlOptions() {
  const q = new URLSearchParams(location.search);
  const o = {};
  if (q.get("transport")) o.transports = q.get("transport").split(",");
  if (q.get("connectTimeout")) o.connectTimeout = Number(q.get("connectTimeout"));
  return o;
}

export function badge(el, s) {
  const label = s.transport ? `${s.transport} · ${s.reconnects} reconnect${s.reconnects === 1 ? "" : "s"}` : s.state;
  el.textContent = label;
  el.title = `${s.state}: ${s.reason}`;
  el.dataset.state = s.state;
  el.dataset.transport = s.transport || "";
  el.dataset.reconnects = String(s.reconnects);
}

export function elapsed(fromIso, toIso) {
  const seconds = Math.max(0, Math.round(((toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso)) / 1000));
  const m = Math.floor(seconds / 60);
  return m ? `${m}m ${String(seconds % 60).padStart(2, "0")}s` : `${seconds}s`;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
