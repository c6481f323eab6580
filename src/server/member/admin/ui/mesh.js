// The live mesh view: reads /mesh (every member's /status, assembled by the member that
// serves this page) and redraws the groups, members, connectors and lag every second.
"use strict";

const PERIOD_MS = 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return node;
}

function table(headers, rows) {
  return el("table", {},
    el("tr", {}, ...headers.map((h) => el("th", {}, h))),
    ...rows);
}

function connectorRows(status) {
  return (status.connectors || []).map((c) =>
    el("tr", { "data-connector": c.name, "data-peer": c.peer, "data-state": c.up ? "up" : "down" },
      el("td", {}, c.name),
      el("td", {}, "→ " + c.peer),
      el("td", { class: c.up ? "state-up" : "state-down" }, c.up ? "up" : "down"),
      el("td", {}, c.remote_demand),
      el("td", {}, c.inflight),
      el("td", {}, c.forwarded)));
}

function memberCard(m) {
  const s = m.status;
  const role = s ? s.role : "unreachable";
  const card = el("div", { class: "member", "data-member": m.member, "data-role": role });
  card.append(el("div", { class: "member-head" },
    el("span", { class: "member-name" }, m.member),
    el("span", { class: "role role-" + role, "data-field": "role" }, role),
    s ? el("span", { class: "facts" }, "epoch " + s.epoch) : null));
  if (!s) {
    card.append(el("div", { class: "facts" }, m.error || "no status"));
    return card;
  }
  const clients = s.cluster ? s.cluster.clients : 0;
  const queued = (s.destinations || []).reduce((n, d) => n + d.depth, 0);
  card.append(el("div", { class: "facts" },
    "clients ", el("span", { "data-field": "clients" }, clients),
    " · connections " + s.connections + " · queued " + queued +
    " · up " + Math.round(s.uptime_seconds) + " s"));
  if (s.drain) {
    card.append(el("div", { class: "drain", "data-field": "drain" },
      "draining: " + s.drain.phase + " (" + s.drain.clients + " clients, " +
      s.drain.queued + " queued, " + Math.round(s.drain.seconds_left) + " s left)"));
  }
  if ((s.connectors || []).length > 0) {
    card.append(table(["connector", "to", "state", "demand", "in flight", "forwarded"],
      connectorRows(s)));
  }
  if ((s.slaves || []).length > 0) {
    card.append(table(["slave", "acked", "lag"], s.slaves.map((f) =>
      el("tr", { "data-slave": f.member },
        el("td", {}, f.member), el("td", {}, f.acked), el("td", { "data-field": "lag" }, f.lag)))));
  }
  return card;
}

function render(view) {
  const groups = new Map();
  for (const m of view.members) {
    if (!groups.has(m.group)) groups.set(m.group, []);
    groups.get(m.group).push(m);
  }
  const out = [];
  let masterless = [];
  for (const [name, members] of groups) {
    const master = members.find((m) => m.status && m.status.role === "master");
    if (!master) masterless.push(name);
    const card = el("section", {
      class: "group" + (master ? "" : " no-master"),
      "data-group": name,
      "data-master": master ? master.member : "",
    }, el("h2", {}, name, el("span", { class: "facts" },
      master ? "  master " + master.member : "  no master")));
    for (const m of members) card.append(memberCard(m));
    out.push(card);
  }
  document.getElementById("groups").replaceChildren(...out);
  const any = view.members.find((m) => m.status);
  document.getElementById("mesh-name").textContent = any ? any.status.mesh : "";
  document.getElementById("from").textContent = view.from;
  const summary = document.getElementById("summary");
  summary.textContent = groups.size + " groups, " + view.members.length + " members" +
    (masterless.length ? "; no master in " + masterless.join(", ") : "; every group has a master");
  summary.className = masterless.length ? "bad" : "";
  document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
}

async function refresh() {
  try {
    const resp = await fetch("/mesh", { cache: "no-store" });
    if (!resp.ok) throw new Error("/mesh answered " + resp.status);
    render(await resp.json());
  } catch (e) {
    const summary = document.getElementById("summary");
    summary.textContent = "cannot read the mesh from this member: " + e.message;
    summary.className = "bad";
  }
  setTimeout(refresh, PERIOD_MS);
}

document.getElementById("period").textContent = PERIOD_MS / 1000 + " s";
refresh();
