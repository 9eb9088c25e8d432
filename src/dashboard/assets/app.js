// switchboard dashboard: login, the live connection, and what each frame changes. No
// framework, no build step; rendering is in views.js.
"use strict";

const STREAM_MAX = 500; // rows kept in the stream's DOM
const CHART_POINTS = 60;

const $ = (id) => document.getElementById(id);
const state = {
  me: null, ws: null, req: 1, waiting: new Map(), view: "agents", ended: false,
  agents: [], stats: null, series: { messages: [], delivered: [], queued: [], unread: [] },
  inbox: new Map(), retry: 500,
};

function showLogin(why) {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = why || "";
  document.title = "switchboard — log in";
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("me").textContent = state.me.agent;
  $("me-compose").textContent = state.me.agent;
  $("node").textContent = state.me.node;
  document.title = "switchboard — " + state.me.node;
  show(state.view);
}

async function start() {
  const m = /[#&]code=([0-9A-Za-z_-]+)/.exec(location.hash);
  let r;
  if (m) {
    // The code works once: take it out of the address bar and the history at once.
    history.replaceState(null, "", location.pathname);
    r = await fetch("/dashboard/login", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ code: m[1] }),
    });
  } else {
    r = await fetch("/dashboard/session", { credentials: "same-origin" });
  }
  if (!r.ok) {
    const why = await r.json().catch(() => ({}));
    return showLogin(m ? why.error || "login refused" : "");
  }
  state.me = await r.json();
  showApp();
  connect();
}

function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify({ op: "dashboard", csrf: state.me.csrf }));
  ws.onmessage = (e) => {
    let f;
    try { f = JSON.parse(e.data); } catch { return; }
    on(f);
  };
  ws.onclose = async () => {
    if (state.ws !== ws) return;
    state.ws = null;
    setConn("down", "disconnected");
    for (const cb of state.waiting.values()) cb({ op: "error", message: "the connection to the node was lost" });
    state.waiting.clear();
    if (state.ended) return;
    // Back again once the node answers; a session that has ended shows the login.
    setTimeout(async () => {
      const r = await fetch("/dashboard/session", { credentials: "same-origin" }).catch(() => null);
      if (r && r.status === 401) return showLogin("The session has ended.");
      if (r && r.ok) state.me = await r.json();
      state.retry = Math.min(state.retry * 2, 5000);
      connect();
    }, state.retry);
  };
}

function setConn(cls, text) {
  const c = $("conn");
  c.className = "conn " + cls;
  c.textContent = text;
}

function request(frame, cb) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    cb({ op: "error", message: "not connected to the node" });
    return;
  }
  const req = state.req++;
  state.waiting.set(req, cb);
  state.ws.send(JSON.stringify({ ...frame, req }));
}

function on(f) {
  if (f.req !== undefined && state.waiting.has(f.req)) {
    const cb = state.waiting.get(f.req);
    state.waiting.delete(f.req);
    return cb(f);
  }
  switch (f.op) {
    case "welcome":
      state.retry = 500;
      setConn("live", "live");
      sendFilter();
      loadInbox();
      if (state.view === "topics") loadTopics();
      break;
    case "stream": return onStream(f);
    case "agents": return onAgents(f.agents);
    case "stats": return onStats(f);
    case "msg": return onMail(f.message);
    case "ended":
      state.ended = true;
      if (state.ws) state.ws.close();
      return showLogin(f.reason);
    case "error":
      if (f.code === "unauthorized") { state.ended = true; return showLogin("The session has ended."); }
      setConn("down", f.message);
      break;
  }
}

// ---- views -------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("active", s.id === "view-" + view);
  if (view === "mesh") loadMesh();
  if (view === "topics") loadTopics();
}

const acts = {
  thread: (m) => openThread(m.id),
  reply: (m) => replyTo(m),
};

function onStream(f) {
  const ol = $("stream");
  if (f.reset) ol.replaceChildren();
  if ($("pause").checked && !f.reset) return;
  const frag = document.createDocumentFragment();
  for (let i = f.rows.length - 1; i >= 0; i--) frag.append(V.message(f.rows[i], acts, { fresh: !f.reset }));
  ol.prepend(frag);
  while (ol.children.length > STREAM_MAX) ol.lastChild.remove();
  const info = f.skipped ? f.skipped + " more arrived too fast to show; " : "";
  $("stream-info").textContent = info + "showing the latest " + ol.children.length + " (at most " + STREAM_MAX + ")";
}

function onAgents(agents) {
  state.agents = agents;
  V.agents($("agents").tBodies[0], agents, (name) => {
    $("filters").elements.agent.value = name;
    sendFilter();
    show("stream");
  });
  $("agents-empty").hidden = agents.length > 0;
  const names = $("names");
  names.replaceChildren(...agents.map((a) => V.el("option", { value: a.name })), V.el("option", { value: "*" }));
}

function rate(now, prev, key) {
  const dt = (now.at_ms - prev.at_ms) / 1000;
  return dt > 0 ? Math.max(0, (now[key] - prev[key]) / dt) : 0;
}

function onStats(s) {
  const prev = state.stats;
  state.stats = s;
  if (!prev) return;
  const push = (k, v) => { const a = state.series[k]; a.push(v); if (a.length > CHART_POINTS) a.shift(); };
  const msgs = rate(s, prev, "accepted") + rate(s, prev, "replicated");
  push("messages", msgs);
  push("delivered", rate(s, prev, "delivered"));
  push("queued", rate(s, prev, "queued"));
  push("unread", s.unread);
  if (state.view !== "rates") return;
  const colors = { messages: "#1f4e79", delivered: "#1d7a46", queued: "#a15c00", unread: "#b3261e" };
  for (const k of Object.keys(state.series)) {
    V.chart($("chart-" + k), state.series[k], colors[k], CHART_POINTS);
    const last = state.series[k][state.series[k].length - 1];
    $("now-" + k).textContent = String(Math.round(last * 10) / 10);
  }
}

function sendFilter() {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  const e = $("filters").elements;
  state.ws.send(JSON.stringify({
    op: "filter", agent: e.agent.value, topic: e.topic.value, thread: e.thread.value,
    type: e.type.value, priority: e.priority.value,
  }));
}

function openThread(id) {
  show("thread");
  $("thread-info").textContent = "Loading…";
  request({ op: "thread", id }, (f) => {
    if (f.op !== "messages") { $("thread-info").textContent = f.message; return; }
    $("thread-info").textContent = "Thread " + id + " — " + f.messages.length + " message(s)";
    V.list($("thread"), f.messages, acts);
  });
}

function loadTopics() {
  request({ op: "topics" }, (f) => {
    if (f.op !== "topics") return;
    V.topics($("topics").tBodies[0], f.topics);
    $("topics-empty").hidden = f.topics.length > 0;
  });
}

async function loadMesh() {
  const r = await fetch("/health", { credentials: "same-origin" }).catch(() => null);
  if (!r || !r.ok) return;
  const h = await r.json();
  V.facts($("mesh-self"), [
    ["node", h.node_id], ["status", h.status], ["version", h.version],
    ["uptime", h.uptime_seconds + " s"], ["agents online", h.agents_online],
    ["connections", h.connections], ["instance", h.instance],
    ["TLS fingerprint (SHA-256)", h.tls ? h.tls.fingerprint_sha256 : "no TLS"],
    ["store", h.store ? h.store.messages + " messages, " + h.store.bytes + " bytes" : ""],
    ["conflicts", (h.conflicts || []).map((c) => c.node + " claimed by " + c.claimant).join("; ")],
  ]);
  const nodes = h.nodes || [];
  V.mesh($("mesh").tBodies[0], nodes);
  $("mesh-empty").hidden = nodes.length > 0;
}

// ---- the person's own mail ---------------------------------------------------------------

function renderInbox() {
  const all = [...state.inbox.values()].sort((a, b) => (a.id < b.id ? 1 : -1));
  const unread = all.filter((m) => !m.read).length;
  $("inbox-count").textContent = unread ? String(unread) : "";
  $("inbox-info").textContent = all.length ? unread + " unread" : "No mail for " + state.me.agent + ".";
  V.list($("inbox"), all, { ...acts, read: (m) => markRead([m.id]) }, (m) => ({ unread: !m.read }));
}

function loadInbox() {
  request({ op: "inbox", unread_only: true, limit: 200 }, (f) => {
    if (f.op !== "inbox") return;
    for (const m of f.messages) state.inbox.set(m.id, m);
    renderInbox();
  });
}

function onMail(m) {
  state.inbox.set(m.id, m);
  renderInbox();
}

function markRead(ids) {
  const frame = ids ? { op: "mark_read", ids } : { op: "mark_read", all: true };
  request(frame, (f) => {
    if (f.op !== "marked") return;
    for (const m of state.inbox.values()) if (!ids || ids.includes(m.id)) m.read = true;
    renderInbox();
  });
}

// ---- writing -----------------------------------------------------------------------------

function replyTo(m) {
  const f = $("compose").elements;
  f.reply_to.value = m.id;
  f.to.value = m.topic ? "#" + m.topic : m.from === state.me.agent ? m.to : m.from;
  if (m.subject && !f.subject.value) f.subject.value = m.subject.startsWith("Re: ") ? m.subject : "Re: " + m.subject;
  $("reply-to").textContent = m.from + ": " + m.body.slice(0, 60);
  $("reply-note").hidden = false;
  f.body.focus();
}

function cancelReply() {
  $("compose").elements.reply_to.value = "";
  $("reply-note").hidden = true;
}

function compose(e) {
  e.preventDefault();
  const form = $("compose");
  const f = form.elements;
  const status = $("compose-status");
  const frame = { op: "send", to: f.to.value.trim(), body: f.body.value, type: f.type.value, priority: f.priority.value };
  if (f.subject.value.trim()) frame.subject = f.subject.value.trim();
  if (f.reply_to.value) frame.reply_to = f.reply_to.value;
  status.className = "";
  status.textContent = "sending…";
  request(frame, (a) => {
    if (a.op === "sent") {
      status.className = "ok";
      status.textContent = "Sent (" + a.status + ", " + a.recipients + " recipient" + (a.recipients === 1 ? "" : "s") + ")";
      f.body.value = "";
      cancelReply();
    } else {
      status.className = "bad";
      status.textContent = a.message || "not sent";
    }
  });
}

async function logout() {
  state.ended = true;
  await fetch("/dashboard/logout", {
    method: "POST", credentials: "same-origin", headers: { "x-csrf-token": state.me.csrf },
  }).catch(() => null);
  if (state.ws) state.ws.close();
  showLogin("Logged out.");
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.view));
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); sendFilter(); });
  $("filters").addEventListener("reset", () => setTimeout(sendFilter, 0));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = e.target.elements.query.value;
    $("search-info").textContent = "Searching…";
    request({ op: "search", query: q, limit: 200 }, (f) => {
      if (f.op !== "messages") { $("search-info").textContent = f.message; return; }
      $("search-info").textContent = f.messages.length + " found";
      V.list($("results"), f.messages, acts);
    });
  });
  $("compose").addEventListener("submit", compose);
  $("cancel-reply").addEventListener("click", cancelReply);
  $("mark-all").addEventListener("click", () => markRead(null));
  $("logout").addEventListener("click", logout);
  setInterval(() => { if (state.view === "mesh" && !$("app").hidden) loadMesh(); }, 3000);
  setInterval(() => { if (state.view === "topics" && state.ws) loadTopics(); }, 5000);
  // A new link pasted into this tab changes only the fragment: no reload, so log in here.
  window.addEventListener("hashchange", () => {
    if (/[#&]code=/.test(location.hash)) { state.ended = false; start().catch((e) => showLogin(String(e))); }
  });
  start().catch((e) => showLogin(String(e)));
});
