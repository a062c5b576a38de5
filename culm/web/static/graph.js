// culm console: the pipeline page — the graph laid out by dagre, coloured by live state, and the node panel.
"use strict";

(function () {
  const el = culm.el;
  const SVG = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    return n;
  };
  const GATEWAY = { ExclusiveGateway: "×", ParallelGateway: "+", ConditionalParallelGateway: "◇", ConvergeGateway: "⊕" };

  // Every node of a tree (and of the subprocesses in it), by id, with the tree that holds it; and
  // every flow, by id, into ``flows`` (a gateway's skip form names where each of its flows leads).
  function indexTree(tree, parent, out, flows) {
    const nodes = [tree.start_event, tree.end_event, ...Object.values(tree.activities || {}),
      ...Object.values(tree.gateways || {})].filter(Boolean);
    for (const n of nodes) {
      out[n.id] = { node: n, parent };
      if (n.type === "SubProcess" && n.pipeline) indexTree(n.pipeline, n.id, out, flows);
    }
    for (const [key, f] of Object.entries(tree.flows || {})) flows[f.id || key] = f;
    return out;
  }

  // The boxes and flows of ``tree``, with the subprocesses in ``expanded`` opened in place as clusters.
  function collect(tree, expanded) {
    const boxes = {}, flows = [], entry = {}, exit = {};
    function add(t, parent) {
      const nodes = [t.start_event, t.end_event, ...Object.values(t.activities || {}), ...Object.values(t.gateways || {})]
        .filter(Boolean);
      for (const n of nodes) {
        if (n.type === "SubProcess" && n.pipeline && expanded.has(n.id)) {
          boxes[n.id] = { cluster: true, node: n, parent };
          add(n.pipeline, n.id);
          entry[n.id] = n.pipeline.start_event.id;
          exit[n.id] = n.pipeline.end_event.id;
          continue;
        }
        const event = /Event$/.test(n.type), gateway = n.type in GATEWAY;
        const label = n.name || (n.component && n.component.code) || n.type;
        boxes[n.id] = { node: n, label, parent, height: event ? 36 : gateway ? 44 : 40,
          width: event ? 36 : gateway ? 44 : Math.min(200, Math.max(110, label.length * 7 + 20)) };
      }
      for (const [key, f] of Object.entries(t.flows || {})) flows.push({ v: f.source, w: f.target, name: f.id || key });
    }
    add(tree, null);
    // Flows into and out of an opened subprocess join its start and end events (nested ones too).
    const follow = (map, id) => { while (map[id]) id = map[id]; return id; };
    for (const f of flows) { f.v = follow(exit, f.v); f.w = follow(entry, f.w); }
    return { boxes, flows };
  }

  // Runs of boxes with one flow in and one out (the bulk of a big pipeline) go to dagre as one wide
  // box each and are placed in a row inside it afterwards: dagre's time grows with the boxes it
  // orders, and it would lay such a run out in a row anyway.
  function chains(boxes, flows) {
    const ins = {}, outs = {};
    for (const f of flows) { (outs[f.v] = outs[f.v] || []).push(f.w); (ins[f.w] = ins[f.w] || []).push(f.v); }
    const linear = (id) => boxes[id] && !boxes[id].cluster && (ins[id] || []).length === 1 && (outs[id] || []).length === 1;
    const member = {}, runs = {};
    for (const id of Object.keys(boxes)) {
      if (!linear(id)) continue;
      const before = ins[id][0];
      if (linear(before) && boxes[before].parent === boxes[id].parent) continue; // not the head of a run
      const run = [id];
      let next = outs[id][0];
      while (linear(next) && boxes[next].parent === boxes[id].parent && !run.includes(next)) { run.push(next); next = outs[next][0]; }
      if (run.length < 2) continue;
      runs["run:" + id] = run;
      for (const m of run) member[m] = "run:" + id;
    }
    return { member, runs };
  }

  function layout(tree, expanded) {
    const { boxes, flows } = collect(tree, expanded);
    const big = Object.keys(boxes).length > 300;
    const ranksep = big ? 28 : 40;
    const { member, runs } = chains(boxes, flows);
    // A name written under an event or a gateway is wider than its shape: the margin leaves room
    // for it, or the start event's name was cut off at the graph's left edge.
    const under = Object.values(boxes).filter((b) => !b.cluster && (/Event$/.test(b.node.type) || b.node.type in GATEWAY));
    const overhang = Math.max(0, ...under.map((b) => Math.min(24, (b.node.name || "").length) * 3.3 - b.width / 2));
    const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
    g.setGraph({ rankdir: "LR", nodesep: big ? 12 : 24, ranksep, marginx: 16 + Math.ceil(overhang), marginy: 16,
      ranker: big ? "longest-path" : "network-simplex" });
    for (const [id, box] of Object.entries(boxes)) if (!member[id]) g.setNode(id, box.cluster ? {} : { width: box.width, height: box.height });
    for (const [id, run] of Object.entries(runs)) {
      g.setNode(id, { width: run.reduce((w, m) => w + boxes[m].width, 0) + ranksep * (run.length - 1),
        height: Math.max(...run.map((m) => boxes[m].height)) });
    }
    for (const [id, box] of Object.entries(boxes)) if (box.parent) g.setParent(member[id] || id, box.parent);
    const inner = [];
    for (const f of flows) {
      const v = member[f.v] || f.v, w = member[f.w] || f.w;
      if (v === w) inner.push(f); else g.setEdge(v, w, {}, f.name);
    }
    dagre.layout(g);
    const placed = {};
    for (const [id, box] of Object.entries(boxes)) if (!member[id]) placed[id] = { ...box, ...g.node(id) };
    for (const [id, run] of Object.entries(runs)) {
      const at = g.node(id);
      let left = at.x - at.width / 2;
      for (const m of run) {
        placed[m] = { ...boxes[m], x: left + boxes[m].width / 2, y: at.y };
        left += boxes[m].width + ranksep;
      }
    }
    const edges = g.edges().map((e) => ({ name: e.name, points: g.edge(e).points || [] }));
    for (const f of inner) {
      const a = placed[f.v], b = placed[f.w];
      edges.push({ name: f.name, points: [{ x: a.x + a.width / 2, y: a.y }, { x: b.x - b.width / 2, y: b.y }] });
    }
    const size = g.graph();
    return { width: size.width, height: size.height, boxes: placed, edges };
  }

  function draw(laid, states, onSelect, onToggle) {
    const root = svg("svg", { class: "graph", id: "graph", width: Math.ceil(laid.width), height: Math.ceil(laid.height) });
    const clusters = svg("g"), edges = svg("g"), nodes = svg("g");
    root.append(clusters, edges, nodes);
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" });
    marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9ca3af" }));
    defs.append(marker);
    root.append(defs);
    for (const e of laid.edges) {
      const pts = e.points;
      edges.append(svg("path", { class: "edge", "marker-end": "url(#arrow)", "data-flow": e.name || "",
        d: pts.map((p, i) => (i ? "L" : "M") + p.x.toFixed(1) + "," + p.y.toFixed(1)).join(" ") }));
    }
    const byId = {};
    for (const [id, d] of Object.entries(laid.boxes)) {
      if (d.cluster) {
        const box = svg("g", { class: "cluster-box", "data-node-id": id });
        box.append(svg("rect", { class: "cluster", x: d.x - d.width / 2, y: d.y - d.height / 2, width: d.width, height: d.height, rx: 6 }));
        const t = svg("text", { x: d.x - d.width / 2 + 18, y: d.y - d.height / 2 + 12 });
        t.textContent = culm.inert(d.node.name || id);
        const toggle = svg("text", { class: "toggle", "data-toggle": id, x: d.x - d.width / 2 + 5, y: d.y - d.height / 2 + 12 });
        toggle.textContent = "−";
        toggle.style.pointerEvents = "all";
        toggle.addEventListener("click", () => onToggle(id));
        box.append(t, toggle);
        clusters.append(box);
        continue;
      }
      const n = d.node;
      const grp = svg("g", { class: "node", "data-node-id": id, "data-type": n.type, transform: `translate(${d.x},${d.y})` });
      let shape;
      if (/Event$/.test(n.type)) shape = svg("circle", { class: "shape", r: 17 });
      else if (n.type in GATEWAY) shape = svg("polygon", { class: "shape", points: "0,-21 21,0 0,21 -21,0" });
      else shape = svg("rect", { class: "shape", x: -d.width / 2, y: -20, width: d.width, height: 40, rx: 6 });
      grp.append(shape);
      // Shown cut (the graph would overlap), with "…" saying so; the whole name is in the tooltip
      // and in what a screen reader announces. A gateway's or an event's name goes under its shape.
      const cut = (t, max) => (t.length > max ? t.slice(0, max - 1) + "…" : t);
      const event = /Event$/.test(n.type), gateway = n.type in GATEWAY;
      const text = svg("text", { "text-anchor": "middle", y: gateway ? 5 : event ? 32 : 4, class: event ? "below" : "" });
      text.textContent = culm.inert(gateway ? GATEWAY[n.type] : event ? cut(n.name || "", 24) : cut(d.label, 28));
      grp.append(text);
      if (gateway && n.name) {
        const under = svg("text", { "text-anchor": "middle", y: 36, class: "below" });
        under.textContent = culm.inert(cut(n.name, 24));
        grp.append(under);
      }
      grp.culmName = n.name || (n.component && n.component.code) || id;
      if (n.type === "SubProcess") {
        const toggle = svg("text", { class: "toggle", "data-toggle": id, x: -d.width / 2 + 4, y: -8 });
        toggle.textContent = "+";
        toggle.style.pointerEvents = "all";
        toggle.addEventListener("click", (ev) => { ev.stopPropagation(); onToggle(id); });
        grp.append(toggle);
      }
      const title = svg("title");
      grp.append(title);
      grp.addEventListener("click", () => onSelect(id));
      // Keyboard: Tab reaches every node, Enter or Space opens its panel.
      grp.setAttribute("tabindex", "0");
      grp.setAttribute("role", "button");
      grp.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onSelect(id, false, true); }
        else if ((ev.key === "+" || ev.key === "-") && n.type === "SubProcess") { ev.preventDefault(); onToggle(id); }
      });
      nodes.append(grp);
      byId[id] = grp;
      paint(grp, states[id]);
    }
    return { root, byId };
  }

  // A pause an operator set on a node no branch has reached yet (SUSPENDED, but nothing stands there).
  culm.pauseAhead = (entry) => Boolean(entry && entry.wait_reason && entry.wait_reason.kind === "pause_appointed"
    && !entry.wait_reason.reached);

  function paint(grp, entry) {
    const state = entry ? entry.state : "none";
    grp.setAttribute("data-state", state);
    if (culm.pauseAhead(entry)) grp.setAttribute("data-pause", "ahead"); else grp.removeAttribute("data-pause");
    const n = grp.getAttribute("data-node-id");
    const name = grp.culmName || n;
    grp.setAttribute("aria-label", culm.inert(`${grp.getAttribute("data-type") || "node"} ${name}: `
      + (entry ? entry.state : "not reached") + (grp.getAttribute("data-type") === "SubProcess" ? " (+ or - opens or closes it)" : "")));
    const title = grp.querySelector("title");
    if (title) title.textContent = culm.inert(`${name === n ? n : name + " (" + n + ")"}: ${entry ? entry.state : "not reached"}`
      + (entry && entry.wait_reason ? " — " + entry.wait_reason.text : ""));
  }

  culm.pipelinePage = function (view, pipelineId, selected) {
    const started = performance.now();
    const page = { states: {}, tree: null, index: {}, flows: {}, expanded: new Set(), selected: selected || null, drawn: null };
    const head = el("div", { class: "pipeline-head" });
    const wrap = el("div", { id: "graph-wrap" });
    const panel = el("aside", { id: "panel", hidden: true, "aria-label": "the selected node" });
    // Escape in the panel (outside a form, which Escape closes) goes back to the node in the graph.
    panel.addEventListener("keydown", (ev) => {
      if (ev.key !== "Escape" || ev.defaultPrevented || ev.target.closest("#action-form")) return;
      const g = page.drawn && page.drawn.byId[page.selected];
      if (g) { ev.preventDefault(); g.focus(); }
    });
    view.replaceChildren(head, el("div", { class: "layout" }, wrap, panel));

    function redraw() {
      const began = performance.now();
      const laidOut = layout(page.tree, page.expanded);
      const laid = performance.now();
      page.drawn = draw(laidOut, page.states, select, toggle);
      wrap.replaceChildren(page.drawn.root);
      markSelected();
      wrap.setAttribute("data-layout-ms", String(Math.round(laid - began)));
      wrap.setAttribute("data-draw-ms", String(Math.round(performance.now() - laid)));
    }
    function toggle(id) {
      if (page.expanded.has(id)) page.expanded.delete(id); else page.expanded.add(id);
      const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#graph");
      redraw();
      const g = focused && page.drawn.byId[id];
      if (g) g.focus(); // the keyboard's place survives the redraw
    }
    function markSelected() {
      for (const g of wrap.querySelectorAll(".node.selected")) g.classList.remove("selected");
      const g = page.selected && page.drawn && page.drawn.byId[page.selected];
      if (g) g.classList.add("selected");
    }
    // ``focus``: the panel takes the keyboard once drawn (opened by Enter, or from the attention
    // line): otherwise its buttons came after every node of the graph in the Tab order.
    function select(id, reveal, focus) {
      page.selected = id;
      page.focusPanel = Boolean(focus);
      history.replaceState(null, "", "#/p/" + encodeURIComponent(pipelineId) + "/n/" + encodeURIComponent(id));
      // A node inside a closed subprocess: open the subprocesses around it first.
      let shut = false;
      for (let up = reveal && page.index[id] && page.index[id].parent; up; up = page.index[up] && page.index[up].parent) {
        if (!page.expanded.has(up)) { page.expanded.add(up); shut = true; }
      }
      if (shut) redraw();
      markSelected();
      const g = reveal && page.drawn && page.drawn.byId[id];
      if (g) g.scrollIntoView({ block: "center", inline: "center" });
      culm.showPanel(panel, page, id, refreshStates);
    }
    function renderHead() {
      const root = page.states[pipelineId];
      const actions = el("span", { class: "actions", id: "pipeline-actions" });
      if (culm.canOperate() && root) {
        const act = (label, op, cls) => el("button", { class: cls, "data-action": op, text: label, onclick: async () => {
          // A revoke is for good: ask first.
          if (op === "revoke" && !window.confirm(`Revoke pipeline ${name()}? It stops for good: `
            + "it cannot be resumed, and its nodes cannot be retried or skipped.")) return;
          try { await culm.api(`/api/v1/pipelines/${encodeURIComponent(pipelineId)}/${op}`, { method: "POST" });
            culm.toast(label + ": accepted"); refreshStates(); } catch (e) { if (e.status !== 401) culm.toast(label + " refused: " + e.message, true); } } });
        if (root.state === "RUNNING") actions.append(act("Pause", "pause"), act("Revoke", "revoke", "danger"));
        if (root.state === "SUSPENDED") actions.append(act("Resume", "resume", "primary"), act("Revoke", "revoke", "danger"));
      }
      head.replaceChildren(el("a", { href: "#/", text: "‹ Pipelines" }),
        el("h2", { class: "clamp", title: culm.inert(name()), text: name() }), page.tree && page.tree.name ? el("span", { class: "muted", text: pipelineId }) : "", // (DOM's replaceChildren writes null as "null")
        el("span", { id: "pipeline-state" }, culm.badge(root && root.state)),
        // Why the pipeline itself waits (paused by an operator, stalled): the engine's wait reason.
        root && root.wait_reason ? el("span", { id: "pipeline-wait", class: "muted", text: culm.inert(root.wait_reason.text) }) : "",
        actions,
        el("span", { class: "legend", title: "what the colours of the graph mean" }, el("span", { class: "muted", text: "colours:" }),
          ["RUNNING", "FINISHED", "FAILED", "SUSPENDED"].map((s) => culm.badge(s)),
          el("span", { class: "badge pause-ahead", title: "an operator set a pause on this node before any branch reached it",
            text: "pause set ahead" })), attention());
    }
    const name = () => (page.tree && page.tree.name) || pipelineId;
    // The nodes that wait for someone (failed, waiting for a callback, stopped at a pause), each a
    // link that opens its panel: in a big graph they may be far off screen. Inside a revoked
    // pipeline no one can move them (the engine refuses every node command there): none is listed.
    function attention() {
      const root = page.states[pipelineId];
      if (root && root.state === "REVOKED") return "";
      const waiting = Object.entries(page.states).filter(([id, e]) => id !== pipelineId && page.index[id]
        && !(e.wait_reason && e.wait_reason.revoked)
        && (e.state === "FAILED" || (e.wait_reason && ["callback", "pause_appointed"].includes(e.wait_reason.kind))));
      if (!waiting.length) return ""; // not null: replaceChildren writes it as the text "null"
      const what = (e) => (e.state === "FAILED" ? "failed" : e.wait_reason.kind === "callback" ? "waits for a callback"
        : culm.pauseAhead(e) ? "pause set ahead" : "paused here");
      const failed = waiting.some(([, e]) => e.state === "FAILED");
      return el("div", { id: "attention", class: "attention" + (failed ? "" : " calm") },
        `${waiting.length} node(s) need attention: `,
        waiting.slice(0, 10).flatMap(([id, e], i) => [i ? ", " : "", el("a", { href: "#", "data-node": id,
          onclick: (ev) => { ev.preventDefault(); select(id, true, true); } }, (page.index[id].node.name || id) + " (" + what(e) + ")")]),
        waiting.length > 10 ? ` and ${waiting.length - 10} more` : "");
    }
    async function refreshStates() {
      const data = await culm.api("/api/v1/pipelines/" + encodeURIComponent(pipelineId));
      page.states = { [pipelineId]: data, ...data.children };
      if (page.drawn) for (const [id, grp] of Object.entries(page.drawn.byId)) paint(grp, page.states[id]);
      renderHead();
      if (page.selected && !panel.hidden) culm.showPanel(panel, page, page.selected, refreshStates);
    }
    let pending = null;
    function onChange(type, change) {
      // "hello" opens (or reopens) the stream: read everything once, so that nothing that changed
      // between the first read and the subscription is missed.
      if (type === "reload" || type === "hello") { refreshStates().catch(() => {}); return; }
      if (type !== "state") return;
      const entry = page.states[change.node_id] || { id: change.node_id };
      page.states[change.node_id] = { ...entry, state: change.to_state, version: change.version, loop: change.loop };
      const grp = page.drawn && page.drawn.byId[change.node_id];
      if (grp) paint(grp, page.states[change.node_id]);
      if (change.node_id === pipelineId) renderHead();
      // Wait reasons, times and the open panel come from a full read, at most a few times a second.
      clearTimeout(pending);
      pending = setTimeout(() => refreshStates().catch(() => {}), 400);
    }
    let stop = () => {};
    (async () => {
      try {
        const [tree, states] = await Promise.all([
          culm.api("/api/v1/pipelines/" + encodeURIComponent(pipelineId) + "/tree"),
          culm.api("/api/v1/pipelines/" + encodeURIComponent(pipelineId)),
        ]);
        page.tree = tree;
        page.flows = {};
        page.index = indexTree(tree, null, {}, page.flows);
        page.states = { [pipelineId]: states, ...states.children };
        renderHead();
        redraw();
        wrap.setAttribute("data-render-ms", String(Math.round(performance.now() - started)));
        wrap.setAttribute("data-ready", "1");
        if (page.selected) select(page.selected, true);
        stop = culm.follow("?root_id=" + encodeURIComponent(pipelineId), onChange);
      } catch (e) {
        if (e.status === 401) return; // signed out: the sign-in page says why
        // The server's reason as it is when it names the pipeline ("pipeline X does not exist"), said once.
        const said = e.message.includes(pipelineId) ? e.message.charAt(0).toUpperCase() + e.message.slice(1)
          : "Cannot show pipeline " + pipelineId + ": " + e.message;
        view.replaceChildren(el("p", { class: "error", id: "page-error", text: said }),
          el("a", { href: "#/", text: "‹ Pipelines" }));
      }
    })();
    return () => { stop(); clearTimeout(pending); };
  };
})();
