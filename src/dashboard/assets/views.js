// switchboard dashboard: how things look. Every text from the node (bodies, names, subjects,
// errors) goes into the page with textContent only; nothing here ever parses markup.
"use strict";

const V = (() => {
  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function clock(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(iso).toLocaleDateString();
  }

  /** One message as a list item; `acts` has the callbacks for its buttons. */
  function message(m, acts, extra) {
    const cls = ["msg", "p-" + m.priority];
    if (extra && extra.unread) cls.push("unread");
    if (extra && extra.fresh) cls.push("new");
    const to = m.topic ? "#" + m.topic : m.to;
    const actions = el("span", { class: "actions" });
    if (acts.thread) actions.append(el("button", { type: "button", class: "link", text: "thread", onclick: () => acts.thread(m) }));
    if (acts.reply) actions.append(el("button", { type: "button", class: "link", text: "reply", onclick: () => acts.reply(m) }));
    if (acts.read && extra && extra.unread) actions.append(el("button", { type: "button", class: "link", text: "mark read", onclick: () => acts.read(m) }));
    const meta = el("div", { class: "meta" },
      el("span", { class: "who from", text: m.from }), "→",
      el("span", { class: "who to", text: to }),
      m.type !== "message" ? el("span", { class: "tag type", text: m.type }) : null,
      m.priority !== "normal" ? el("span", { class: "tag prio", text: m.priority }) : null,
      el("time", { datetime: m.created_at, title: m.created_at, text: clock(m.created_at) }),
      m.origin ? el("span", { class: "origin", text: "via " + m.origin }) : null,
      actions);
    const body = el("div", { class: "body", text: m.body + (m.truncated ? " …" : "") });
    return el("li", { class: cls.join(" "), "data-id": m.id, "data-thread": m.thread_id },
      meta, m.subject ? el("div", { class: "subject", text: m.subject }) : null, body);
  }

  /** Replaces a list's items. */
  function list(ol, messages, acts, extra) {
    ol.replaceChildren(...messages.map((m) => message(m, acts, extra && extra(m))));
  }

  function agents(tbody, agents, onPick) {
    tbody.replaceChildren(...agents.map((a) => el("tr", { "data-agent": a.name, class: a.online ? "online" : "offline" },
      el("td", {}, el("button", { type: "button", class: "link", text: a.name, onclick: () => onPick(a.name) })),
      el("td", {}, el("span", { class: a.online ? "dot on" : "dot" }), a.online ? "online" : "offline"),
      el("td", { text: a.node }),
      el("td", { text: a.status + (a.status_text ? " — " + a.status_text : "") }),
      el("td", { text: a.online ? "now" : ago(a.last_seen), title: a.last_seen || "" }),
      el("td", { class: "num", text: String(a.unread) }))));
  }

  function topics(tbody, topics) {
    tbody.replaceChildren(...topics.map((t) => el("tr", { "data-topic": t.topic },
      el("td", { text: "#" + t.topic }),
      el("td", { text: t.subscribers.join(", ") }))));
  }

  function facts(dl, pairs) {
    const items = [];
    for (const [k, v] of pairs) {
      if (v === undefined || v === null || v === "") continue;
      items.push(el("dt", { text: k }), el("dd", { text: String(v) }));
    }
    dl.replaceChildren(...items);
  }

  function mesh(tbody, nodes) {
    const n = (v) => (v === undefined || v === null ? "" : String(v));
    tbody.replaceChildren(...nodes.map((x) => el("tr", { "data-node": n(x.node) },
      el("td", { text: n(x.node) || "(not answered yet)" }),
      el("td", { class: "state-" + n(x.state), text: n(x.state) }),
      el("td", { text: x.via ? "via " + x.via : n(x.route) }),
      el("td", { text: n(x.url) }),
      el("td", { class: "num", text: n(x.lag && x.lag.to_peer) }),
      el("td", { class: "num", text: n(x.lag && x.lag.from_peer) }),
      el("td", { text: x.lag && x.lag.last_applied ? ago(x.lag.last_applied) : "" }),
      el("td", { text: n(x.error) }))));
  }

  /** A small line chart of `points` (newest last, at most `slots`) on a canvas. */
  function chart(canvas, points, color, slots) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const max = Math.max(1, ...points);
    ctx.strokeStyle = "#d9dee6";
    ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
    ctx.fillStyle = "#677489";
    ctx.font = "10px system-ui";
    ctx.fillText(String(Math.round(max)), 2, 10);
    if (points.length < 2) return;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    // Fixed slots, newest at the right edge: the chart scrolls left as time passes.
    const step = w / (slots - 1);
    const x0 = w - (points.length - 1) * step;
    points.forEach((p, i) => {
      const y = h - 2 - (p / max) * (h - 14);
      if (i === 0) ctx.moveTo(x0, y); else ctx.lineTo(x0 + i * step, y);
    });
    ctx.stroke();
  }

  return { el, message, list, agents, topics, facts, mesh, chart, ago };
})();
