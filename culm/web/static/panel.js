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
      out.push(["Skip along", "skip-exclusive-gateway", "flow"]);
    } else if (node.type === "ConditionalParallelGateway" && s === "FAILED") {
      out.push(["Skip along", "skip-conditional-parallel-gateway", "flows"]);
    } else if (node.type === "EmptyStartEvent" && s === "FAILED") {
      out.push(["Skip", "skip"]);
    }
    return out;
  };

  // Whether the node lies inside a revoked pipeline (the root, or a subprocess around it, as its
  // wait reason says, or, for a node not reached yet, as the states of the subprocesses around it
  // say): the engine then refuses every node command, so the panel offers none.
  culm.revokedAround = function (page, entry, nodeId) {
    const root = page.tree && page.states[page.tree.id];
    if ((root && root.state === "REVOKED") || (entry && entry.wait_reason && entry.wait_reason.revoked)) return true;
    for (let up = page.index[nodeId] && page.index[nodeId].parent; up; up = page.index[up] && page.index[up].parent) {
      if (page.states[up] && page.states[up].state === "REVOKED") return true;
    }
    return false;
  };

  function section(title, body) {
    const part = document.createDocumentFragment();
    part.append(el("h4", { text: title }), body);
    return part;
  }

  // A value shown short (the list of changes a retry would make).
  const brief = (v) => { const t = JSON.stringify(v); return t === undefined ? String(v) : t.length > 60 ? t.slice(0, 57) + "…" : t; };
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

  // One field per input, typed as its current value: text stays text, a number must be a number,
  // true/false is a choice, anything else (lists, objects, null) is JSON checked as it is typed.
  // Returns { row, read } where read() gives { value } or { problem }.
  function inputField(key, value, index, written) {
    const id = "retry-field-" + index;
    const kind = value === null ? "json" : Array.isArray(value) ? "json" : typeof value === "string" ? "text"
      : typeof value === "number" ? "number" : typeof value === "boolean" ? "boolean" : "json";
    let field, read;
    if (kind === "boolean") {
      field = el("select", { id }, el("option", { value: "true", text: "true" }), el("option", { value: "false", text: "false" }));
      field.value = String(value);
      read = () => ({ value: field.value === "true" });
    } else if (kind === "number") {
      field = el("input", { id, type: "text", inputmode: "decimal", autocomplete: "off" });
      field.value = String(value);
      read = () => {
        const t = field.value.trim();
        return /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/.test(t) && Number.isFinite(Number(t))
          ? { value: JSON.parse(t) } : { problem: `${key}: expected a number, not ${JSON.stringify(field.value)}` };
      };
    } else if (kind === "text" && value.length <= 80 && !value.includes("\n")) {
      field = el("input", { id, type: "text", autocomplete: "off", spellcheck: "false" });
      field.value = value;
      read = () => ({ value: field.value });
    } else if (kind === "text") {
      field = el("textarea", { id, rows: Math.min(8, value.split("\n").length + 1), spellcheck: "false" });
      field.value = value;
      read = () => ({ value: field.value });
    } else {
      field = el("textarea", { id, rows: Math.min(8, json(value).split("\n").length), spellcheck: "false" });
      field.value = json(value);
      read = () => {
        try { return { value: JSON.parse(field.value) }; } catch (e) { return { problem: `${key}: not valid JSON (${e.message})` }; }
      };
    }
    field.setAttribute("data-key", key);
    field.setAttribute("data-kind", kind);
    const label = el("label", { for: id, class: "input-key", text: key });
    const hint = el("span", { class: "muted input-kind", text: kind === "json" ? "JSON" : kind });
    const row = el("div", { class: "input-row" }, label, field, hint);
    // An input the tree wrote as a template: said on a line of its own, under its field.
    return { row: written === undefined ? row : el("div", { class: "input-block" }, row, el("div", { class: "muted input-written",
      text: "from " + brief(written) + ", sent as written unless changed" })), field, read };
  }

  // The retry form: the node's inputs as fields (or as one JSON object), what would change, and a
  // Retry button that sends nothing it cannot read. Unchanged, it retries with the inputs as they
  // are (no new inputs); changed, it sends every input (a retry's inputs replace the old ones).
  // The fields show the values the last run rendered; an input left as it was is sent as written
  // in the tree (a ``${...}`` template, rendered again by the retry; a plain value kept verbatim),
  // so that changing one field does not freeze the others at what they rendered to last time.
  function retryForm(box, info) {
    const before = {};
    for (const [k, v] of Object.entries((info.execution_data && info.execution_data.inputs) || {})) {
      if (!RESERVED.has(k)) before[k] = v;
    }
    const raw = (info.data && info.data.inputs) || {};
    const templated = (k) => k in raw && raw[k].need_render !== false && !same(raw[k].value, before[k]);
    const writtenOf = (values) => Object.fromEntries(Object.keys(values).filter(templated).map((k) => [k, raw[k].value]));
    // What the retry sends for what the form holds: unchanged inputs as written.
    const toSend = (inputs) => {
      const out = {}, escape = [];
      for (const [k, v] of Object.entries(inputs)) {
        if (k in raw && k in before && same(v, before[k])) {
          out[k] = raw[k].value;
          if (raw[k].need_render === false && JSON.stringify(raw[k].value).includes("${")) escape.push(k);
        } else out[k] = v;
      }
      if (escape.length) out._escape_render_keys = [...(Array.isArray(out._escape_render_keys) ? out._escape_render_keys : []), ...escape];
      return out;
    };
    let fields = [];
    const list = el("div", { class: "input-fields", id: "retry-fields" });
    const area = el("textarea", { id: "retry-inputs", rows: 8, spellcheck: "false", hidden: true,
      "aria-label": "every input as one JSON object" });
    const asJson = el("input", { type: "checkbox", id: "retry-as-json" });
    const changes = el("div", { id: "retry-changes", class: "changes", "aria-live": "polite" });
    const build = (values) => {
      const written = writtenOf(values);
      fields = Object.entries(values).map(([k, v], i) => inputField(k, v, i, same(v, before[k]) ? written[k] : undefined));
      list.replaceChildren(...(fields.length ? fields.map((f) => f.row)
        : [el("p", { class: "muted", text: "This node has no inputs; edit as JSON to give some." })]));
    };
    build(before);
    // { inputs, problem }: what the form holds now.
    const current = (json_ = asJson.checked) => {
      if (json_) {
        let value;
        try { value = JSON.parse(area.value || "{}"); } catch (e) { return { problem: "not valid JSON: " + e.message }; }
        if (value === null || typeof value !== "object" || Array.isArray(value)) return { problem: "the inputs must be one JSON object {...}" };
        return { inputs: value };
      }
      const inputs = {};
      for (const f of fields) {
        const got = f.read();
        if (got.problem) return { problem: got.problem, field: f.field };
        inputs[f.field.getAttribute("data-key")] = got.value;
      }
      return { inputs };
    };
    const describe = () => {
      const now = current();
      if (now.problem) {
        changes.className = "changes error";
        changes.textContent = culm.inert(now.problem);
        return now;
      }
      const lines = [];
      for (const [k, v] of Object.entries(now.inputs)) {
        if (!(k in before)) lines.push(`${k}: new, ${brief(v)}`);
        else if (!same(before[k], v)) lines.push(`${k}: ${brief(before[k])} → ${brief(v)}`);
      }
      for (const k of Object.keys(before)) if (!(k in now.inputs)) lines.push(`${k}: removed`);
      changes.className = "changes";
      changes.replaceChildren(lines.length
        ? el("span", { text: "Changes: " + lines.join("; ") })
        : el("span", { class: "muted", text: "No change: Retry runs the node again with the inputs it has." }));
      return { ...now, changed: lines.length > 0 };
    };
    asJson.addEventListener("change", () => {
      // The mode being left is the one to read (the box has already changed).
      const now = current(!asJson.checked);
      if (asJson.checked) {
        // A field that cannot be read keeps the form as fields: starting the JSON from the original
        // inputs would silently drop every edit made so far.
        if (now.problem) { asJson.checked = false; describe(); if (now.field) now.field.focus(); return; }
        area.value = json(now.inputs);
      } else {
        if (now.problem) { asJson.checked = true; describe(); return; }
        build(now.inputs);
      }
      list.hidden = asJson.checked;
      area.hidden = !asJson.checked;
      describe();
    });
    box.addEventListener("input", describe);
    box.addEventListener("change", describe);
    box.append(el("p", { class: "muted form-note", text: "Retry with these inputs. Leave them as they are to retry "
        + "unchanged; a change replaces the node's inputs with all of the values below." }),
      list, area, el("label", { class: "as-json" }, asJson, " edit as JSON"), changes);
    describe();
    return () => {
      const now = describe();
      if (now.problem) {
        if (now.field) now.field.focus(); else area.focus();
        throw new Error(now.problem);
      }
      return now.changed ? { inputs: toSend(now.inputs) } : undefined;
    };
  }

  // A JSON object typed into ``area``: checked as it is typed, its problem shown under it.
  function jsonObjectArea(box, id, labelText, initial) {
    const area = el("textarea", { id, rows: 4, spellcheck: "false" });
    area.value = initial;
    const problem = el("div", { class: "changes", id: id + "-problem", "aria-live": "polite" });
    const read = () => {
      let value;
      try { value = JSON.parse(area.value || "{}"); } catch (e) { throw new Error("not valid JSON: " + e.message); }
      if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("expected one JSON object {...}");
      return value;
    };
    const check = () => {
      try { read(); problem.textContent = ""; problem.className = "changes"; } catch (e) {
        problem.textContent = culm.inert(e.message); problem.className = "changes error";
      }
    };
    area.addEventListener("input", check);
    box.append(el("label", { for: id, text: labelText }), area, problem);
    return () => {
      try { return read(); } catch (e) { check(); area.focus(); throw e; }
    };
  }

  // A gateway's outgoing flow as an operator tells it apart: where it leads and the condition on it
  // (the flow's id, which the command takes, is the option's tooltip).
  function flowText(page, node, flowId) {
    const flow = page.flows && page.flows[flowId];
    const target = flow && page.index[flow.target];
    const to = target ? target.node.name || target.node.type : flow ? flow.target : flowId;
    const condition = node.conditions && node.conditions[flowId] && node.conditions[flowId].evaluate;
    const isDefault = node.default_condition && node.default_condition.flow_id === flowId;
    return to + (condition ? ` (if ${condition})` : "") + (isDefault ? " (default)" : "");
  }

  function actionForm(kind, op, label, node, info, page, submit, close) {
    const box = el("form", { class: "action-form", id: "action-form", "data-op": op, "aria-label": label });
    let read;
    if (kind === "inputs") {
      read = retryForm(box, info);
    } else if (kind === "callback") {
      const data = jsonObjectArea(box, "callback-data", "Callback data (a JSON object)", "{}");
      read = () => ({ data: data() });
    } else if (kind === "exdata") {
      const input = el("input", { id: "ex-data", value: "forced to fail by an operator", style: "width:100%" });
      box.append(el("label", { for: "ex-data", text: "Reason (ex_data)" }), input);
      read = () => ({ ex_data: input.value });
    } else if (kind === "flow") {
      const outgoing = [].concat(node.outgoing || []);
      const sel = el("select", { id: "skip-flow" }, outgoing.map((f) => el("option", { value: f, title: f, text: flowText(page, node, f) })));
      box.append(el("label", { for: "skip-flow", text: "Go on along the flow to " }), sel);
      read = () => ({ flow_id: sel.value });
    } else if (kind === "flows") {
      const outgoing = [].concat(node.outgoing || []);
      const checks = outgoing.map((f) => el("input", { type: "checkbox", value: f, checked: true }));
      box.append(el("fieldset", { class: "skip-flows" }, el("legend", { text: "Go on along the flows to" }),
        outgoing.map((f, i) => el("label", { title: f }, checks[i], " " + flowText(page, node, f)))));
      read = () => {
        const flowIds = checks.filter((c) => c.checked).map((c) => c.value);
        if (!flowIds.length) throw new Error("choose at least one flow to go on along");
        return { flow_ids: flowIds, converge_gateway_id: node.converge_gateway_id };
      };
    }
    box.append(el("div", { class: "actions" },
      el("button", { class: "primary", type: "submit", id: "action-submit", text: label }),
      el("button", { type: "button", id: "action-cancel", text: "Cancel", onclick: close })));
    box.addEventListener("submit", (ev) => {
      ev.preventDefault();
      let body;
      try { body = read(); } catch (e) { culm.toast(label + ": " + e.message, true); return; }
      submit(body);
    });
    // Keyboard: Ctrl+Enter (or Cmd+Enter) sends from a text area, Escape closes the form.
    box.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); box.requestSubmit(); }
      if (ev.key === "Escape") { ev.preventDefault(); close(); }
    });
    setTimeout(() => { const first = box.querySelector("input:not([type=checkbox]), select, textarea:not([hidden])"); if (first) first.focus(); }, 0);
    return box;
  }

  // What each panel was last drawn from: a live change that leaves the node as it was (another
  // node moved, the stream reopened) keeps the panel, not redrawn under a reader's eyes and clicks.
  const drawnFrom = new WeakMap();

  culm.showPanel = async function (panel, page, nodeId, refresh) {
    const ref = page.index[nodeId];
    const node = ref ? ref.node : { id: nodeId, type: "Pipeline" };
    const entry = page.states[nodeId];
    const focus = page.focusPanel; // asked once, by the selection that opens the panel
    page.focusPanel = false;
    const allowed = culm.revokedAround(page, entry, nodeId) ? [] : culm.actionsFor(node, entry);
    // A live change elsewhere redraws the panel; an operator typing into a form of this node
    // keeps it (and the text and focus) as long as the node's state still allows its command.
    const keepForm = () => {
      const open = panel.dataset.node === nodeId && panel.querySelector("#action-form");
      if (!(open && culm.canOperate() && allowed.some(([, op]) => op === open.dataset.op))) return false;
      panel.querySelector("#panel-state").replaceChildren(culm.badge(entry && entry.state));
      const waiting = panel.querySelector("#wait-reason");
      if (waiting && entry && entry.wait_reason) waiting.textContent = culm.inert(entry.wait_reason.text);
      drawnFrom.delete(panel); // changed in part: the next full read draws it all
      updated(panel);
      return true;
    };
    if (keepForm()) return;
    let info;
    try {
      info = await culm.api("/api/v1/nodes/" + encodeURIComponent(nodeId));
    } catch (e) {
      // A node not reached yet is a 404 whose detail says so: shown as the panel's note.
      info = { execution_data: null, histories: [], logs: "", data: {}, problem: e.status === 401 ? "" : e.message };
    }
    if (page.selected !== nodeId) return; // another node was picked meanwhile
    // A form opened while this read was on its way (a live change came just as the operator
    // clicked Retry…) is kept too: redrawn, the panel dropped it, and the click seemed to do nothing.
    if (keepForm()) return;
    const from = JSON.stringify([nodeId, Boolean(ref), entry || null, info, culm.me && culm.me.role, allowed.map(([, op]) => op)]);
    if (!panel.hidden && panel.dataset.node === nodeId && drawnFrom.get(panel) === from) {
      if (focus) panel.querySelector("#panel-title").focus();
      updated(panel);
      return;
    }
    drawnFrom.set(panel, from);
    if (!ref && !entry && info.problem) {
      // An id that is neither a node of this tree nor the pipeline (a link mistyped or from another
      // pipeline), and that the service does not know either: say so, not a made-up panel of empty
      // inputs and a "Pipeline" definition. A node inside a subprocess the page has not drawn open
      // yet is not in the page's index a moment before it is: the service knows it.
      panel.replaceChildren(el("h3", { id: "panel-title", class: "clamp", title: culm.inert(nodeId), text: nodeId }),
        el("p", { class: "muted", id: "node-problem", text: `This pipeline has no node ${culm.inert(nodeId)}`
          + (info.problem ? ` (${culm.inert(info.problem)})` : "") + "." }));
      panel.dataset.node = nodeId;
      panel.hidden = false;
      updated(panel);
      return;
    }
    const outputs = (info.execution_data && info.execution_data.outputs) || {};
    const inputs = (info.execution_data && info.execution_data.inputs) || {};
    const shown = {};
    for (const [k, v] of Object.entries(outputs)) if (k !== "ex_data") shown[k] = v;
    const actions = el("div", { class: "actions", id: "node-actions" });
    const formSlot = el("div");
    if (culm.canOperate()) {
      for (const [label, op, form] of allowed) {
        const send = async (body) => {
          const url = op.startsWith("pipeline:")
            ? `/api/v1/pipelines/${encodeURIComponent(nodeId)}/${op.slice(9)}`
            : `/api/v1/nodes/${encodeURIComponent(nodeId)}/${op}`;
          try {
            await culm.api(url, body === undefined ? { method: "POST" } : { json: body });
            // Accepted, not "done": what follows (a retry that fails again) is for the graph to show.
            culm.toast(label + ": accepted");
            drawnFrom.delete(panel); // the refresh that follows draws the panel afresh, buttons and all
            formSlot.replaceChildren();
            refresh();
          } catch (e) {
            if (e.status !== 401) culm.toast(label + " refused: " + e.message, true);
          }
        };
        const button = el("button", { "data-action": op, text: label + (form ? "…" : ""), "aria-expanded": form ? "false" : null,
          onclick: () => {
            if (!form) { send(); return; }
            const close = () => { formSlot.replaceChildren(); button.setAttribute("aria-expanded", "false"); button.focus(); };
            formSlot.replaceChildren(actionForm(form, op, label, node, info, page, send, close));
            button.setAttribute("aria-expanded", "true");
          } });
        actions.append(button);
      }
    }
    if (!culm.canOperate() && allowed.length) {
      actions.append(el("span", { class: "muted", id: "read-only", text: "Your token has the " + culm.me.role
        + " role: it may look but not act; " + allowed.map(([label]) => label.toLowerCase()).join(", ")
        + " need an operator or admin token." }));
    }
    const reason = entry && entry.wait_reason;
    panel.replaceChildren(...[
      el("h3", { id: "panel-title", class: "clamp", tabindex: "-1", title: culm.inert(node.name || nodeId), text: node.name || nodeId }),
      el("table", { class: "kv" },
        el("tr", {}, el("td", { text: "id" }), el("td", {}, el("code", { text: nodeId }))),
        el("tr", {}, el("td", { text: "type" }), el("td", { text: node.type + (node.component ? " · " + node.component.code : "") })),
        el("tr", {}, el("td", { text: "state" }), el("td", { id: "panel-state" }, culm.badge(entry && entry.state))),
        entry ? el("tr", {}, el("td", { text: "loop / retry" }), el("td", { text: `${entry.loop} / ${entry.retry}${entry.skip ? " (skipped)" : ""}` })) : null,
        reason ? el("tr", {}, el("td", { text: "waiting" }), el("td", { id: "wait-reason", text: reason.text })) : null,
        entry ? el("tr", {}, el("td", { text: "started" }), el("td", { text: culm.fmtTime(entry.started_time) })) : null,
        entry ? el("tr", {}, el("td", { text: "ended" }), el("td", { text: culm.fmtTime(entry.archived_time) })) : null),
      info.problem ? el("p", { class: "muted", id: "node-problem", text: culm.inert(info.problem) }) : null,
      actions, formSlot,
      // A skipped node keeps the error it failed with: it is history, not its state now.
      outputs.ex_data ? section(entry && entry.skip ? "Error before the skip (ex_data, history: an operator skipped the node)"
        : "Error (ex_data)", errorView(String(outputs.ex_data)))
        // A component that returned False and set no ex_data: the service says which call did.
        : info.failure_note ? section("Error (ex_data)", el("pre", { class: "ex-data", id: "ex-data-view",
          text: culm.inert(`(no ex_data: ${info.failure_note})`) })) : null,
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
    if (focus) panel.querySelector("#panel-title").focus();
    updated(panel);
  };

  // ex_data as the engine keeps it; a Python traceback is headed by its last line (the exception),
  // which a long traceback otherwise left below the fold of its box.
  function errorView(exData) {
    const view = el("pre", { class: "ex-data", id: "ex-data-view", text: exData });
    if (!exData.startsWith("Traceback (most recent call last):")) return view;
    const last = exData.split("\n").filter((line) => line.trim()).pop();
    const part = document.createDocumentFragment();
    part.append(el("p", { class: "ex-headline", id: "ex-data-headline", text: last }), view);
    return part;
  }

  // How many times the panel was brought up to date (pages and tests can tell a refresh happened).
  function updated(panel) {
    panel.dataset.updates = String(Number(panel.dataset.updates || 0) + 1);
  }
})();
