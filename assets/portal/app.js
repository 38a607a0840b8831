// poolgate web portal: a client of poolgate's own WebSocket protocol (protocol/README.md and
// protocol/pools.md), and the reference for client authors. One socket carries the sign-in,
// the two steps to a desktop, and the pushed task events that drive the progress bars (the
// page never polls). No token is ever put in a URL; "Keep me signed in" keeps it in this
// tab's sessionStorage only. Security keys and passkeys (protocol/webauthn.md): the page runs
// the browser's WebAuthn calls on the options the server sends and sends back their JSON.

const TOKEN_KEY = "poolgate.token";
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const STEP_LABEL = { pool_request: "Getting a machine", connect_info: "Starting the desktop" };
// Human names for the server's enum values; the page shows the raw value as a tooltip, and an
// unknown value as it is.
const STATUS_LABEL = {
  ACTIVE: "Available", CREATING: "Being prepared", PARTIAL: "Partly available",
  SERVICE: "Under maintenance", FAILED: "Out of order", DELETING: "Being removed",
};
const CONNECTION_LABEL = {
  RDP: "Remote Desktop (RDP)", NATIVE_RDP: "Remote Desktop (RDP) file", GLINT: "GLINT (VDI client)",
  SPICE: "SPICE (virt-viewer)", SPICE_DIRECT: "SPICE, direct (virt-viewer)", X2GO: "X2Go", VNC: "VNC",
  LOUDPLAY: "Loudplay",
};
const PERMISSION_LABEL = {
  USB_REDIR: "USB devices", FOLDERS_REDIR: "Shared folders", SHARED_CLIPBOARD: "Shared clipboard",
  PRINTER_REDIR: "Printers", SOUND_REDIR: "Sound", SMARTCARD_REDIR: "Smart cards",
};
// "Keep me signed in": seconds between tries to sign the page in again after the connection
// was lost (a server restart), doubling up to the last.
const RECONNECT_DELAYS = [1, 2, 4, 8, 16, 30];
const NBSP = "\u00a0";
const CLOSE_REASONS = {
  1001: "The server is restarting.",
  4000: "The server closed the connection after a long time without activity.",
  4001: "The server closed the connection: nobody signed in on it in time.",
  4002: "The connection could not keep up with the server's updates.",
};

const $ = (id) => document.getElementById(id);

/** The one socket to the server, with request/reply matching by id. */
class Rpc {
  constructor(onEvent, onClose) {
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.next = 1;
    this.pending = new Map();
    this.ws = null;
  }

  open() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return this.ready;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/`);
    this.ws = ws;
    this.ready = new Promise((resolve, reject) => {
      ws.addEventListener("open", () => resolve(), { once: true });
      ws.addEventListener("error", () => reject(new Error("Cannot reach the server.")), { once: true });
    });
    ws.addEventListener("message", (m) => this.dispatch(m.data));
    ws.addEventListener("close", (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const { reject } of this.pending.values()) reject(new Error("The connection was closed."));
      this.pending.clear();
      this.onClose(e);
    });
    return this.ready;
  }

  dispatch(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    if (frame.namespace === "events") { this.onEvent(frame.name, frame.args); return; }
    const waiter = this.pending.get(frame.id);
    if (!waiter) return;
    this.pending.delete(frame.id);
    waiter.resolve(frame);
  }

  /** Sends one request; resolves with `args`, or rejects with a RpcError for an error reply. */
  async call(name, args = {}, namespace = "rpc") {
    await this.open();
    const id = String(this.next++);
    const reply = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.ws.send(JSON.stringify({ namespace, name, id, args }));
    const frame = await reply;
    if (frame.name === "error") throw new RpcError(frame.args);
    return frame.args;
  }

  close() { if (this.ws) { const ws = this.ws; this.ws = null; ws.close(1000); } }
}

class RpcError extends Error {
  constructor(args) {
    super(args.message || "The server refused the request.");
    this.code = args.code;
    this.errCode = args.err_code;
    this.args = args;
  }
}

/** What a person should read for a refused sign-in. */
function signInMessage(e) {
  if (!(e instanceof RpcError)) return e.message;
  switch (e.code) {
    case 401:
      if (e.errCode === 103) return "That one-time code is not right. Check your app and try again.";
      if (e.message.startsWith("The security key challenge")) {
        return "The security key was not used in time. Sign in again.";
      }
      if (e.message.startsWith("The security key's answer")) {
        return "The password or the security key was not accepted. Sign in again.";
      }
      if (e.errCode === 999) return "Wrong username or password.";
      return "Your sign-in expired. Enter your password again.";
    case 403: return e.message === "User is disabled." ? "This account is disabled. Ask your administrator." : e.message;
    case 428:
      if (e.errCode === 102 && !e.args.publicKey) {
        return "No security key is registered for you yet: ask an administrator for an enrolment link.";
      }
      if (e.errCode === 101) {
        return state.sso
          ? `This account signs in through single sign-on: use “Sign in with ${state.sso.display_name}”.`
          : "This account signs in through single sign-on, which this server does not offer. Ask your administrator.";
      }
      return e.args.detail || "This account needs a second factor this page cannot offer.";
    // The server's own sentence: it says when to try again.
    case 429: return e.message;
    case 503: return "The server is busy for a moment; try again in a few seconds.";
    default: return e.message;
  }
}

// ---- state ----------------------------------------------------------------------------

const state = {
  token: null,       // the session token while signed in
  ttl: 0,            // seconds of inactivity the token survives
  lastActive: 0,     // when the server last accepted an authenticated message
  username: "",
  mfaToken: null,    // between `auth` answering 428 and `otp_verify` / `webauthn_verify`
  keyOptions: null,  // the security key's request options (428/102), while that step is shown
  enroll: null,      // the enrolment link's code and registration under way
  sso: null,         // the server's single sign-on (`/oidc/config`), if any
  demo: false,       // a demo server (`identify`): its one-time code is its date
  tasks: new Map(),  // task id -> latest task seen (replies and events)
  waiters: new Map(),// task id -> [resolve] waiting for an end
  cards: new Map(),  // pool id -> the pool's card
  linkTimers: new Map(), // card -> the timer that retires its Guacamole link when it expires
  flows: new Map(),  // pool id -> the step in progress
  holds: new Map(),  // pool id -> the countdown until a failed step 1 may be retried
  expiryTimer: null,
  reconnect: null,   // the pending try to sign in again after the connection was lost
  activityTimer: null, // reads the Activity page again while it is shown
  activity: null,    // what the Activity page last read: {sessions, tasks, events}
  touched: 0,        // when the person last clicked, typed or touched the page
};

const rpc = new Rpc(onEvent, onClose);

/** A call made while signed in: a success slides the token's window, as the server does. */
async function authed(name, args) {
  try {
    const result = await rpc.call(name, args);
    state.lastActive = Date.now();
    return result;
  } catch (e) {
    if (e instanceof RpcError && e.code === 401 && state.token) {
      signedOut("Your session has ended (expired or signed out elsewhere). Sign in again.");
    }
    throw e;
  }
}

/** A sign-in call. A socket that has used up its sign-in attempts (`max_auth_failures`) is
 * refused with "…on this connection; open a new one later": the page opens a new one and asks
 * once more there, so that what the person reads is the server's real answer (a wrong
 * password, or the lockout and when it ends), never the socket's allowance. */
async function signInCall(name, args) {
  try {
    return await rpc.call(name, args);
  } catch (e) {
    if (!(e instanceof RpcError && e.code === 429 && /on this connection/.test(e.message))) throw e;
    rpc.close();
    return rpc.call(name, args);
  }
}

/** A server enum value as a person reads it, the raw value as its tooltip. */
function labelled(value, table) {
  const span = document.createElement("span");
  span.className = "label";
  span.textContent = table[value] || value;
  span.title = value;
  return span;
}

/** `values` labelled into `el`, separated by commas. */
function showLabels(el, values, table) {
  el.replaceChildren();
  values.forEach((value, i) => {
    if (i > 0) el.append(", ");
    el.append(labelled(value, table));
  });
}

// ---- views -----------------------------------------------------------------------------

/** The one-time-code step, after a password that was right. A demo server's code is its
 * date (the mock's "date" code): the page asks the server for today's (`identify` sends it as
 * `demo_code`, as the server's clock has it) and says how to make it. */
function otpStep(mfaToken) {
  state.mfaToken = mfaToken;
  $("password-step").hidden = true;
  $("otp-step").hidden = false;
  $("signin-button").textContent = "Verify";
  $("otp-demo").hidden = true;
  $("otp").focus();
  if (!state.demo) return;
  rpc.call("identify").then((server) => {
    if (!server.demo_code || !state.mfaToken) return;
    $("otp-demo").textContent =
      `This demo server's code is today's date as YYMMDD (the server's date): ${server.demo_code}.`;
    $("otp-demo").hidden = false;
  }).catch(() => { /* the hint is a courtesy */ });
}

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

function showSignIn(message) {
  $("pools-view").hidden = true;
  $("activity-view").hidden = true;
  $("keys-view").hidden = true;
  $("enroll-view").hidden = true;
  $("account").hidden = true;
  $("signin-view").hidden = false;
  $("otp-step").hidden = true;
  $("key-step").hidden = true;
  $("password-step").hidden = false;
  $("passkey").hidden = !keysUsable();
  showKeyNote("key-note");
  $("signin-button").textContent = "Sign in";
  $("signin-button").disabled = false;
  $("password").value = "";
  $("otp").value = "";
  state.mfaToken = null;
  state.keyOptions = null;
  notice(message);
  ($("username").value ? $("password") : $("username")).focus();
}

function signInError(text) {
  $("signin-error").textContent = text || "";
  $("signin-error").hidden = !text;
}

async function signedIn([token, ttl], keep) {
  state.token = token;
  state.ttl = ttl;
  state.lastActive = Date.now();
  if (keep) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  $("signin-view").hidden = true;
  $("enroll-view").hidden = true;
  $("keys-view").hidden = true;
  signInError("");
  notice("");
  $("who").textContent = state.username ? `Signed in as ${state.username}` : "Signed in";
  $("account").hidden = false;
  clearInterval(state.expiryTimer);
  state.expiryTimer = setInterval(checkExpiry, 1000);
  checkExpiry();
  await loadPools();
  await offerActivity();
}

function signedOut(reason) {
  clearInterval(state.expiryTimer);
  stopActivity();
  $("activity-button").hidden = true;
  delete $("activity-button").dataset.offered;
  clearTimeout(state.reconnect);
  state.reconnect = null;
  state.token = null;
  state.flows.clear();
  for (const timer of state.holds.values()) clearInterval(timer);
  state.holds.clear();
  for (const timer of state.linkTimers.values()) clearTimeout(timer);
  state.linkTimers.clear();
  sessionStorage.removeItem(TOKEN_KEY);
  showSignIn(reason);
}

/** The token dies after `ttl` seconds without a successful authenticated message. */
function checkExpiry() {
  if (!state.token) return;
  const left = Math.ceil(state.ttl - (Date.now() - state.lastActive) / 1000);
  if (left <= 0) {
    signedOut(`You were signed out: no activity for ${state.ttl} seconds. Sign in again.`);
    return;
  }
  const minutes = Math.floor(left / 60);
  const seconds = String(left % 60).padStart(2, "0");
  $("session-info").textContent =
    `For your security you are signed out after ${Math.round(state.ttl / 60)} minutes without activity (${minutes}:${seconds} left).`;
}

async function loadPools() {
  const pools = await authed("pools", {});
  const list = $("pools");
  list.replaceChildren();
  state.cards.clear();
  // Favourites first, then the server's order.
  pools.sort((a, b) => Number(b.is_favorite) - Number(a.is_favorite));
  for (const pool of pools) list.append(poolCard(pool));
  $("pools-empty").hidden = pools.length > 0;
  $("pools-view").hidden = false;
  // Tasks pushed on sign-in (before the list existed) are shown now.
  for (const task of state.tasks.values()) showTask(task);
}

function poolCard(pool) {
  const card = $("pool-template").content.firstElementChild.cloneNode(true);
  card.dataset.poolId = pool.id;
  card.querySelector(".name").textContent = pool.name;
  card.querySelector(".fav").hidden = !pool.is_favorite;
  const status = card.querySelector(".status");
  status.textContent = STATUS_LABEL[pool.status] || pool.status;
  status.title = pool.status;
  card.querySelector(".os").textContent = pool.os_type;
  showLabels(card.querySelector(".types"), pool.connection_types, CONNECTION_LABEL);
  const button = card.querySelector(".connect");
  button.setAttribute("aria-label", `Connect to ${pool.name}`);
  button.addEventListener("click", () => connect(pool, card));
  const closed = unavailableText(pool);
  if (closed) {
    // Still listed, so people know it exists and when to come back.
    card.classList.add("closed");
    button.disabled = true;
    const p = card.querySelector(".unavailable");
    p.textContent = closed;
    p.hidden = false;
  } else if (pool.closes_at) {
    const closes = new Date(pool.closes_at).toLocaleString([], { weekday: "long", hour: "2-digit", minute: "2-digit" });
    const p = card.querySelector(".unavailable");
    p.textContent = `Open until ${closes}.`;
    p.hidden = false;
  }
  state.cards.set(pool.id, card);
  return card;
}

function setProgress(card, percent, text) {
  const box = card.querySelector(".progress");
  box.hidden = false;
  box.querySelector("progress").value = percent;
  const line = box.querySelector(".progress-text");
  line.textContent = text;
  line.hidden = !text;
}

/** Why a desktop ends, for people (the event's `reason`). */
const ENDING_REASON = {
  "schedule closes the pool": "the pool closes",
  "max_session reached": "the longest session allowed",
  "lease expired": "the longest time a desktop is kept",
};

function cardNotice(card, text) {
  const p = card.querySelector(".notice");
  p.textContent = text || "";
  p.hidden = !text;
}

/** Why a listed pool cannot be asked for now, for people; `null` when it can. */
function unavailableText(pool) {
  if (pool.available !== false) return null;
  if (pool.unavailable === "network") return "Not available from your network.";
  if (pool.opens_at) {
    const opens = new Date(pool.opens_at).toLocaleString([], {
      weekday: "long", hour: "2-digit", minute: "2-digit",
    });
    return `Not available now: opens ${opens}.`;
  }
  return "Not available now.";
}

function cardError(card, text) {
  const p = card.querySelector(".error");
  p.textContent = text || "";
  p.hidden = !text;
}

/** Shows a task's state on its pool's card (pushed events and replies alike). */
function showTask(task) {
  const card = state.cards.get(task.pool_id);
  const flow = state.flows.get(task.pool_id);
  if (!card || !flow || flow.taskId !== task.id) return;
  const label = task.kind === "POOL_EXPAND" ? STEP_LABEL.pool_request : STEP_LABEL.connect_info;
  const step = task.kind === "POOL_EXPAND" ? 0 : 50;
  const percent = task.status === "COMPLETED" ? 100 : (task.progress || 0);
  const elapsed = Math.max(0, Math.round((Date.now() - Date.parse(task.created)) / 1000));
  const status = { PENDING: "waiting", RUNNING: "in progress", COMPLETED: "done",
    FAILED: "failed", CANCELLED: "cancelled" }[task.status] || task.status;
  // Each figure with its unit on one line (a no-break space), however narrow the card.
  const figure = task.status === "RUNNING" ? ` (${percent}${NBSP}%)` : "";
  const why = TERMINAL.has(task.status) && task.error && task.error.message ? `: ${task.error.message}` : "";
  setProgress(card, step + percent / 2, `${label}: ${status}${figure}${why} — ${elapsed}${NBSP}s`);
}

function remember(task) {
  state.tasks.set(task.id, task);
  showTask(task);
  if (TERMINAL.has(task.status)) {
    for (const resolve of state.waiters.get(task.id) || []) resolve(task);
    state.waiters.delete(task.id);
  }
}

/** Resolves with the task once it has ended, fed by the pushed events. */
function ended(task) {
  remember(task);
  const known = state.tasks.get(task.id);
  if (TERMINAL.has(known.status)) return Promise.resolve(known);
  return new Promise((resolve) => {
    const list = state.waiters.get(task.id) || [];
    list.push(resolve);
    state.waiters.set(task.id, list);
  });
}

function onEvent(name, args) {
  if (name === "task" && args && args.id) remember(args);
  if (name === "machine" && args && args.pool_id) {
    const card = state.cards.get(args.pool_id);
    if (card && args.status === "ENDING") {
      // A warning: the desktop stays until `ends_at`.
      const when = new Date(args.ends_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      cardNotice(card, `Your desktop ends at ${when} (${ENDING_REASON[args.reason] || args.reason}): save your work.`);
    } else if (card) {
      cardNotice(card, null);
      card.querySelector(".result").hidden = true;
      showGuacamole(card, null, null);
      cardError(card, "Your machine in this pool was given back; connect again to get a new one.");
    }
  }
}

function onClose(e) {
  if (!state.token) return;
  const reason = CLOSE_REASONS[e.code] || "The connection to the server was lost.";
  const saved = sessionStorage.getItem(TOKEN_KEY);
  clearInterval(state.expiryTimer);
  state.token = null;
  state.flows.clear();
  if (saved && e.code !== 4000) {
    // The token outlives the socket: it dies `ttl` seconds after the last accepted message.
    reconnect(saved, reason, state.lastActive + state.ttl * 1000, 0);
  } else {
    signedOut(`${reason} Sign in again.`);
  }
}

/** "Keep me signed in" after the connection was lost: tries the kept token again and again,
 * 1, 2, 4 … 30 s apart, while it can still be alive (`deadline`, in ms), showing that it is
 * reconnecting. Only the server's refusal of the token (401) drops it; a server that is down
 * or restarting is simply tried again. */
function reconnect(token, reason, deadline, attempt) {
  const wait = RECONNECT_DELAYS[Math.min(attempt, RECONNECT_DELAYS.length - 1)] * 1000;
  if (Date.now() + wait >= deadline) {
    signedOut(`${reason} The server did not come back before your session ended. Sign in again.`);
    return;
  }
  notice(`${reason} Reconnecting…`);
  clearTimeout(state.reconnect);
  state.reconnect = setTimeout(async () => {
    state.reconnect = null;
    try {
      const reply = await rpc.call("auth_token", { token });
      await signedIn(reply, true);
      notice("");
    } catch (e) {
      if (e instanceof RpcError && e.code >= 400 && e.code < 500 && e.code !== 429) {
        signedOut(e.code === 401
          ? "Your saved session has ended (expired or signed out elsewhere). Sign in again."
          : `${signInMessage(e)} Sign in again.`);
        return;
      }
      // Not reachable yet, or busy: the next try, a little later.
      reconnect(token, reason, deadline, attempt + 1);
    }
  }, wait);
}

// ---- the two steps ---------------------------------------------------------------------

/** Runs one step until it answers with a result: `pool_request` → the COMPLETED task,
 * `connect_info` → its reply with the connection (and a Guacamole link when the pool has a
 * gateway). A repeated click while it runs gets the same task. */
async function step(pool, card, method) {
  for (;;) {
    const reply = await authed(method, { pool_id: pool.id });
    if (reply.connection) return reply;
    const task = reply.task;
    const flow = state.flows.get(pool.id);
    if (flow) flow.taskId = task.id;
    const done = await ended(task);
    if (done.status !== "COMPLETED") {
      const why = done.error && done.error.message ? done.error.message : `The step ended ${done.status}.`;
      throw new Error(why);
    }
    if (method === "pool_request") return done;
    // Step 2 completed: ask again for the connection data.
  }
}

/** A failed step 1 holds the pool back for `failed_step_retry`: the server's 403/800 says
 * how long (`retry_after`). The button waits, counting down, and comes back when it may be
 * pressed again. */
function holdBack(pool, card, seconds) {
  const button = card.querySelector(".connect");
  clearInterval(state.holds.get(pool.id));
  const until = Date.now() + seconds * 1000;
  const last = [...state.tasks.values()].reverse()
    .find((t) => t.pool_id === pool.id && t.kind === "POOL_EXPAND" && t.status === "FAILED");
  const why = last && last.error && last.error.message ? `${last.error.message} ` : "";
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0 || !card.isConnected || !state.token) {
      clearInterval(state.holds.get(pool.id));
      state.holds.delete(pool.id);
      button.disabled = false;
      cardError(card, "");
      cardNotice(card, null);
      return;
    }
    button.disabled = true;
    cardError(card, `${why}The last attempt failed; try again in ${left}${NBSP}s.`);
  };
  tick();
  state.holds.set(pool.id, setInterval(tick, 1000));
}

async function connect(pool, card) {
  if (state.holds.has(pool.id)) return;
  const running = state.flows.get(pool.id);
  if (running) {
    // The server answers a repeated request with the task already running.
    const reply = await authed(running.method, { pool_id: pool.id }).catch(() => null);
    if (reply && reply.task && reply.task.id === running.taskId) {
      notice(`Still connecting to ${pool.name}: the same request is in progress.`);
    }
    return;
  }
  const button = card.querySelector(".connect");
  const flow = { method: "pool_request", taskId: null };
  state.flows.set(pool.id, flow);
  button.textContent = "Connecting…";
  cardError(card, "");
  cardNotice(card, null);
  card.querySelector(".result").hidden = true;
  setProgress(card, 0, `${STEP_LABEL.pool_request}…`);
  try {
    await step(pool, card, "pool_request");
    flow.method = "connect_info";
    setProgress(card, 50, `${STEP_LABEL.connect_info}…`);
    const ready = await step(pool, card, "connect_info");
    const file = await authed("launcher", { pool_id: pool.id });
    // The bar full; the card's result says "Your desktop is ready." (once).
    setProgress(card, 100, "");
    showResult(card, ready.connection, file);
    showGuacamole(card, pool, ready.guacamole);
  } catch (e) {
    if (state.token) {
      card.querySelector(".progress").hidden = true;
      if (e instanceof RpcError && e.code === 403 && e.errCode === 800 && e.args.retry_after) {
        holdBack(pool, card, e.args.retry_after);
      } else {
        cardError(card, e instanceof RpcError ? e.message : `${e.message} Try again.`);
      }
    }
  } finally {
    state.flows.delete(pool.id);
    button.textContent = "Connect";
  }
}

function showResult(card, conn, file) {
  const dl = card.querySelector(".conn");
  dl.replaceChildren();
  for (const [label, value] of [["Machine", conn.verbose_name], ["Address", `${conn.host}:${conn.port}`],
    ["Allowed", conn.permissions || []]]) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    if (!Array.isArray(value)) dd.textContent = value;
    else if (value.length === 0) dd.textContent = "—";
    else showLabels(dd, value, PERMISSION_LABEL);
    dd.classList.add(label.toLowerCase());
    dl.append(dt, dd);
  }
  const link = card.querySelector(".download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([file.content], { type: file.content_type }));
  link.download = file.filename;
  link.textContent = `Download ${file.filename}`;
  card.querySelector(".result").hidden = false;
  link.focus();
}

/** The link into the desktop through the pool's Guacamole gateway. Each link opens the
 * desktop once and expires after `expires_in` seconds, so once it is clicked or expired it
 * gives way to a "New browser link" button; a new link is asked for (with `connect_info`,
 * which starts nothing once the desktop is ready) only when that button is pressed — never
 * on a timer, which would keep an unattended page signed in. */
function showGuacamole(card, pool, link) {
  const a = card.querySelector(".guacamole");
  const renew = card.querySelector(".guacamole-renew");
  clearTimeout(state.linkTimers.get(card));
  state.linkTimers.delete(card);
  if (!link || !state.token || !card.isConnected) {
    a.hidden = true;
    a.removeAttribute("href");
    renew.hidden = true;
    return;
  }
  const spent = () => {
    clearTimeout(state.linkTimers.get(card));
    state.linkTimers.delete(card);
    a.hidden = true;
    a.removeAttribute("href");
    renew.hidden = false;
  };
  a.href = link.url;
  a.hidden = false;
  renew.hidden = true;
  state.linkTimers.set(card, setTimeout(spent, link.expires_in * 1000));
  // After the browser has taken the link to the new tab.
  a.onclick = () => { setTimeout(spent, 0); };
  renew.onclick = async () => {
    renew.disabled = true;
    try {
      const reply = await authed("connect_info", { pool_id: pool.id });
      if (reply.connection && reply.guacamole) {
        showGuacamole(card, pool, reply.guacamole);
        a.focus();
      } else {
        showGuacamole(card, pool, null);
        cardError(card, "The desktop is no longer ready: connect again.");
      }
    } catch (e) {
      cardError(card, e.message);
    } finally {
      renew.disabled = false;
    }
  };
}

// ---- security keys (WebAuthn) ----------------------------------------------------------

/** base64url (no padding), as the server sends binary fields, to bytes. */
function fromBase64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Bytes to base64url without padding. */
function toBase64url(buffer) {
  let binary = "";
  for (const byte of new Uint8Array(buffer)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const withIds = (list) => (list || []).map((c) => ({ ...c, id: fromBase64url(c.id) }));

/** The server's `publicKey` (JSON) as `navigator.credentials.get` takes it. */
function requestOptions(json) {
  if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
    try { return PublicKeyCredential.parseRequestOptionsFromJSON(json); } catch { /* by hand */ }
  }
  return { ...json, challenge: fromBase64url(json.challenge), allowCredentials: withIds(json.allowCredentials) };
}

/** The server's `publicKey` (JSON) as `navigator.credentials.create` takes it. */
function creationOptions(json) {
  if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
    try { return PublicKeyCredential.parseCreationOptionsFromJSON(json); } catch { /* by hand */ }
  }
  return { ...json, challenge: fromBase64url(json.challenge),
    user: { ...json.user, id: fromBase64url(json.user.id) },
    excludeCredentials: withIds(json.excludeCredentials) };
}

/** A `PublicKeyCredential` as JSON with base64url fields: its `toJSON()`, or the same by hand. */
function credentialJson(credential) {
  if (typeof credential.toJSON === "function") {
    try { return credential.toJSON(); } catch { /* by hand */ }
  }
  const r = credential.response;
  const response = { clientDataJSON: toBase64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toBase64url(r.attestationObject);
    if (typeof r.getTransports === "function") response.transports = r.getTransports();
  } else {
    response.authenticatorData = toBase64url(r.authenticatorData);
    response.signature = toBase64url(r.signature);
    response.userHandle = r.userHandle ? toBase64url(r.userHandle) : null;
  }
  return { id: credential.id, rawId: toBase64url(credential.rawId), type: credential.type, response,
    clientExtensionResults: credential.getClientExtensionResults() };
}

/** Whether this page can use security keys: a browser with WebAuthn, in a secure context,
 * on a name (browsers refuse an IP address as the relying party). */
function keysUsable() {
  return Boolean(window.PublicKeyCredential && window.isSecureContext && navigator.credentials)
    && !onIpAddress();
}

function onIpAddress() {
  const host = location.hostname;
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.includes(":") || host.startsWith("[");
}

/** The same page at localhost, where keys work when the server has no public_url. */
function localhostUrl(path = "/") {
  return `${location.protocol}//localhost${location.port ? `:${location.port}` : ""}${path}`;
}

/** On an IP address: the note saying where keys work (`id` and `id-link`). */
function showKeyNote(id, path = "/") {
  const ip = onIpAddress();
  $(id).hidden = !ip;
  if (ip) {
    $(`${id}-link`).href = localhostUrl(path);
    $(`${id}-link`).textContent = localhostUrl("/");
  }
}

async function getCredential(publicKey) {
  if (!keysUsable()) throw new Error(keysUnusableMessage());
  return credentialJson(await navigator.credentials.get({ publicKey: requestOptions(publicKey) }));
}

async function createCredential(publicKey) {
  if (!keysUsable()) throw new Error(keysUnusableMessage());
  return credentialJson(await navigator.credentials.create({ publicKey: creationOptions(publicKey) }));
}

function keysUnusableMessage() {
  if (onIpAddress()) return `Security keys work on ${localhostUrl("/")} — open that address.`;
  return "This browser cannot use security keys on this page (it needs https, or localhost).";
}

/** What a person should read when the browser's WebAuthn call fails. */
function keyErrorMessage(e) {
  switch (e && e.name) {
    case "NotAllowedError": return "The security key was not used. Try again.";
    case "InvalidStateError": return "This key is already registered for you: use another one.";
    case "NotSupportedError": return "This key cannot do what is needed here (a PIN or fingerprint, or a passkey). Try another key.";
    case "SecurityError": return keysUnusableMessage();
    case "AbortError": return "The security key request was cancelled. Try again.";
    default: return e.message || "The security key could not be used. Try again.";
  }
}

// ---- enrolment by an administrator's link ----------------------------------------------

function enrollError(text) {
  $("enroll-error").textContent = text || "";
  $("enroll-error").hidden = !text;
}

/** `/?enroll=CODE`: the code leaves the address bar at once; the page names the user the link
 * is for (a registration begun now, begun again if it grows old before the button). */
async function startEnroll(code) {
  history.replaceState(null, "", "/");
  state.enroll = { code, begun: null, passkey: false, at: 0 };
  $("signin-view").hidden = true;
  $("pools-view").hidden = true;
  $("enroll-view").hidden = false;
  try {
    await beginEnroll();
  } catch (e) {
    $("enroll-title").textContent = "Register a security key";
    enrollError(e instanceof RpcError && e.code === 401
      ? "This enrolment link is not valid: it was used, it expired, or it is mistyped. Ask an administrator for a new one."
      : signInMessage(e));
    $("enroll-done").hidden = false;
    $("enroll-done-text").hidden = true;
    return;
  }
  $("enroll-title").textContent = `Register a security key for ${state.enroll.begun.username}`;
  showKeyNote("enroll-note", `/?enroll=${encodeURIComponent(code)}`);
  $("enroll-form").hidden = onIpAddress();
  if (!onIpAddress()) $("enroll-name").focus();
}

async function beginEnroll() {
  const passkey = $("enroll-passkey").checked;
  const args = { enroll_code: state.enroll.code, passkey };
  // A passkey by link takes the password too: the link alone may have leaked.
  if (passkey) args.password = $("enroll-password").value;
  state.enroll.begun = await rpc.call("key_register_begin", args);
  state.enroll.passkey = passkey;
  state.enroll.at = Date.now();
}

/** Whether a begun registration can still be answered (its challenge's timeout, with margin). */
function fresh(begun, at) {
  const timeout = (begun && begun.publicKey.timeout) || 60000;
  return begun && Date.now() - at < timeout - 10000;
}

async function submitEnroll(event) {
  event.preventDefault();
  enrollError("");
  const name = $("enroll-name").value.trim();
  if (!name) { enrollError("Give the key a name, such as “YubiKey on my keyring”."); $("enroll-name").focus(); return; }
  const button = $("enroll-button");
  button.disabled = true;
  try {
    if (!fresh(state.enroll.begun, state.enroll.at) || state.enroll.passkey !== $("enroll-passkey").checked) {
      await beginEnroll();
    }
    const { registration, publicKey, username } = state.enroll.begun;
    let credential;
    try {
      credential = await createCredential(publicKey);
    } catch (e) {
      enrollError(keyErrorMessage(e));
      return;
    }
    state.enroll.begun = null;
    const key = await rpc.call("key_register_finish", { registration, name, credential });
    $("enroll-password").value = "";
    state.enroll = null;
    $("enroll-form").hidden = true;
    $("enroll-done-text").textContent =
      `Your key “${key.name}” is registered for ${username}. Sign in with your password and the key.`;
    $("enroll-done-text").hidden = false;
    $("enroll-done").hidden = false;
    $("enroll-signin").focus();
  } catch (e) {
    if (e instanceof RpcError && (e.code === 400 || (e.code === 401 && e.errCode === 999))) {
      enrollError(e.code === 400 ? "Give your password to register a passkey." : "That password is not right.");
      $("enroll-password").focus();
      return;
    }
    enrollError(e instanceof RpcError && e.code === 401 && e.message.startsWith("Invalid")
      ? "This enrolment link is not valid any more. Ask an administrator for a new one."
      : e instanceof RpcError && e.code === 401 ? "That took too long. Press the button again." : e.message);
  } finally {
    button.disabled = false;
  }
}

// ---- the signed-in user's security keys ------------------------------------------------

function keysError(text) {
  $("keys-error").textContent = text || "";
  $("keys-error").hidden = !text;
}

function keysStatus(text) {
  $("keys-status").textContent = text || "";
  $("keys-status").hidden = !text;
}

function showPools() {
  stopActivity();
  $("keys-view").hidden = true;
  $("activity-view").hidden = true;
  $("pools-view").hidden = false;
}

async function showKeys() {
  keysError("");
  keysStatus("");
  stopActivity();
  $("activity-view").hidden = true;
  $("pools-view").hidden = true;
  $("keys-view").hidden = false;
  showKeyNote("addkey-note");
  $("addkey-form").hidden = onIpAddress();
  try {
    await loadKeys();
  } catch (e) {
    if (state.token) keysError(e.message);
  }
}

const when = (rfc3339) => new Date(rfc3339).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });

async function loadKeys() {
  const keys = await authed("keys", {});
  const list = $("keys");
  list.replaceChildren();
  for (const key of keys) {
    const item = $("key-template").content.firstElementChild.cloneNode(true);
    item.dataset.keyId = key.id;
    item.querySelector(".name").textContent = key.name;
    item.querySelector(".created").textContent = when(key.created);
    item.querySelector(".last-used").textContent = key.last_used ? when(key.last_used) : "never";
    item.querySelector(".passkey").textContent = key.passkey ? "yes" : "no";
    const remove = item.querySelector(".remove");
    remove.setAttribute("aria-label", `Remove ${key.name}`);
    remove.addEventListener("click", () => removeKey(key, remove));
    list.append(item);
  }
  $("keys-empty").hidden = keys.length > 0;
}

async function removeKey(key, button) {
  keysError("");
  keysStatus("");
  button.disabled = true;
  try {
    await authed("key_remove", { id: key.id });
    await loadKeys();
    keysStatus(`“${key.name}” is removed.`);
  } catch (e) {
    if (state.token) keysError(e.message);
  } finally {
    button.disabled = false;
  }
}

// ---- activity (admins and auditors) --------------------------------------------------

const TASK_KIND_LABEL = { POOL_EXPAND: "Getting a machine", GLINT_START: "Starting the desktop" };
const TASK_STATUS_LABEL = { PENDING: "Waiting", RUNNING: "Running", COMPLETED: "Done", FAILED: "Failed", CANCELLED: "Cancelled" };
const ACTIVITY_EVERY_MS = 5000;
const whenExact = (rfc3339) => new Date(rfc3339).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** The Activity button, for the roles that may see it (`rpc/me`). */
async function offerActivity() {
  try {
    const me = await authed("me", {});
    const may = me.roles.some((r) => r === "admin" || r === "auditor");
    $("activity-button").hidden = !may;
    $("activity-button").dataset.offered = may ? "yes" : "no";
  } catch { $("activity-button").hidden = true; }
}

function activityError(text) {
  $("activity-error").textContent = text || "";
  $("activity-error").hidden = !text;
}

function stopActivity() {
  clearInterval(state.activityTimer);
  state.activityTimer = null;
}

/** How long the Activity page reads again by itself after the person last touched the page:
 * a minute, or half the token's inactivity lifetime if that is shorter. Each read is a
 * request that keeps the session alive, so an unattended page must stop making them. */
const activityIdleMs = () => Math.min(60000, (state.ttl * 1000) / 2);

async function showActivity() {
  $("pools-view").hidden = true;
  $("keys-view").hidden = true;
  $("activity-view").hidden = false;
  activityError("");
  $("activity-user").focus();
  await readActivityAgain();
}

/** Reads now, and then every few seconds while someone is there. */
async function readActivityAgain() {
  state.touched = Date.now();
  $("activity-status").hidden = true;
  stopActivity();
  state.activityTimer = setInterval(() => {
    if (Date.now() - state.touched > activityIdleMs()) {
      stopActivity();
      $("activity-status").textContent =
        "Reading again has paused: nobody touched the page for a while. Press “Read again”.";
      $("activity-status").hidden = false;
      return;
    }
    loadActivity();
  }, ACTIVITY_EVERY_MS);
  await loadActivity();
}

/** Reads the sessions, the tasks and the latest events, then shows what the filters keep. */
async function loadActivity() {
  try {
    const [sessions, tasks, audit] = await Promise.all([
      authed("admin_sessions", {}),
      authed("admin_tasks", {}),
      authed("admin_audit", { since: "24h", limit: 200 }),
    ]);
    state.activity = { sessions, tasks, events: audit.events };
    activityError("");
    // Not a live region: a screen reader is not told of every read.
    $("activity-read").textContent = `Read at ${new Date().toLocaleTimeString()}.`;
    showActivityRows();
  } catch (e) {
    if (state.token) activityError(e.message);
  }
}

/** Whether `value` contains what a filter field holds (case aside; an empty filter keeps all). */
function keeps(field, value) {
  const wanted = $(field).value.trim().toLowerCase();
  return !wanted || String(value || "").toLowerCase().includes(wanted);
}

/** One table row of `cells` (text, or [text, class name]). */
function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    const [text, name] = Array.isArray(cell) ? cell : [cell, ""];
    td.textContent = text === undefined || text === null || text === "" ? "—" : String(text);
    if (name) td.className = name;
    tr.append(td);
  }
  return tr;
}

function fill(table, empty, rows) {
  $(table).tBodies[0].replaceChildren(...rows);
  $(empty).hidden = rows.length > 0;
}

function showActivityRows() {
  const seen = state.activity;
  if (!seen) return;
  const pooled = $("activity-pool").value.trim() !== "";
  fill("activity-sessions", "sessions-empty", pooled ? [] : seen.sessions
    .filter((s) => keeps("activity-user", s.username))
    .map((s) => row([s.username || s.user_id, s.peer, when(s.since), when(s.last_active)])));
  fill("activity-tasks", "tasks-empty", seen.tasks
    .filter((t) => keeps("activity-user", t.username) && keeps("activity-pool", t.pool))
    .map((t) => row([t.username || t.user_id, t.pool, TASK_KIND_LABEL[t.kind] || t.kind,
      TASK_STATUS_LABEL[t.status] || t.status, t.progress === undefined ? "" : `${t.progress}${NBSP}%`,
      when(t.created)])));
  fill("activity-audit", "audit-empty", seen.events
    .filter((e) => (keeps("activity-user", e.user) || (e.actor && keeps("activity-user", e.actor)))
      && keeps("activity-pool", e.pool))
    .map((e) => row([whenExact(e.ts), e.event.replaceAll("_", " "), [e.outcome, e.outcome],
      e.user, e.actor, e.ip, e.pool, e.code ? `${e.code}: ${e.detail || ""}` : e.detail])));
}

/** A call that proves a factor again or answers a ceremony: its 401 is about the password or
 * the challenge, not the session, so it does not sign the page out. */
async function reproving(name, args) {
  const result = await rpc.call(name, args);
  state.lastActive = Date.now();
  return result;
}

async function submitAddKey(event) {
  event.preventDefault();
  keysError("");
  keysStatus("");
  const name = $("addkey-name").value.trim();
  if (!name) { keysError("Give the key a name, such as “YubiKey on my keyring”."); $("addkey-name").focus(); return; }
  const password = $("addkey-password").value;
  const args = { passkey: $("addkey-passkey").checked };
  if (password) args.password = password;
  const button = $("addkey-button");
  button.disabled = true;
  try {
    const { registration, publicKey } = await reproving("key_register_begin", args);
    $("addkey-password").value = "";
    let credential;
    try {
      credential = await createCredential(publicKey);
    } catch (e) {
      keysError(keyErrorMessage(e));
      return;
    }
    const key = await reproving("key_register_finish", { registration, name, credential });
    $("addkey-name").value = "";
    $("addkey-passkey").checked = false;
    await loadKeys();
    keysStatus(`“${key.name}” is added.`);
  } catch (e) {
    if (!(e instanceof RpcError)) keysError(e.message);
    else if (e.code === 401 && e.errCode === 999) keysError("That password is not right.");
    else if (e.code === 401 && e.message.startsWith("The security key challenge")) keysError("That took too long. Press the button again.");
    else if (e.code === 429) keysError(signInMessage(e));
    else keysError(e.message);
    if (e instanceof RpcError && e.code === 401 && e.errCode === 999) $("addkey-password").focus();
  } finally {
    button.disabled = false;
  }
}

// ---- sign-in ---------------------------------------------------------------------------

async function submitSignIn(event) {
  event.preventDefault();
  signInError("");
  const keep = $("keep").checked;
  const button = $("signin-button");
  button.disabled = true;
  try {
    if (state.keyOptions) {
      await useKey(keep);
      return;
    }
    if (state.mfaToken) {
      const code = $("otp").value.trim();
      if (!code) { signInError("Enter the one-time code."); return; }
      const reply = await signInCall("otp_verify", { mfa_token: state.mfaToken, otp_code: code });
      state.mfaToken = null;
      await signedIn(reply, keep);
      return;
    }
    const username = $("username").value.trim();
    const password = $("password").value;
    if (!username || !password) { signInError("Enter your username and password."); return; }
    state.username = username;
    try {
      await signedIn(await signInCall("auth", { username, password }), keep);
    } catch (e) {
      if (e instanceof RpcError && e.code === 428 && e.args.mfa_token && e.args.publicKey) {
        keyStep(e.args);
        await useKey(keep);
        return;
      }
      if (e instanceof RpcError && e.code === 428 && e.args.mfa_token) {
        otpStep(e.args.mfa_token);
        return;
      }
      throw e;
    }
  } catch (e) {
    if (state.mfaToken && e instanceof RpcError && e.code === 401 && e.errCode !== 103) {
      // The challenge is used up or expired, or the password was wrong: start again.
      const message = signInMessage(e);
      showSignIn("");
      signInError(message);
      return;
    }
    signInError(signInMessage(e));
    if (state.keyOptions) return;
    if (state.mfaToken) $("otp").select(); else $("password").select();
  } finally {
    button.disabled = false;
  }
}

/** Shows the security key step for a 428/102 with `publicKey`. */
function keyStep(args) {
  state.mfaToken = args.mfa_token;
  state.keyOptions = args.publicKey;
  $("password-step").hidden = true;
  $("passkey").hidden = true;
  $("key-step").hidden = false;
  $("signin-button").textContent = "Use the security key";
}

/** The security key step after the password: the browser asks for the key; its answer goes to
 * `webauthn_verify`. Refused or cancelled in the browser: the step stays, to try again (the
 * challenge holds until it expires). */
async function useKey(keep) {
  let credential;
  try {
    credential = await getCredential(state.keyOptions);
  } catch (e) {
    signInError(keyErrorMessage(e));
    $("signin-button").focus();
    return;
  }
  const reply = await rpc.call("webauthn_verify", { mfa_token: state.mfaToken, credential });
  state.mfaToken = null;
  state.keyOptions = null;
  await signedIn(reply, keep);
}

/** "Sign in with a passkey": no username; the key says who it is for. */
async function passkeySignIn() {
  signInError("");
  const button = $("passkey-button");
  button.disabled = true;
  try {
    const { mfa_token: mfaToken, publicKey } = await rpc.call("webauthn_begin", {});
    let credential;
    try {
      credential = await getCredential(publicKey);
    } catch (e) {
      signInError(keyErrorMessage(e));
      return;
    }
    const [token, ttl, username] = await rpc.call("webauthn_verify", { mfa_token: mfaToken, credential });
    state.username = username || "";
    await signedIn([token, ttl], $("keep").checked);
  } catch (e) {
    signInError(e instanceof RpcError && e.code === 401 && e.message.startsWith("The security key's answer")
      ? "This passkey was not accepted. Sign in with your username and password."
      : signInMessage(e));
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  try { if (state.token) await rpc.call("auth_clear", {}); } catch { /* signed out anyway */ }
  signedOut("You signed out.");
  // Single sign-on: the provider's session too, if the person wants (RP-initiated logout).
  if (state.sso) $("sso-signout").hidden = false;
}

/** Single sign-on: the button, when the server has a provider (`GET /oidc/config`). */
async function loadSso() {
  try {
    const answer = await fetch("/oidc/config", { headers: { accept: "application/json" } });
    if (!answer.ok) return;
    state.sso = await answer.json();
    $("sso-button").textContent = `Sign in with ${state.sso.display_name}`;
    $("sso-signout-link").textContent = `Also sign out at ${state.sso.display_name}`;
    $("sso").hidden = false;
  } catch { /* no single sign-on */ }
}

/**
 * Back from the provider: `/?sso=1`. The one-time code (used once, gone after a minute) is in
 * an HttpOnly cookie that this page's socket carried; the socket exchanges it for a normal
 * token. No code or token is ever in a URL, and a link cannot sign another browser in.
 */
async function finishSso() {
  history.replaceState(null, "", "/");
  try {
    const [token, ttl, username] = await rpc.call("auth_sso_code", {});
    state.username = username || "";
    await signedIn([token, ttl], $("keep").checked);
  } catch (e) {
    if (e instanceof RpcError && e.code === 428 && e.args.mfa_token && e.args.publicKey) {
      // The key is asked for when the person presses the button.
      showSignIn("");
      keyStep(e.args);
      $("signin-button").focus();
      return;
    }
    if (e instanceof RpcError && e.code === 428 && e.args.mfa_token) {
      showSignIn("");
      otpStep(e.args.mfa_token);
      return;
    }
    showSignIn("");
    signInError(signInMessage(e));
  }
}

/** Signs this page in again with the token kept in sessionStorage. */
async function resume(token, reason) {
  try {
    const reply = await rpc.call("auth_token", { token });
    await signedIn(reply, true);
    notice("");
  } catch (e) {
    signedOut(reason ? `${reason} Sign in again.` : "Your saved session has ended. Sign in again.");
  }
}

async function start() {
  $("signin-form").addEventListener("submit", submitSignIn);
  $("signout").addEventListener("click", signOut);
  $("passkey-button").addEventListener("click", passkeySignIn);
  $("enroll-form").addEventListener("submit", submitEnroll);
  $("enroll-passkey").addEventListener("change", () => {
    $("enroll-password-row").hidden = !$("enroll-passkey").checked;
  });
  $("keys-button").addEventListener("click", showKeys);
  $("keys-back").addEventListener("click", showPools);
  $("activity-button").addEventListener("click", showActivity);
  $("activity-back").addEventListener("click", showPools);
  $("activity-filter").addEventListener("submit", (e) => e.preventDefault());
  $("activity-filter").addEventListener("input", showActivityRows);
  $("activity-refresh").addEventListener("click", readActivityAgain);
  for (const kind of ["pointerdown", "keydown", "input"]) {
    document.addEventListener(kind, () => { state.touched = Date.now(); }, { capture: true, passive: true });
  }
  $("addkey-form").addEventListener("submit", submitAddKey);
  try {
    const server = await rpc.call("identify");
    $("server-info").textContent = `poolgate ${server.version} on ${server.hostname}`;
    $("demo-hint").hidden = !server.demo;
    state.demo = Boolean(server.demo);
  } catch (e) {
    showSignIn("Cannot reach the server. Reload the page to try again.");
    return;
  }
  await loadSso();
  const sso = new URLSearchParams(location.search).get("sso");
  const enroll = new URLSearchParams(location.search).get("enroll");
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (enroll) {
    await startEnroll(enroll);
  } else if (sso) {
    await finishSso();
  } else if (saved) {
    $("keep").checked = true;
    await resume(saved);
  } else {
    showSignIn("");
  }
}

start();
