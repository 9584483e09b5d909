// Herald browser client: follows an execution's event stream (or the dashboard feed)
// over whichever transport the network allows, and never loses or repeats an event.
//
// Plain ES module, no build step. Wire contract and this client's behaviour:
// docs/protocol.md ("One stream URL, three transports", "The dashboard feed",
// "Negotiation and the browser client", "The browser client: resuming after a pause").
//
//   import { Herald } from "/static/herald.js";
//   const handle = Herald.follow(id, { token, onEvent, onState, onTokenExpired });
//   handle.close(); handle.transport; handle.cursor;
//
// How it stays correct: one cursor (the last seq delivered) is passed on every
// (re)connect and transport switch, and any event with seq <= cursor is dropped.
// How it copes with hostile networks: it walks the server's /api/negotiate list,
// skipping what the browser lacks, and moves on when a transport does not deliver its
// `ready` (WebSocket, SSE) or a response (long-poll) within `connectTimeout`: a proxy
// that refuses upgrades, a WebSocket that connects but never delivers, or a proxy that
// buffers the SSE response all end in that timeout. A transport that once delivered
// is kept for the page's life; drops are retried with exponential backoff and full
// jitter. A connection silent for more than two heartbeats is taken for dead.
// How it resumes after a pause: when the page becomes visible again, comes back from
// the back/forward cache, or the network returns, it checks its connection at once
// (`checkTimeout`) and reconnects with its cursor if the check fails; a retry waiting
// on backoff runs at once. A stream not delivering for `lostAfter` ms reports `lost`.
// Tokens never go into URLs: the JWT rides in the WebSocket subprotocol list, SSE and
// long-poll use single-use tickets from POST /api/tickets.
// From another origin (docs/browser.md): import it from Herald itself and it talks to
// the Herald that served it; it never relies on cookies (fetch sends them to the page's
// own origin only), so it works wherever --allowed-origins lists the page's origin.

const TERMINAL_EVENTS = new Set(["complete", "error", "cancelled"]);
const TERMINAL_STATUSES = new Set(["succeeded", "failed", "cancelled"]);
const FATAL_CLOSE_CODES = new Set([4400, 4403, 4404]);
const FATAL_ERROR_CODES = new Set(["forbidden", "not_found", "cursor_out_of_range", "bad_request", "bad_json"]);

// The Herald that served this module: its URL before /static/herald.js, a proxy's path
// prefix included. A copy served from elsewhere (a bundle) talks to the page's origin.
const SERVED_BY = import.meta.url.match(/^(https?:\/\/.+?)\/static\/herald\.js(?:[?#].*)?$/);
const SERVED_FROM = SERVED_BY ? SERVED_BY[1] : "";

const DEFAULTS = {
  baseUrl: SERVED_FROM, // where Herald is: "https://herald.example" or "" for the page's origin
  transports: null, // force: ["sse"] or "sse"; default: the server's list
  after: 0,
  connectTimeout: 5000, // ms to get `ready` / a first response before falling back
  backoffFirst: 1000, // ms, exponential backoff with full jitter
  backoffCap: 30000,
  healthyAfter: 10000, // ms open before the backoff resets
  refreshBefore: 30, // s before `exp` to refresh a WebSocket's token in band
  longpollWait: null, // s; default: the server's advertised longpoll_wait
  checkTimeout: 1000, // ms for a sign of life after the page or the network came back
  lostAfter: 5000, // ms without delivery before the state `lost` (tell the user)
};

/** What `onState` reports as `state`. The table NEXT below lists which state may follow
 *  which, and Channel.moveTo is the one place that changes it. */
export const ChannelState = Object.freeze({
  NEGOTIATING: "negotiating", // asking /api/negotiate which transports the server offers
  CONNECTING: "connecting", // a transport is opening: waits for `ready` or a first page
  OPEN: "open", // delivering
  REFRESHING: "refreshing", // the token expired: waiting for onTokenExpired
  WAITING: "waiting", // dropped; a retry runs in `retryIn` ms (sooner on a resume trigger)
  LOST: "lost", // nothing delivered for `lostAfter` ms; still retrying until `open`
  FAILED: "failed", // will not retry: fatal error, no transport, no fresh token
  DONE: "done", // the stream ended with its terminal event
  CLOSED: "closed", // the page closed it
});

const S = ChannelState;
const ENDED = new Set([S.FAILED, S.DONE, S.CLOSED]);
const NEXT = Object.freeze({
  [S.NEGOTIATING]: [S.CONNECTING, S.LOST, S.FAILED, S.CLOSED],
  // CONNECTING → CONNECTING: fell back to the next transport.
  [S.CONNECTING]: [S.CONNECTING, S.OPEN, S.WAITING, S.LOST, S.REFRESHING, S.FAILED, S.DONE, S.CLOSED],
  // OPEN → CONNECTING: a failed check reconnects at once, without backoff.
  [S.OPEN]: [S.CONNECTING, S.WAITING, S.LOST, S.REFRESHING, S.FAILED, S.DONE, S.CLOSED],
  [S.REFRESHING]: [S.CONNECTING, S.LOST, S.FAILED, S.DONE, S.CLOSED],
  [S.WAITING]: [S.CONNECTING, S.LOST, S.DONE, S.CLOSED],
  // LOST lasts until the stream opens again: attempts and their failures made meanwhile
  // are reported as LOST (LOST → LOST) so a page's "connection lost" does not flicker.
  [S.LOST]: [S.LOST, S.OPEN, S.REFRESHING, S.FAILED, S.DONE, S.CLOSED],
  [S.FAILED]: [S.CLOSED],
  [S.DONE]: [],
  [S.CLOSED]: [],
});

// Page and network events after which the connection may be dead although no timer
// noticed yet (timers of hidden or frozen pages are throttled or stopped).
const RESUME_TRIGGERS = [
  ["window", "online"],
  ["window", "offline"],
  ["window", "pageshow"], // also from the back/forward cache
  ["document", "resume"], // a frozen page runs again
  ["document", "visibilitychange"], // acted on when it becomes visible
];

/** Exponential backoff with full jitter: uniform in [0, min(cap, first * 2^attempt)]. */
export function backoffDelay(attempt, first = 1000, cap = 30000, random = Math.random) {
  return random() * Math.min(cap, first * 2 ** Math.max(0, attempt));
}

/** The `exp` claim (unix seconds) of a JWT, or null; the signature is the server's business. */
export function tokenExp(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp : null;
  } catch {
    return null;
  }
}

/** Which transports this browser can run at all. */
export function browserSupports(name) {
  if (name === "websocket") return typeof WebSocket === "function";
  if (name === "sse") {
    // Read with fetch so every event name is seen (EventSource only dispatches names
    // that have a listener); needs a streaming response body.
    return typeof fetch === "function" && typeof ReadableStream === "function" && typeof TextDecoder === "function";
  }
  if (name === "longpoll") return typeof fetch === "function";
  return false;
}

class Problem extends Error {
  /** Why a connection ended: kind is "retry", "timeout", "stale" (no answer to a
   *  check: reconnect at once), "expired" or "fatal". `retryIn`: the ms a draining
   *  server asked the client to wait before reconnecting (instead of the backoff). */
  constructor(kind, detail, retryIn = null) {
    super(detail);
    this.kind = kind;
    this.retryIn = retryIn;
  }
}

/** The retry hint of a draining server's close reason (`server_shutdown retry=<ms>`). */
function closeRetryHint(code, reason) {
  const hint = code === 1001 && /\bretry=(\d+)\b/.exec(reason || "");
  return hint ? Number(hint[1]) : null;
}

function problemFromHttp(status, body) {
  const code = body && body.error && body.error.code;
  const message = (body && body.error && body.error.message) || `HTTP ${status}`;
  if (status === 401) return new Problem("expired", code || "unauthorized");
  if (status === 400 || status === 403 || status === 404) return new Problem("fatal", `${code || status}: ${message}`);
  return new Problem("retry", `HTTP ${status}`);
}

// --- transports: each opens one connection and reports through `link` --------------
// Each returns { send(message), check(), close() }: `check()` asks for a sign of life
// where the transport can ask; the channel times the answer.

function openWebSocket(link) {
  const url = new URL(link.url(), location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url.href, ["herald.v1", "herald.bearer." + link.token()]);
  let pinger = null;
  socket.onopen = () => {
    // Browsers cannot send ping frames: an application ping gets a `pong` control.
    pinger = setInterval(() => socket.readyState === 1 && socket.send('{"op":"ping"}'), link.heartbeatMs());
  };
  socket.onmessage = (m) => {
    let message;
    try {
      message = JSON.parse(m.data);
    } catch {
      return link.end(new Problem("retry", "malformed frame"));
    }
    link.receive(message);
  };
  socket.onclose = (e) => {
    clearInterval(pinger);
    if (e.code === 4401) link.end(new Problem("expired", e.reason || "unauthorized"));
    else if (FATAL_CLOSE_CODES.has(e.code)) link.end(new Problem("fatal", `closed ${e.code} ${e.reason}`));
    else {
      const detail = `closed ${e.code}${e.reason ? " " + e.reason : ""}`;
      link.end(new Problem("retry", detail, closeRetryHint(e.code, e.reason)));
    }
  };
  const send = (message) => socket.readyState === 1 && socket.send(JSON.stringify(message));
  return {
    send,
    check: () => send({ op: "ping" }), // any frame back is the answer; `pong` comes first
    close: () => {
      clearInterval(pinger);
      socket.onclose = socket.onmessage = null;
      socket.close(1000);
    },
  };
}

function parseSseBlock(block) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { name, data: data.join("\n") } : null;
}

function openSse(link) {
  const abort = new AbortController();
  (async () => {
    const ticket = await link.ticket();
    const res = await fetch(link.url({ ticket }), {
      headers: { Accept: "text/event-stream" },
      cache: "no-store",
      signal: abort.signal,
    });
    if (!res.ok) throw problemFromHttp(res.status, await res.json().catch(() => null));
    // 204: the execution had ended and the cursor was at its end; nothing will follow.
    if (res.status === 204) return link.page({ events: [], done: true });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let ready = false;
    let hint = null; // a `retry:` after `ready`: a draining server's retry hint
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const blocks = buffer.split(/\r?\n\r?\n/);
      buffer = blocks.pop();
      for (const block of blocks) {
        const parsed = parseSseBlock(block);
        if (parsed) {
          const message = JSON.parse(parsed.data);
          if (message.control === "ready") ready = true;
          link.receive(message);
        } else if (ready) {
          const retry = /^retry:\s?(\d+)$/m.exec(block);
          if (retry) hint = Number(retry[1]);
        }
      }
      link.alive(); // bytes arrived: the connection lives, even mid-block
    }
    throw new Problem("retry", "stream ended", hint);
  })().catch((err) => {
    if (!abort.signal.aborted) link.end(err instanceof Problem ? err : new Problem("retry", String(err)));
  });
  // SSE cannot ask the server anything: the check waits for any byte.
  return { send: () => false, check: () => {}, close: () => abort.abort() };
}

function openLongPoll(link) {
  let stopped = false;
  let poll = null; // the AbortController of the request in flight; its reason says why
  let wait = 0; // the first poll answers at once: that response is the `ready`
  (async () => {
    while (!stopped) {
      const ticket = await link.ticket();
      const current = (poll = new AbortController());
      const timer = setTimeout(() => current.abort("timeout"), wait * 1000 + link.connectTimeoutMs());
      let res, body;
      try {
        res = await fetch(link.url({ ticket, wait }), { cache: "no-store", signal: current.signal });
        body = await res.json().catch(() => null);
      } catch (err) {
        if (current.signal.reason !== "check") throw err;
      } finally {
        clearTimeout(timer);
      }
      if (stopped) return;
      if (current.signal.reason === "check") continue; // asked again at once, same cursor
      if (!res.ok) throw problemFromHttp(res.status, body);
      link.receive({ control: "ready", transport: "longpoll" });
      link.page(body);
      if (link.finished()) return;
      wait = link.longpollWait();
    }
  })().catch((err) => {
    if (stopped) return;
    if (poll && poll.signal.reason === "timeout") link.end(new Problem("timeout", "no response in time"));
    else link.end(err instanceof Problem ? err : new Problem("retry", String(err)));
  });
  return {
    send: () => false,
    // A held poll may sit on a dead connection: drop it and poll at once (wait 0); the
    // answer is the sign of life and carries whatever was published meanwhile.
    check: () => {
      wait = 0;
      if (poll) poll.abort("check");
    },
    close: () => {
      stopped = true;
      if (poll) poll.abort("closed");
    },
  };
}

const TRANSPORTS = { websocket: openWebSocket, sse: openSse, longpoll: openLongPoll };

// --- the connection manager shared by `follow` and `feed` ------------------------

class Channel {
  /** Negotiation, fallback, backoff, heartbeats, resume checks and tokens for one
   *  resource. `spec` says what the resource is: its path, its query for a
   *  (re)connect, what to do with a message or a long-poll page, and whether it has
   *  finished. `state` (a ChannelState) is the one field saying where the channel is. */
  constructor(spec, options) {
    this.spec = spec;
    this.o = { ...DEFAULTS, ...options };
    this.token = this.o.token;
    this.state = S.NEGOTIATING;
    this.transport = null;
    this.reason = "";
    this.reconnects = 0;
    this.attempt = 0; // failures since the last healthy connection
    this.expiredInARow = 0; // token expiries without an open connection between them
    this.working = null; // the transport that delivered; kept for the page's life
    this.candidates = [];
    this.index = 0;
    this.negotiated = { heartbeat: 15, longpoll_wait: 25 };
    this.conn = null; // the connection open or opening, else null (waiting, refreshing)
    this.generation = 0; // bumped per connection: callbacks of older ones are ignored
    this.timers = {};
    this.lastHeard = 0;
    this.downSince = null; // ms timestamp since which nothing is known to deliver
    this.pageWatch = this.watchPage();
    this.report();
    this.start();
  }

  /** The one place the state changes: checks the transition, keeps the `lost` clock
   *  (started when the stream stops delivering, stopped when it opens) and reports. */
  moveTo(next, extra = {}) {
    if (!NEXT[this.state].includes(next)) throw new Error(`herald: no transition ${this.state} → ${next}`);
    this.state = next;
    clearTimeout(this.timers.lost);
    if (next === S.OPEN) this.downSince = null;
    else if (ENDED.has(next)) this.pageWatch.abort();
    else {
      this.downSince ??= Date.now();
      // Not while REFRESHING: the page's onTokenExpired is at work, and a resume from
      // LOST would reconnect with the expired token; `connect` reports LOST after it.
      if (next !== S.LOST && next !== S.REFRESHING) {
        const left = this.downSince + this.o.lostAfter - Date.now();
        this.timers.lost = setTimeout(() => this.moveTo(S.LOST), Math.max(0, left));
      }
    }
    this.report(extra);
  }

  report(extra = {}) {
    if (this.o.onState) {
      this.o.onState({
        state: this.state,
        transport: this.transport,
        reason: this.reason,
        reconnects: this.reconnects,
        attempt: this.attempt,
        ...this.spec.position(),
        ...extra,
      });
    }
  }

  /** Where the stream stands once the current connection is given up: LOST when
   *  nothing was delivered for `lostAfter` ms, else `otherwise`. */
  downState(otherwise) {
    const lost = this.state === S.LOST || (this.downSince !== null && Date.now() - this.downSince >= this.o.lostAfter);
    return lost ? S.LOST : otherwise;
  }

  /** Listens for the page and network events after which the connection may be dead;
   *  the returned controller removes the listeners when the channel ends. */
  watchPage() {
    const watch = new AbortController();
    if (typeof window === "undefined" || typeof document === "undefined") return watch;
    for (const [where, type] of RESUME_TRIGGERS) {
      const target = where === "window" ? window : document;
      target.addEventListener(
        type,
        () => (type !== "visibilitychange" || document.visibilityState === "visible") && this.resume(type),
        { signal: watch.signal },
      );
    }
    return watch;
  }

  async start() {
    let offered = ["websocket", "sse", "longpoll"];
    try {
      const res = await fetch(this.o.baseUrl + "/api/negotiate", { cache: "no-store" });
      if (res.ok) {
        this.negotiated = await res.json();
        offered = this.negotiated.transports;
      }
    } catch {
      // The server is unreachable: try every transport in the default order.
    }
    if (ENDED.has(this.state)) return; // closed while negotiating
    const forced = this.o.transports ? [].concat(this.o.transports) : null;
    const wanted = forced || offered;
    this.candidates = wanted.filter((t) => (forced || offered.includes(t)) && TRANSPORTS[t] && browserSupports(t));
    const skipped = wanted.filter((t) => !this.candidates.includes(t));
    this.reason = forced ? "forced by the page" : "first the server offers";
    if (skipped.length) this.reason += ` (skipped ${skipped.join(", ")}: not in this browser)`;
    if (!this.candidates.length) {
      this.reason = "no transport both offered and supported";
      return this.moveTo(S.FAILED);
    }
    this.connect();
  }

  connect() {
    if (ENDED.has(this.state)) return;
    if (this.spec.finished()) return this.finish();
    this.stopConnection(); // at most one connection: a resume may start one early
    const name = this.working || this.candidates[this.index];
    const generation = this.generation;
    const live = (f) => (...args) => (generation === this.generation && !ENDED.has(this.state) ? f(...args) : undefined);
    this.transport = name;
    this.moveTo(this.downState(S.CONNECTING));
    const link = {
      token: () => this.token,
      ticket: () => this.ticket(),
      url: (extra = {}) => this.url(name, extra),
      heartbeatMs: () => this.negotiated.heartbeat * 1000,
      connectTimeoutMs: () => this.o.connectTimeout,
      longpollWait: () => this.o.longpollWait ?? this.negotiated.longpoll_wait,
      finished: () => this.spec.finished() || ENDED.has(this.state),
      receive: live((m) => this.receive(m)),
      page: live((body) => {
        this.spec.page(body);
        if (this.spec.finished()) this.finish();
      }),
      alive: live(() => this.heard()),
      end: live((problem) => this.ended(problem)),
    };
    this.timers.connect = setTimeout(
      live(() => this.ended(new Problem("timeout", `no ready within ${this.o.connectTimeout} ms`))),
      this.o.connectTimeout,
    );
    this.conn = TRANSPORTS[name](link);
  }

  url(transport, extra) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries({ ...this.spec.query(transport), ...extra })) {
      // An array is a repeated parameter (/api/streams: s=ID:AFTER for each execution).
      for (const one of [].concat(v)) if (one !== null && one !== undefined && one !== "") params.append(k, one);
    }
    const q = params.toString();
    return this.o.baseUrl + this.spec.path + (q ? "?" + q : "");
  }

  async ticket() {
    let res;
    try {
      res = await fetch(this.o.baseUrl + "/api/tickets", {
        method: "POST",
        headers: { Authorization: "Bearer " + this.token },
        cache: "no-store",
        // A request on a pooled connection that died silently would wait forever (and,
        // between long-polls, no other timer would notice).
        signal: AbortSignal.timeout(this.o.connectTimeout),
      });
    } catch (err) {
      throw new Problem("retry", "ticket: " + err);
    }
    const body = await res.json().catch(() => null);
    if (!res.ok) throw problemFromHttp(res.status, body);
    return body.ticket;
  }

  /** Something arrived: the connection lives, and a pending check has its answer. */
  heard() {
    this.lastHeard = Date.now();
    if (this.timers.check === undefined) return;
    clearTimeout(this.timers.check);
    delete this.timers.check;
    if (this.state === S.OPEN) this.downSince = null; // an `offline` that did not cut us
  }

  receive(message) {
    this.heard();
    if (message.control) {
      const c = message.control;
      if (c === "ready") {
        this.opened();
        // Over /api/streams a WebSocket subscribes after every (re)connect.
        if (this.spec.opened) this.spec.opened(this.transport, (op) => this.conn && this.conn.send(op));
        return;
      }
      // A control naming an execution (/api/streams) concerns that execution only.
      if (message.execution_id !== undefined && this.spec.control) return this.spec.control(message);
      if (c === "auth_ok") return this.scheduleRefresh();
      if (c === "reset") {
        this.spec.reset(message.execution);
        return this.spec.finished() ? this.finish() : undefined;
      }
      if (c === "error") {
        const code = message.code || "error";
        const kind = code === "token_expired" || code === "unauthorized" ? "expired" : FATAL_ERROR_CODES.has(code) ? "fatal" : "retry";
        return this.ended(new Problem(kind, code));
      }
      return; // ping, pong
    }
    this.spec.message(message);
    if (this.spec.finished()) this.finish();
  }

  opened() {
    if (this.state === S.OPEN) return;
    this.expiredInARow = 0;
    clearTimeout(this.timers.connect);
    if (!this.working) this.working = this.transport;
    this.lastHeard = Date.now();
    const hb = this.negotiated.heartbeat * 1000;
    if (this.transport !== "longpoll") {
      // Dead if silent for more than two heartbeats (half a heartbeat of slack).
      this.timers.watchdog = setInterval(() => {
        if (Date.now() - this.lastHeard > 2.5 * hb) this.ended(new Problem("retry", "missed two heartbeats"));
      }, Math.max(250, hb / 2));
    }
    this.timers.healthy = setTimeout(() => (this.attempt = 0), this.o.healthyAfter);
    if (this.transport === "websocket") this.scheduleRefresh();
    this.moveTo(S.OPEN);
  }

  /** On a page or network event (RESUME_TRIGGERS): an open connection is checked, a
   *  retry waiting on backoff runs now, and on `online` an attempt begun while the
   *  network was down (which may hang until `connectTimeout`) starts over. */
  resume(trigger) {
    if (this.state === S.OPEN) {
      if (trigger === "offline") this.downSince ??= Date.now(); // `lost` counts from here
      return this.check(trigger);
    }
    if (trigger === "offline" || ENDED.has(this.state)) return;
    if (this.state === S.NEGOTIATING || this.state === S.REFRESHING) return; // they go on to connect
    if (this.conn && trigger !== "online") return; // an attempt is under way, with its own timeout
    this.reason = `resumed at once on ${trigger}`;
    this.connect();
  }

  /** Asks the open connection for a sign of life (see the transports' `check`); none
   *  within `checkTimeout` ends it as stale, and `ended` reconnects at once. */
  check(trigger) {
    if (this.timers.check !== undefined) return; // one check at a time
    const generation = this.generation;
    this.conn.check();
    this.timers.check = setTimeout(() => {
      delete this.timers.check;
      if (generation !== this.generation || this.state !== S.OPEN) return;
      this.ended(new Problem("stale", `no sign of life ${this.o.checkTimeout} ms after ${trigger}`));
    }, this.o.checkTimeout);
  }

  scheduleRefresh() {
    clearTimeout(this.timers.refresh);
    const exp = tokenExp(this.token);
    if (!exp || !this.o.onTokenExpired) return;
    const left = exp * 1000 - Date.now();
    const margin = Math.min(this.o.refreshBefore * 1000, left / 3);
    const generation = this.generation;
    this.timers.refresh = setTimeout(async () => {
      try {
        const fresh = await this.o.onTokenExpired();
        if (!fresh || generation !== this.generation || ENDED.has(this.state)) return;
        this.token = fresh;
        this.conn.send({ op: "auth", token: fresh });
      } catch {
        // No fresh token: the server will end the stream with token_expired.
      }
    }, Math.max(0, left - margin));
  }

  /** The resource's query changed (the set of executions over /api/streams): an SSE
   *  stream is reopened with it at once, a held long-poll polls again at once (the
   *  WebSocket sends ops instead). Not while no connection is up: the next uses it. */
  requery() {
    if (!this.conn || ENDED.has(this.state)) return;
    if (this.transport === "longpoll") this.conn.check();
    else if (this.transport === "sse") this.connect();
  }

  /** Drops the current connection and its timers (not the `lost` clock). */
  stopConnection() {
    this.generation++;
    for (const t of ["connect", "healthy", "refresh", "retry", "check"]) clearTimeout(this.timers[t]);
    clearInterval(this.timers.watchdog);
    delete this.timers.check;
    if (this.conn) this.conn.close();
    this.conn = null;
  }

  async ended(problem) {
    const wasOpen = this.state === S.OPEN;
    const checking = this.timers.check !== undefined; // dropped while being checked
    const failed = this.transport;
    this.stopConnection();
    if (ENDED.has(this.state)) return;
    if (this.spec.finished()) return this.finish();
    if (problem.kind === "fatal") {
      this.reason = problem.message;
      return this.moveTo(S.FAILED, { error: problem.message });
    }
    if (problem.kind === "expired") {
      this.expiredInARow++;
      if (!this.o.onTokenExpired || this.expiredInARow > 2) {
        this.reason = "the token expired and no fresh one came";
        return this.moveTo(S.FAILED, { error: problem.message });
      }
      this.moveTo(S.REFRESHING);
      let fresh;
      try {
        fresh = await this.o.onTokenExpired();
      } catch (err) {
        if (ENDED.has(this.state)) return;
        this.reason = "onTokenExpired failed: " + err;
        return this.moveTo(S.FAILED, { error: String(err) });
      }
      if (ENDED.has(this.state)) return;
      this.token = fresh;
      this.reconnects++;
      this.reason = `resumed with a fresh token (${problem.message})`;
      return this.connect();
    }
    if (problem.kind === "stale" || (checking && problem.kind === "retry")) {
      // The check found the connection dead (no answer, or it broke on the ping): the
      // network is most likely back, so no backoff.
      this.reconnects++;
      const what = problem.kind === "stale" ? `gave ${problem.message}` : `dropped on a check (${problem.message})`;
      this.reason = `${failed} ${what}; reconnected at once`;
      return this.connect();
    }
    if (problem.retryIn !== null) {
      // A draining server said when to come back (each client its own jittered time):
      // a drain is no failure, so no backoff and no fallback.
      this.reconnects++;
      this.reason = `${failed} drained by the server (${problem.message}); back in ${problem.retryIn} ms`;
      this.moveTo(this.downState(S.WAITING), { retryIn: problem.retryIn });
      this.timers.retry = setTimeout(() => this.connect(), problem.retryIn);
      return;
    }
    if (!wasOpen && !this.working && this.index + 1 < this.candidates.length) {
      this.index++;
      this.reason = `${failed} failed (${problem.message}); fell back to ${this.candidates[this.index]}`;
      return this.connect();
    }
    if (!this.working) this.index = 0; // nothing worked yet: walk the list again
    const delay = backoffDelay(this.attempt, this.o.backoffFirst, this.o.backoffCap);
    this.reconnects++;
    this.reason = `${failed} ${wasOpen ? "dropped" : "failed"} (${problem.message}); retrying`;
    this.moveTo(this.downState(S.WAITING), { retryIn: Math.round(delay) });
    this.attempt++;
    this.timers.retry = setTimeout(() => this.connect(), delay);
  }

  finish() {
    if (ENDED.has(this.state)) return;
    this.stopConnection();
    this.moveTo(S.DONE);
  }

  close() {
    if (this.state === S.DONE || this.state === S.CLOSED) return;
    this.stopConnection();
    this.moveTo(S.CLOSED);
  }
}

// --- one connection per browser: /api/streams and the feed, shared by every tab ------
//
// A browser opens at most 6 HTTP/1.1 connections per host: with SSE or long-poll the
// seventh tab that follows an execution (or shows the dashboard) would starve. So by
// default every `follow` of every tab of an origin shares one connection to
// /api/streams, and every `feed` one connection to /api/executions/feed: for each, one
// tab holds it (the holder of a Web Lock), the others send it what they want and
// receive their messages over a BroadcastChannel. Each follow keeps its own cursor and
// drops any seq at or below it, so a takeover (the holding tab closed or froze: the next
// tab waiting on the lock gets it at once, asks every follow for its cursor and
// subscribes from there) loses and repeats nothing. The feed is state, not a log: its
// holder keeps the merged rows and hands a tab that joins late a snapshot of them, and
// after a takeover every tab gets the server's fresh snapshot. Without Web Locks or
// BroadcastChannel each tab has one connection of its own per resource; `share: false`
// gives a follow (a feed) a connection of its own to its execution's stream URL (the
// feed's URL), as before sharing.

const SHARE_DEBOUNCE_MS = 30; // subscriptions arriving together reopen an SSE stream once
const RETRY_SUBSCRIBE_MS = 1000; // after a refusal that may pass (store unavailable)
const FEED_ROWS = 50; // the server's snapshot: the caller's 50 newest executions
// Options that shape the shared connection itself (the holding tab's first member's).
const PER_MEMBER = new Set(["after", "share", "onEvent", "onState", "onReset", "onSnapshot", "onChange"]);
// Messages from the tabs to the holding tab; every other message is for every tab.
const TO_HOLDER = new Set(["subscribe", "unsubscribe", "leave"]);

/** Whether this browser can share one connection between tabs. */
export function canShare() {
  return typeof navigator !== "undefined" && !!navigator.locks && typeof BroadcastChannel === "function";
}

/** The token's `sub`: tabs share a connection only when it is the same caller's. */
function tokenSub(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))).sub || "";
  } catch {
    return "";
  }
}

/** The holding tab's side of a shared resource: one Channel, open while some member
 *  (in any tab) wants it, whose states go to every tab. */
class HeldConnection {
  constructor(options, publish) {
    this.options = { ...options, onState: (s) => this.state(s) };
    this.publish = publish; // to every tab, this one included
    this.channel = null;
    this.lastState = null;
    this.timer = null;
  }

  /** A message from a tab (this one included) to the holder. */
  receive(m) {
    if (m.type === "subscribe") this.subscribe(m);
    else if (m.type === "unsubscribe") this.unsubscribe(m);
    else if (m.type === "leave") this.leave(m.tab);
  }

  /** A member that was not there before learns how the connection is doing (the
   *  others skip a report they had). */
  tellState() {
    if (this.lastState) this.publish({ type: "state", state: this.lastState });
  }

  settleSoon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.settle(), SHARE_DEBOUNCE_MS);
  }

  /** Opens the connection when something is wanted, closes it when nothing is (a
   *  moment later: another tab's member may be on its way). */
  settle() {
    if (this.idle()) return this.stop();
    if (!this.channel || ENDED.has(this.channel.state)) this.channel = new Channel(this.spec(), this.options);
  }

  stop() {
    clearTimeout(this.timer);
    const channel = this.channel;
    this.channel = null;
    if (channel) channel.close(); // its `closed` report is not the members' business
  }

  state(report) {
    if (report.state === S.CLOSED) return; // closed by `stop`: nothing is wanted
    this.lastState = report;
    this.publish({ type: "state", state: report });
  }
}

/** /api/streams for every follow of every tab. `wanted` maps an execution to its
 *  subscribers (one per follow, in any tab) and the cursor each asked from; `at` is
 *  where the connection stands per execution. */
class StreamsConnection extends HeldConnection {
  constructor(options, publish) {
    super(options, publish);
    this.wanted = new Map(); // execution id -> Map(subscriber -> after)
    this.at = new Map(); // execution id -> last seq the connection delivered (or its start)
  }

  idle() {
    return !this.wanted.size;
  }

  subscribe({ subscriber, id, after }) {
    if (!this.wanted.has(id)) this.wanted.set(id, new Map());
    const subscribers = this.wanted.get(id);
    const known = subscribers.has(subscriber); // says where it is again (a roll-call, a rejoin)
    subscribers.set(subscriber, after);
    const at = this.at.get(id);
    if (at === undefined || after < at) {
      // New, or someone needs older events: (re)subscribe from the lower cursor; the
      // others drop what they have seen.
      this.at.set(id, after);
      this.sendOp({ op: "subscribe", execution_id: id, after });
    }
    if (!known) this.tellState();
  }

  unsubscribe({ subscriber, id }) {
    const subscribers = this.wanted.get(id);
    if (!subscribers || !subscribers.delete(subscriber) || subscribers.size) return;
    this.forget(id);
    this.sendOp({ op: "unsubscribe", execution_id: id });
  }

  /** A tab went away: its subscriptions go with it. */
  leave(tab) {
    for (const [id, subscribers] of [...this.wanted]) {
      for (const subscriber of [...subscribers.keys()]) if (subscriber.startsWith(tab + ":")) this.unsubscribe({ subscriber, id });
    }
  }

  forget(id) {
    this.wanted.delete(id);
    this.at.delete(id);
  }

  /** Tells the server: an op on an open WebSocket, else the set in the next request. */
  sendOp(op) {
    const channel = this.channel;
    if (this.wanted.size && channel && channel.transport === "websocket" && channel.state === S.OPEN) {
      channel.conn.send(op);
      return;
    }
    this.settleSoon();
  }

  /** The set changed: besides opening and closing, a running connection sends it again
   *  (SSE reopens, a held long-poll polls again). */
  settle() {
    if (!this.idle() && this.channel && !ENDED.has(this.channel.state)) this.channel.requery();
    else super.settle();
  }

  spec() {
    const cursors = () => [...this.at].map(([id, after]) => `${id}:${after}`);
    const advance = (id, seq) => this.at.has(id) && this.at.set(id, Math.max(this.at.get(id), seq));
    const spec = {
      path: "/api/streams",
      query: (transport) => (transport === "websocket" ? {} : { s: cursors() }),
      position: () => ({}),
      // Nothing left to follow (every execution ended): the stream the server ends
      // then is not reconnected (it would name no execution: a 400).
      finished: () => !this.wanted.size,
      opened: (transport, send) => {
        if (transport !== "websocket") return;
        for (const [id, after] of this.at) send({ op: "subscribe", execution_id: id, after });
      },
      message: (event) => {
        if (typeof event.seq !== "number") return;
        advance(event.execution_id, event.seq);
        this.publish({ type: "event", event });
      },
      reset: () => {}, // over /api/streams a reset always names its execution (control)
      control: (m) => {
        const id = m.execution_id;
        if (m.control === "reset") {
          advance(id, m.execution.last_seq);
          this.publish({ type: "reset", id, execution: m.execution });
        } else if (m.control === "ended") {
          this.forget(id);
          this.publish({ type: "ended", id });
          if (!this.wanted.size) this.settleSoon();
        } else if (m.control === "error") {
          if (FATAL_ERROR_CODES.has(m.code)) {
            this.forget(id);
            this.publish({ type: "error", id, code: m.code, message: m.message });
            if (!this.wanted.size) this.settleSoon();
          } else {
            setTimeout(() => this.wanted.has(id) && this.sendOp({ op: "subscribe", execution_id: id, after: this.at.get(id) }), RETRY_SUBSCRIBE_MS);
          }
        }
      },
      page: (body) => {
        for (const [id, execution] of Object.entries(body.resets || {})) spec.control({ control: "reset", execution_id: id, execution });
        for (const event of body.events || []) spec.message(event);
        for (const [id, cursor] of Object.entries(body.cursors || {})) advance(id, cursor);
        for (const id of body.ended || []) spec.control({ control: "ended", execution_id: id });
        for (const [id, error] of Object.entries(body.errors || {})) spec.control({ control: "error", execution_id: id, ...error });
        if (!this.wanted.size) this.stop();
      },
    };
    return spec;
  }
}

/** /api/executions/feed for every feed of every tab. The holder keeps the merged rows
 *  (the last snapshot with every change since, the FEED_ROWS newest) and their
 *  version, so a feed that joins while the connection runs gets a snapshot of them at
 *  once, as a connection of its own would. */
class FeedConnection extends HeldConnection {
  constructor(options, publish) {
    super(options, publish);
    this.subscribers = new Set();
    this.rows = new Map(); // execution id -> summary
    this.version = null; // null until the server's snapshot
  }

  idle() {
    return !this.subscribers.size;
  }

  subscribe({ subscriber }) {
    const known = this.subscribers.has(subscriber); // a roll-call, a rejoin
    this.subscribers.add(subscriber);
    if (!this.channel || ENDED.has(this.channel.state)) this.settleSoon();
    else if (this.version !== null) this.publish({ type: "snapshot", to: subscriber, version: this.version, executions: this.newest() });
    if (!known) this.tellState();
  }

  unsubscribe({ subscriber }) {
    if (this.subscribers.delete(subscriber) && this.idle()) this.settleSoon();
  }

  leave(tab) {
    for (const subscriber of [...this.subscribers]) if (subscriber.startsWith(tab + ":")) this.unsubscribe({ subscriber });
  }

  /** Closed with nobody left: what it knew goes stale, the next connection starts
   *  from a snapshot. */
  stop() {
    super.stop();
    this.rows.clear();
    this.version = null;
  }

  newest() {
    return [...this.rows.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
  }

  snapshot(version, executions) {
    this.rows = new Map(executions.map((summary) => [summary.id, summary]));
    this.version = version;
    this.publish({ type: "snapshot", version, executions });
  }

  change(version, summary) {
    this.version = version;
    const known = this.rows.get(summary.id);
    if (known && known.last_seq > summary.last_seq) return; // older news
    this.rows.set(summary.id, summary);
    if (this.rows.size > FEED_ROWS) this.rows.delete(this.newest().pop().id);
    this.publish({ type: "execution", version, execution: summary });
  }

  spec() {
    return {
      path: "/api/executions/feed",
      query: (transport) => (transport === "longpoll" ? { since: this.version } : {}),
      position: () => ({}), // each tab's feed reports its own version
      finished: () => false,
      message: (m) => {
        if (m.type === "snapshot") this.snapshot(m.version, m.executions);
        else if (m.type === "execution") this.change(m.version, m.execution);
      },
      reset: () => {},
      page: (body) => {
        if (body.type === "snapshot") return this.snapshot(body.version, body.executions);
        for (const summary of body.executions) this.change(body.version, summary);
        this.version = body.version;
      },
    };
  }
}

// What each shared resource is: its Web Lock and BroadcastChannel names (each followed
// by "<server>|<sub>|browser") and the holding tab's side of it.
const SHARED = Object.freeze({
  streams: { lock: "herald-connection ", bus: "herald:", hold: (o, publish) => new StreamsConnection(o, publish) },
  feed: { lock: "herald-feed ", bus: "herald-feed:", hold: (o, publish) => new FeedConnection(o, publish) },
});

/** This tab's members (follows, or feeds) of one shared resource: it sends what they
 *  want to the holding tab (itself, when it holds the lock) and hands each member the
 *  messages of every tab. */
class TabShare {
  constructor(resource, key, options, shared) {
    this.resource = resource;
    this.tab = Math.random().toString(36).slice(2);
    this.options = Object.fromEntries(Object.entries(options).filter(([k]) => !PER_MEMBER.has(k)));
    this.members = new Map(); // subscriber -> SharedMember
    this.count = 0;
    this.connection = null; // a HeldConnection while this tab holds the lock
    this.bus = shared ? new BroadcastChannel(resource.bus + key) : null;
    if (!this.bus) {
      this.lead(); // no sharing between tabs: this tab's own connection
      return;
    }
    this.lock = resource.lock + key;
    this.bus.onmessage = (e) => this.receive(e.data);
    this.queue();
    window.addEventListener("pagehide", () => this.leave());
    document.addEventListener("freeze", () => this.leave());
    // Back from the back/forward cache or a freeze: the holder may have changed meanwhile.
    window.addEventListener("pageshow", (e) => e.persisted && this.rejoin());
    document.addEventListener("resume", () => this.rejoin());
  }

  /** Waits for the lock; holds it (and the connection) until the tab leaves. */
  queue() {
    if (this.queued) return;
    this.queued = navigator.locks.request(this.lock, () => new Promise((release) => {
      this.release = release;
      this.lead();
    }));
  }

  lead() {
    this.connection = this.resource.hold(this.options, (m) => this.publish(m));
    this.publish({ type: "roll-call" }); // every member of every tab says what it wants
  }

  /** Goes away (closed, hidden into the back/forward cache, frozen): the next tab
   *  waiting on the lock takes the connection over within moments. */
  leave() {
    if (this.connection) {
      this.connection.stop();
      this.connection = null;
    }
    if (this.release) this.release();
    this.release = null;
    this.queued = null;
    this.bus.postMessage({ type: "leave", tab: this.tab });
  }

  rejoin() {
    this.queue();
    for (const member of this.members.values()) this.send(member.subscribe());
  }

  /** A message for the holding tab (which may be this one). */
  send(message) {
    if (this.bus) this.bus.postMessage(message);
    this.receive(message);
  }

  /** A message for every tab (this one included). */
  publish(message) {
    if (this.bus) this.bus.postMessage(message);
    this.receive(message);
  }

  receive(m) {
    if (TO_HOLDER.has(m.type)) {
      if (this.connection) this.connection.receive(m);
    } else if (m.type === "roll-call") {
      for (const member of this.members.values()) this.send(member.subscribe());
    } else {
      for (const member of [...this.members.values()]) member.take(m);
    }
  }

  add(member) {
    member.subscriber = `${this.tab}:${++this.count}`;
    this.members.set(member.subscriber, member);
    this.send(member.subscribe());
  }

  remove(member, tellHolder) {
    if (!this.members.delete(member.subscriber)) return;
    if (tellHolder) this.send({ ...member.subscribe(), type: "unsubscribe" });
  }
}

const tabShares = new Map(); // lock name -> TabShare, one per resource, caller and server in this tab

/** This tab's share of `resource` for the caller and server of `options`, made by its
 *  first member. */
function tabShare(resource, options) {
  const shared = canShare();
  const key = `${options.baseUrl || ""}|${tokenSub(options.token || "")}|${shared ? "browser" : "tab"}`;
  let share = tabShares.get(resource.lock + key);
  if (!share) tabShares.set(resource.lock + key, (share = new TabShare(resource, key, { ...DEFAULTS, ...options }, shared)));
  return share;
}

/** One member of a shared resource in this tab: its callbacks and its own end (done,
 *  failed or closed) while the connection goes on for the others. A subclass says what
 *  it asks the holder for (`wants`), its position and what it does with a message. */
class SharedMember {
  constructor(options) {
    this.o = options;
    this.state = S.NEGOTIATING;
    this.connection = { transport: null, reason: "", reconnects: 0, attempt: 0 };
  }

  join(share) {
    this.share = share;
    this.report();
    share.add(this);
  }

  subscribe() {
    return { type: "subscribe", subscriber: this.subscriber, ...this.wants() };
  }

  report(extra = {}) {
    if (this.o.onState) this.o.onState({ ...this.connection, state: this.state, ...this.position(), ...extra });
  }

  take(m) {
    if (ENDED.has(this.state)) return;
    if (m.type === "state") this.connectionState(m.state);
    else this.deliver(m);
  }

  /** The shared connection's state, reported as this member's while it goes on. */
  connectionState(report) {
    const { state, ...connection } = report;
    const same = state === this.state && connection.reason === this.connection.reason;
    if (same && connection.reconnects === this.connection.reconnects) return; // had it
    this.connection = connection;
    if (state === S.FAILED) return this.end(S.FAILED, { error: report.error || report.reason });
    this.state = state;
    this.report();
  }

  end(state, extra = {}) {
    if (ENDED.has(this.state)) return;
    this.state = state;
    // Done and failed members are already off the connection; a closed one is not.
    this.share.remove(this, state === S.CLOSED);
    this.report(extra);
  }
}

/** One execution followed over the shared connection, with its own cursor. */
class SharedFollow extends SharedMember {
  constructor(share, executionId, options) {
    super(options);
    this.id = executionId;
    this.cursor = options.after || 0;
    this.join(share);
  }

  wants() {
    return { id: this.id, after: this.cursor };
  }

  position() {
    return { cursor: this.cursor };
  }

  deliver(m) {
    const id = m.type === "event" ? m.event.execution_id : m.id;
    if (id !== this.id) return;
    if (m.type === "event") {
      const event = m.event;
      if (event.seq <= this.cursor) return; // seen already (a replay, a takeover)
      this.cursor = event.seq;
      if (this.o.onEvent) this.o.onEvent(event);
      if (TERMINAL_EVENTS.has(event.event)) this.end(S.DONE);
    } else if (m.type === "reset") {
      this.cursor = Math.max(this.cursor, m.execution.last_seq);
      if (this.o.onReset) this.o.onReset(m.execution);
      if (TERMINAL_STATUSES.has(m.execution.status)) this.end(S.DONE);
    } else if (m.type === "ended") {
      this.end(S.DONE);
    } else if (m.type === "error") {
      this.connection.reason = `${m.code}: ${m.message}`;
      this.end(S.FAILED, { error: m.code });
    }
  }
}

/** One feed over the shared connection: a snapshot first (the server's, or the
 *  holder's merged rows when it joins late), then the changes. */
class SharedFeed extends SharedMember {
  constructor(share, options) {
    super(options);
    this.version = null; // null until its first snapshot
    this.join(share);
  }

  wants() {
    return {};
  }

  position() {
    return { version: this.version };
  }

  deliver(m) {
    if (m.type === "snapshot") {
      if (m.to !== undefined && m.to !== this.subscriber) return; // for a feed that joined late
      this.version = m.version;
      if (this.o.onSnapshot) this.o.onSnapshot(m.executions);
    } else if (m.type === "execution") {
      if (this.version === null) return; // the snapshot on its way already holds it
      this.version = m.version;
      if (this.o.onChange) this.o.onChange(m.execution);
    }
  }
}

/** Follow one execution's events from `after`, exactly once and in order. By default
 *  over the connection every tab of the origin shares (above); `share: false` opens a
 *  connection of its own to the execution's stream URL. */
export function follow(executionId, options = {}) {
  if (options.share === false) return followAlone(executionId, options);
  const follow = new SharedFollow(tabShare(SHARED.streams, options), executionId, options);
  return {
    close: () => follow.end(S.CLOSED),
    get transport() {
      return follow.connection.transport;
    },
    get cursor() {
      return follow.cursor;
    },
    get reconnects() {
      return follow.connection.reconnects;
    },
  };
}

/** One execution over a connection of its own (`share: false`). */
function followAlone(executionId, options) {
  let cursor = options.after || 0;
  let done = false;
  const deliver = (event) => {
    if (typeof event.seq !== "number" || event.seq <= cursor) return; // seen already
    cursor = event.seq;
    if (TERMINAL_EVENTS.has(event.event)) done = true;
    if (options.onEvent) options.onEvent(event);
  };
  const spec = {
    path: `/api/executions/${encodeURIComponent(executionId)}/events`,
    query: () => ({ after: cursor }),
    position: () => ({ cursor }),
    finished: () => done,
    message: deliver,
    reset(execution) {
      cursor = Math.max(cursor, execution.last_seq);
      if (TERMINAL_STATUSES.has(execution.status)) done = true;
      if (options.onReset) options.onReset(execution);
    },
    page(body) {
      if (body.reset) spec.reset(body.reset);
      for (const event of body.events || []) deliver(event);
      if (body.done) done = true;
    },
  };
  const channel = new Channel(spec, options);
  return {
    close: () => channel.close(),
    get transport() {
      return channel.transport;
    },
    get cursor() {
      return cursor;
    },
    get reconnects() {
      return channel.reconnects;
    },
  };
}

/** Follow the caller's execution summaries: `onSnapshot(list)`, then `onChange(summary)`.
 *  By default over the feed connection every tab of the origin shares (above);
 *  `share: false` opens a connection of its own. */
export function feed(options = {}) {
  if (options.share === false) return feedAlone(options);
  const feed = new SharedFeed(tabShare(SHARED.feed, options), options);
  return {
    close: () => feed.end(S.CLOSED),
    get transport() {
      return feed.connection.transport;
    },
  };
}

/** The feed over a connection of its own (`share: false`). */
function feedAlone(options) {
  let version = null;
  const spec = {
    path: "/api/executions/feed",
    query: (transport) => (transport === "longpoll" ? { since: version } : {}),
    position: () => ({ version }),
    finished: () => false,
    message(m) {
      if (m.type === "snapshot") {
        version = m.version;
        if (options.onSnapshot) options.onSnapshot(m.executions);
      } else if (m.type === "execution") {
        version = m.version;
        if (options.onChange) options.onChange(m.execution);
      }
    },
    reset() {},
    page(body) {
      if (body.type === "snapshot") spec.message(body);
      else for (const execution of body.executions) spec.message({ type: "execution", version: body.version, execution });
      version = body.version;
    },
  };
  const channel = new Channel(spec, options);
  return {
    close: () => channel.close(),
    get transport() {
      return channel.transport;
    },
  };
}

/** Small authenticated JSON calls for the pages. */
export async function api(token, method, path, body, baseUrl = SERVED_FROM) {
  const headers = { Authorization: "Bearer " + token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(baseUrl + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error((answer && answer.error && answer.error.message) || `HTTP ${res.status}`);
    err.status = res.status;
    err.code = answer && answer.error && answer.error.code;
    throw err;
  }
  return answer;
}

export const Herald = { follow, feed, api, tokenExp, backoffDelay, browserSupports, canShare, ChannelState };
export default Herald;
