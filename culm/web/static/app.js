// culm console: sign-in, routing, the pipeline list and the component catalogue.
// The token lives in sessionStorage and goes out as a bearer header; nothing uses cookies.
"use strict";

const culm = (window.culm = {});
const TOKEN_KEY = "culm.token";
const STATES = ["CREATED", "READY", "RUNNING", "SUSPENDED", "BLOCKED", "FINISHED", "FAILED", "REVOKED"];

// Text from trees and components (names, failure texts, log lines) shown as the command line shows
// it (culm._printable.inert): control characters, C1 controls and the Unicode bidirectional controls
// as \uXXXX escapes. Raw, a right-to-left override in a node's name showed the rest of the line
// reversed (a name could pass for another); a control character showed as nothing.
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
culm.inert = (text) => String(text).replace(UNSAFE, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));

culm.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = culm.inert(v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c.nodeType ? c : culm.inert(c));
  return node;
};
const el = culm.el;

culm.token = () => sessionStorage.getItem(TOKEN_KEY);
culm.me = null;

culm.headers = function () {
  const t = culm.token();
  return t ? { Authorization: "Bearer " + t } : {};
};

culm.api = async function (path, options = {}) {
  const opts = { ...options, headers: { ...culm.headers(), ...(options.headers || {}) } };
  if (opts.json !== undefined) {
    opts.body = JSON.stringify(opts.json);
    opts.headers["Content-Type"] = "application/json";
    opts.method = opts.method || "POST";
  }
  const res = await fetch(path, opts);
  if (res.status === 401 && culm.me) {
    signOut("Your token was refused; sign in again.");
  }
  if (res.status === 401 && !culm.me && path !== "/api/v1/me") {
    // Signed out (now, or by another request of the page a moment ago): the sign-in page says why.
    const gone = new Error("unauthorized");
    gone.status = 401;
    throw gone;
  }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) {
    const err = new Error((body && body.detail) || res.statusText);
    err.status = res.status;
    err.body = body;
    throw err;
  }
  return body;
};

// A short note at the bottom of the page; an error (a refused command) is red and stays longer.
culm.toast = function (text, error) {
  const t = document.getElementById("toast");
  t.textContent = culm.inert(text);
  t.classList.toggle("error", !!error);
  t.hidden = false;
  clearTimeout(culm._toastTimer);
  culm._toastTimer = setTimeout(() => (t.hidden = true), error ? 12000 : 5000);
};

culm.canOperate = () => culm.me && (culm.me.role === "operator" || culm.me.role === "admin");

// The service sends times with their offset; shown in the browser's time zone, named ("… UTC",
// "… GMT+1"), so that a time read off one screen means the same on another.
culm.fmtTime = (v) => (v ? new Date(v).toLocaleString(undefined, { timeZoneName: "short" }) : "-");
culm.badge = (state) => el("span", { class: "badge s-" + (state || "none"), text: state || "not reached" });

// Whether the live updates of the page arrive; when they stop (the service went away), the header
// says so, for the page shows what it knew then, until the stream is back.
culm.setLive = function (live) {
  document.getElementById("offline").hidden = live;
};

// Server-sent events over fetch, so the bearer header can be sent (EventSource cannot).
culm.follow = function (query, onEvent) {
  const controller = new AbortController();
  let stopped = false;
  (async function loop() {
    while (!stopped) {
      try {
        const res = await fetch("/api/v1/events" + query, { headers: culm.headers(), signal: controller.signal });
        if (res.status === 401 && culm.me) {
          signOut("Your token was refused; sign in again.");
          return;
        }
        if (!res.ok) throw new Error("events: " + res.status);
        culm.setLive(true);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let type = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) type = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (data) onEvent(type, JSON.parse(data));
          }
        }
      } catch (e) {
        if (stopped) return;
      }
      if (stopped) return;
      culm.setLive(false);
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  return () => { stopped = true; controller.abort(); };
};

// -- sign-in -----------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  culm.me = null;
  showSignIn(message);
}

function showSignIn(message) {
  stopView();
  culm.setLive(true);
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("whoami").textContent = "";
  const input = el("input", { id: "token", type: "password", placeholder: "culm_…", autocomplete: "off" });
  const error = el("p", { class: "error", id: "signin-error", text: message || "" });
  const form = el("form", { class: "signin", id: "signin" },
    el("h2", { text: "Sign in" }),
    el("p", { class: "muted", text: "Paste an API token (culm token create --role viewer|operator|admin). "
      + "It is kept in this tab's session storage only." }),
    input, error, el("button", { class: "primary", type: "submit", text: "Sign in" }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await start();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = e.status === 401 ? "That token is unknown or revoked." : culm.inert(e.message || e);
    }
  });
  document.getElementById("view").replaceChildren(form);
  input.focus();
}

async function start() {
  culm.me = await culm.api("/api/v1/me");
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = culm.me.id === "no-auth";
  document.getElementById("whoami").textContent = culm.inert(culm.me.role + (culm.me.name ? " · " + culm.me.name : ""));
  route();
}

// -- routing -----------------------------------------------------------------------------------

let stopCurrent = null;
function stopView() {
  if (stopCurrent) stopCurrent();
  stopCurrent = null;
}

function route() {
  if (!culm.me) return;
  stopView();
  const hash = location.hash || "#/";
  const view = document.getElementById("view");
  let m;
  if ((m = hash.match(/^#\/p\/([^/?]+)(?:\/n\/([^/?]+))?/))) {
    stopCurrent = culm.pipelinePage(view, decodeURIComponent(m[1]), m[2] && decodeURIComponent(m[2]));
  } else if (hash.startsWith("#/components")) {
    stopCurrent = componentsPage(view);
  } else {
    stopCurrent = listPage(view, new URLSearchParams(hash.split("?")[1] || ""));
  }
}

// -- pipeline list -----------------------------------------------------------------------------

function listPage(view, params) {
  const limit = 25;
  const offset = Number(params.get("offset") || 0);
  const state = params.get("state") || "";
  const name = params.get("name") || "";
  const after = params.get("after") || "";
  const before = params.get("before") || "";
  const go = (changes) => {
    const next = new URLSearchParams({ state, name, after, before, offset: 0, ...changes });
    for (const [k, v] of [...next]) if (!v || v === "0") next.delete(k);
    location.hash = "#/?" + next.toString();
  };
  const stateSel = el("select", { id: "f-state", "aria-label": "state", onchange: () => go({ state: stateSel.value }) },
    el("option", { value: "", text: "any state" }), STATES.map((s) => el("option", { value: s, text: s, selected: s === state })));
  const nameIn = el("input", { id: "f-name", placeholder: "name contains", "aria-label": "name contains", value: name });
  const afterIn = el("input", { id: "f-after", type: "date", value: after, title: "created on or after" });
  const beforeIn = el("input", { id: "f-before", type: "date", value: before, title: "created before" });
  const filters = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault();
      go({ name: nameIn.value, after: afterIn.value, before: beforeIn.value }); } },
    stateSel, nameIn, el("label", {}, "from ", afterIn), el("label", {}, "before ", beforeIn),
    el("button", { type: "submit", text: "Filter" }));
  const counts = el("div", { class: "counts", id: "counts" });
  const table = el("table", { id: "pipelines" });
  const pager = el("div", { class: "pager" });
  view.replaceChildren(el("h2", { text: "Pipelines" }), filters, counts, table, pager);

  async function load() {
    const q = new URLSearchParams({ limit, offset });
    if (state) q.set("state", state);
    if (name) q.set("name", name);
    // A day picked is a day of the browser's time zone, the one the list's times are shown in
    // ("2026-12-07" alone would be read as midnight UTC).
    if (after) q.set("created_after", new Date(after + "T00:00").toISOString());
    if (before) q.set("created_before", new Date(before + "T00:00").toISOString());
    const data = await culm.api("/api/v1/pipelines?" + q.toString());
    // A RUNNING pipeline whose nodes failed or wait for a callback: those nodes by name (the id
    // when nameless; each "name (id)" in the tooltip, with the engine's wait reason, culm.core.waits:
    // the id is what `culm retry` or `culm callback` takes).
    const cut = (t) => (t.length > 60 ? t.slice(0, 60) + "…" : t); // names have no length limit
    const named = (n) => cut(n.name || n.node_id);
    const some = (nodes, total) => nodes.slice(0, 3).map(named).join(", ") + (total > 3 ? ` and ${total - 3} more` : "");
    const both = (n) => (n.name ? `${cut(n.name)} (${n.node_id})` : n.node_id);
    const waitingFor = (p) => (p.callback_nodes && p.callback_nodes.length ? el("span", { class: "callback-nodes",
      title: culm.inert(p.callback_nodes.map((w) => `${both(w)}: ${w.text}`).join("\n")),
      text: ` waiting for a callback at ${some(p.callback_nodes, p.callback_node_count || p.callback_nodes.length)}` }) : null);
    const failedAt = (p) => el("span", { class: "failed-nodes",
      title: culm.inert("nodes that failed and wait for an operator (retry, skip or revoke)"
        + (p.failed_node_list || []).map((n) => "\n" + both(n)).join("")),
      text: ` ${p.failed_nodes} failed node(s)` + ((p.failed_node_list || []).length
        ? `: ${some(p.failed_node_list, p.failed_nodes)}` : "") });
    const total = Object.values(data.counts).reduce((a, b) => a + b, 0);
    counts.replaceChildren(
      el("button", { type: "button", class: "chip" + (state ? "" : " active"), "aria-pressed": String(!state),
        onclick: () => go({ state: "" }), text: "all " + total }),
      ...STATES.filter((s) => data.counts[s]).map((s) => el("button", { type: "button", "aria-pressed": String(s === state),
        class: "chip s-" + s + (s === state ? " active" : ""), "data-state": s,
        onclick: () => go({ state: s }), text: s + " " + data.counts[s] })));
    table.replaceChildren(el("tr", {}, ["Name", "Id", "State", "Created", "Started", "Ended"].map((h) => el("th", { text: h }))),
      ...data.items.map((p) => el("tr", { "data-id": p.id, class: "row-link", title: "open this pipeline",
        // the whole row opens the pipeline (not only its name), unless text is being selected (to copy an id)
        onclick: (ev) => { if (!ev.target.closest("a") && !String(window.getSelection())) location.hash = "#/p/" + encodeURIComponent(p.id); } },
        el("td", { class: "name-cell" }, el("a", { href: "#/p/" + encodeURIComponent(p.id), class: "clamp",
          title: p.name ? culm.inert(p.name) : null, text: p.name || "(no name)" })),
        el("td", { class: "muted", text: p.id }), el("td", {}, culm.badge(p.state), p.failed_nodes ? failedAt(p) : null, waitingFor(p)),
        el("td", { text: culm.fmtTime(p.created_time) }), el("td", { text: culm.fmtTime(p.started_time) }),
        el("td", { text: culm.fmtTime(p.archived_time) }))));
    table.dataset.loads = String(Number(table.dataset.loads || 0) + 1); // how many reads so far (tests wait on it)
    if (!data.items.length) {
      const filtered = state || name || after || before;
      table.append(el("tr", {}, el("td", { colspan: 6, class: "muted", id: "list-empty" }, filtered
        ? ["No pipeline matches these filters. ", el("a", { href: "#/", text: "Show all pipelines" })]
        : ["No pipelines in this database yet. Start one with ", el("code", { text: "culm run TREE.json" }),
          " on the same database, or POST its tree to ", el("code", { text: "/api/v1/pipelines" }), "."])));
    }
    pager.replaceChildren(
      el("button", { text: "‹ Newer", disabled: offset === 0, onclick: () => go({ offset: Math.max(0, offset - limit) }) }),
      el("span", { class: "muted", text: `${data.total ? offset + 1 : 0}–${Math.min(offset + limit, data.total)} of ${data.total}, newest first` }),
      el("button", { text: "Older ›", disabled: offset + limit >= data.total, onclick: () => go({ offset: offset + limit }) }));
  }
  let timer = null;
  const stop = culm.follow("", () => { clearTimeout(timer); timer = setTimeout(() => load().catch(() => {}), 300); });
  load().catch((e) => e.status !== 401 && culm.toast("Could not load pipelines: " + e.message, true));
  return () => { stop(); clearTimeout(timer); };
}

// -- component catalogue -----------------------------------------------------------------------

function componentsPage(view) {
  view.replaceChildren(el("h2", { text: "Components" }), el("p", { class: "muted", text: "Loading…" }));
  culm.api("/api/v1/components").then((items) => {
    culm.components = items;
    // A component that declares no inputs (or outputs) says so: an empty cell read as "not loaded".
    const fmt = (list) => (!list.length ? el("span", { class: "muted", text: "none declared" }) : el("ul", {}, list.map((i) => el("li", {},
      el("code", { text: i.key }), " ", el("span", { class: "muted", text: `${i.type || (i.schema && i.schema.type) || ""} ${i.name || ""}` })))));
    view.replaceChildren(el("h2", { text: "Components" }), el("table", { id: "components" },
      el("tr", {}, ["Code", "Name", "Version", "Group", "Kind", "Inputs", "Outputs"].map((h) => el("th", { text: h }))),
      items.map((c) => el("tr", { "data-code": c.code },
        el("td", {}, el("code", { text: c.code })), el("td", { text: c.name }), el("td", { text: c.version }),
        el("td", { text: c.group }), el("td", { text: c.callback ? "callback" : c.need_schedule ? "polling" : "once" }),
        el("td", {}, fmt(c.inputs_format)), el("td", {}, fmt(c.outputs_format))))));
  }).catch((e) => e.status !== 401 && culm.toast("Could not load components: " + e.message, true));
  return null;
}

document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", route);
start().catch(() => showSignIn());
