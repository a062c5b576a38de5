// culm console: the node panel — definition, rendered inputs, outputs, ex_data, history, logs, and
// exactly the control buttons the node's type and state allow (none for a viewer).
"use strict";

(function () {
  const el = culm.el;
  const RESERVED = new Set(["_loop", "_inner_loop", "_result", "ex_data"]);
  const json = (v) => JSON.stringify(v, null, 2);

  // [label, endpoint, form] for each command the node's type and state allow.
  culm.actionsFor = function (node, entry) {
    const s = entry ? entry.state : null;
    const out = [];
    if (node.type === "ServiceActivity") {
      if (s === "FAILED" && node.retryable !== false) out.push(["Retry", "retry", "inputs"]);
      if (s === "FAILED" && node.skippable !== false) out.push(["Skip", "skip"]);
      if (s === "RUNNING") {
        if (entry.wait_reason && entry.wait_reason.kind === "callback") out.push(["Callback", "callback", "callback"]);
        out.push(["Force fail", "forced-fail", "exdata"]);
      }
      if (s === null || s === "READY") out.push(["Pause here", "pause"]);
      if (s === "SUSPENDED") out.push([culm.pauseAhead(entry) ? "Remove the pause" : "Resume", "resume"]);
    } else if (node.type === "SubProcess") {
      if (s === "FAILED") out.push(["Retry subprocess", "retry-subprocess"]);
      if (s === "RUNNING") out.push(["Pause subprocess", "pipeline:pause"]);
      if (s === "SUSPENDED") out.push(["Resume subprocess", "pipeline:resume"]);
    } else if (node.type === "ExclusiveGateway" && s === "FAILED") {
      out.push(["Skip along…", "skip-exclusive-gateway", "flow"]);
    } else if (node.type === "ConditionalParallelGateway" && s === "FAILED") {
      out.push(["Skip along…", "skip-conditional-parallel-gateway", "flows"]);
    } else if (node.type === "EmptyStartEvent" && s === "FAILED") {
      out.push(["Skip", "skip"]);
    }
    return out;
  };

  function section(title, body) {
    const part = document.createDocumentFragment();
    part.append(el("h4", { text: title }), body);
    return part;
  }

  function actionForm(kind, op, node, info, submit) {
    const box = el("form", { class: "action-form", id: "action-form", "data-op": op });
    let read;
    if (kind === "inputs") {
      const inputs = {};
      for (const [k, v] of Object.entries((info.execution_data && info.execution_data.inputs) || {})) {
        if (!RESERVED.has(k)) inputs[k] = v;
      }
      const area = el("textarea", { id: "retry-inputs", rows: 6 });
      area.value = json(inputs);
      box.append(el("label", { text: "New inputs (JSON; replace the old ones)" }), area);
      read = () => ({ inputs: JSON.parse(area.value || "{}") });
    } else if (kind === "callback") {
      const area = el("textarea", { id: "callback-data", rows: 4 });
      area.value = "{}";
      box.append(el("label", { text: "Callback data (JSON)" }), area);
      read = () => ({ data: JSON.parse(area.value || "{}") });
    } else if (kind === "exdata") {
      const input = el("input", { id: "ex-data", value: "forced to fail by an operator", style: "width:100%" });
      box.append(el("label", { text: "Reason (ex_data)" }), input);
      read = () => ({ ex_data: input.value });
    } else if (kind === "flow") {
      const outgoing = [].concat(node.outgoing || []);
      const sel = el("select", { id: "skip-flow" }, outgoing.map((f) => el("option", { value: f, text: f })));
      box.append(el("label", { text: "Go on along flow " }), sel);
      read = () => ({ flow_id: sel.value });
    } else if (kind === "flows") {
      const outgoing = [].concat(node.outgoing || []);
      const checks = outgoing.map((f) => el("input", { type: "checkbox", value: f, checked: true }));
      box.append(el("div", {}, outgoing.map((f, i) => el("label", {}, checks[i], " " + f + " "))));
      read = () => ({ flow_ids: checks.filter((c) => c.checked).map((c) => c.value),
        converge_gateway_id: node.converge_gateway_id });
    }
    box.append(el("div", { class: "actions" }, el("button", { class: "primary", type: "submit", id: "action-submit", text: "Send" })));
    box.addEventListener("submit", (ev) => {
      ev.preventDefault();
      let body;
      try { body = read(); } catch (e) { culm.toast("Not valid JSON: " + e.message, true); return; }
      submit(body);
    });
    return box;
  }

  culm.showPanel = async function (panel, page, nodeId, refresh) {
    const ref = page.index[nodeId];
    const node = ref ? ref.node : { id: nodeId, type: "Pipeline" };
    const entry = page.states[nodeId];
    // A live change elsewhere redraws the panel; an operator typing into a form of this node
    // keeps it (and the text and focus) as long as the node's state still allows its command.
    const open = panel.dataset.node === nodeId && panel.querySelector("#action-form");
    if (open && culm.canOperate() && culm.actionsFor(node, entry).some(([, op]) => op === open.dataset.op)) {
      panel.querySelector("#panel-state").replaceChildren(culm.badge(entry && entry.state));
      const waiting = panel.querySelector("#wait-reason");
      if (waiting && entry && entry.wait_reason) waiting.textContent = culm.inert(entry.wait_reason.text);
      updated(panel);
      return;
    }
    let info;
    try {
      info = await culm.api("/api/v1/nodes/" + encodeURIComponent(nodeId));
    } catch (e) {
      info = { execution_data: null, histories: [], logs: "", data: {} };
    }
    if (page.selected !== nodeId) return; // another node was picked meanwhile
    const outputs = (info.execution_data && info.execution_data.outputs) || {};
    const inputs = (info.execution_data && info.execution_data.inputs) || {};
    const shown = {};
    for (const [k, v] of Object.entries(outputs)) if (k !== "ex_data") shown[k] = v;
    const actions = el("div", { class: "actions", id: "node-actions" });
    const formSlot = el("div");
    if (culm.canOperate()) {
      for (const [label, op, form] of culm.actionsFor(node, entry)) {
        const send = async (body) => {
          const url = op.startsWith("pipeline:")
            ? `/api/v1/pipelines/${encodeURIComponent(nodeId)}/${op.slice(9)}`
            : `/api/v1/nodes/${encodeURIComponent(nodeId)}/${op}`;
          try {
            await culm.api(url, body === undefined ? { method: "POST" } : { json: body });
            culm.toast(label + ": done");
            formSlot.replaceChildren();
            refresh();
          } catch (e) {
            if (e.status !== 401) culm.toast(label + " refused: " + e.message, true);
          }
        };
        actions.append(el("button", { "data-action": op, text: label,
          onclick: () => (form ? formSlot.replaceChildren(actionForm(form, op, node, info, send)) : send()) }));
      }
    }
    if (!culm.canOperate() && culm.actionsFor(node, entry).length) {
      actions.append(el("span", { class: "muted", id: "read-only", text: "Your token has the " + culm.me.role
        + " role: it may look but not act; " + culm.actionsFor(node, entry).map(([label]) => label.toLowerCase()).join(", ")
        + " need an operator or admin token." }));
    }
    const reason = entry && entry.wait_reason;
    panel.replaceChildren(...[
      el("h3", { id: "panel-title", text: node.name || nodeId }),
      el("table", { class: "kv" },
        el("tr", {}, el("td", { text: "id" }), el("td", {}, el("code", { text: nodeId }))),
        el("tr", {}, el("td", { text: "type" }), el("td", { text: node.type + (node.component ? " · " + node.component.code : "") })),
        el("tr", {}, el("td", { text: "state" }), el("td", { id: "panel-state" }, culm.badge(entry && entry.state))),
        entry ? el("tr", {}, el("td", { text: "loop / retry" }), el("td", { text: `${entry.loop} / ${entry.retry}${entry.skip ? " (skipped)" : ""}` })) : null,
        reason ? el("tr", {}, el("td", { text: "waiting" }), el("td", { id: "wait-reason", text: reason.text })) : null,
        entry ? el("tr", {}, el("td", { text: "started" }), el("td", { text: culm.fmtTime(entry.started_time) })) : null,
        entry ? el("tr", {}, el("td", { text: "ended" }), el("td", { text: culm.fmtTime(entry.archived_time) })) : null),
      actions, formSlot,
      outputs.ex_data ? section("Error (ex_data)", el("pre", { class: "ex-data", id: "ex-data-view", text: String(outputs.ex_data) })) : null,
      section("Inputs", el("pre", { id: "inputs-view", text: json(inputs) })),
      section("Outputs", el("pre", { id: "outputs-view", text: json(shown) })),
      section("History", info.histories && info.histories.length
        ? el("table", { id: "history" }, el("tr", {}, ["loop", "retry", "skip", "started", "ended", "result"].map((h) => el("th", { text: h }))),
          info.histories.map((h) => el("tr", {}, el("td", { text: h.loop }), el("td", { text: h.retry }), el("td", { text: h.skip ? "yes" : "" }),
            el("td", { text: culm.fmtTime(h.started_time) }), el("td", { text: culm.fmtTime(h.archived_time) }),
            el("td", { text: h.outputs && h.outputs.ex_data ? String(h.outputs.ex_data).split("\n").filter(Boolean).pop() : (h.outputs && h.outputs._result === false ? "failed" : "") }))))
        : el("p", { class: "muted", text: "No earlier runs." })),
      section("Logs", el("pre", { id: "logs-view", text: info.logs || "(none)" })),
      section("Definition", el("pre", { text: json(node) }))].filter(Boolean));
    panel.dataset.node = nodeId;
    panel.hidden = false;
    updated(panel);
  };

  // How many times the panel was brought up to date (pages and tests can tell a refresh happened).
  function updated(panel) {
    panel.dataset.updates = String(Number(panel.dataset.updates || 0) + 1);
  }
})();
