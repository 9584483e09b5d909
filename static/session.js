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
  notice("Your token has expired. Open the URL the server printed (it carries a new #token=...).");
  throw new Error("no fresh token");
}

export function notice(text) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.hidden = !text;
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
