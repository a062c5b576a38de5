"""Run: everything a handler needs about the node being executed, and the state writes it may do."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from culm.core import data as cdata
from culm.core import signals, states
from culm.core.engine import Engine
from culm.core.ports import StateFields, Unit, UserData
from culm.core.records import ENGINE_MARKERS, ContextValue, HistoryRecord, ProcessRecord, StateRecord, now
from culm.core.step import Step
from culm.data import context as dctx
from culm.errors import StoredBytesBudgetError
from culm.model.compiled import Graph, Node
from culm.model.limits import clip_ex_data


class VersionLostError(Exception):
    """The node's version changed under us (forced fail, retry, revoke): drop our result."""


@dataclass(slots=True)
class Run:
    """One node being run by one process inside one transaction."""

    engine: Engine
    step: Step
    graph: Graph
    proc: ProcessRecord
    node: Node
    state: StateRecord

    @property
    def unit(self) -> Unit:
        return self.step.unit

    @property
    def root_id(self) -> str:
        return self.graph.root_id

    @property
    def top_pipeline_id(self) -> str:
        return self.proc.stack[-1]

    # -- state writes ---------------------------------------------------------------------
    def set_state(self, to: str, fields: StateFields | None = None, *, expect: Collection[str] | None = None) -> None:
        """Version-checked write of this node's state; raises VersionLostError when stale."""
        if not self.step.set_state(self.state, to, fields, expect=expect):
            raise VersionLostError(self.node.id)

    def finish(self, *, error_ignored: bool = False, announce: bool = True) -> None:
        """FINISHED; ``announce`` sends the ``node_finish`` event, which bamboo's engine sends only
        for a node its process moves on from (not a forking gateway, whose process waits for the
        branches, nor a node loop going round again)."""
        self.set_state(states.FINISHED, {"archived_time": now(), "error_ignored": error_ignored},
                       expect=(states.RUNNING,))
        if announce:
            self.announce_finish()

    def announce_finish(self) -> None:
        if signals.pipeline_event.has_receivers:  # asked here: every finish would build the event's arguments
            self.step.event("node_finish", root_pipeline_id=self.root_id, node_id=self.node.id)

    def fail(self, ex_data: str | None, outputs: Mapping[str, Any] | None = None, inputs: Any = None) -> None:
        """Mark the node FAILED, store ``ex_data`` in its outputs and put the process to sleep."""
        out = dict(outputs or {})
        if ex_data is not None:
            # the text may quote the node's inputs or conditions (a gateway whose 1,000 conditions
            # of 9,000 characters all held: 9 MB, over what a payload may take)
            out["ex_data"] = clip_ex_data(ex_data)
        if outputs is None:
            out.setdefault("_result", False)
            out.setdefault("_loop", self.state.loop)
            out.setdefault("_inner_loop", self.state.inner_loop)
        old = self.unit.get_execution_data(self.node.id)
        store_failure(self.unit, self.node.id, inputs if inputs is not None else (old[0] if old else {}), out)
        self.set_state(states.FAILED, {"archived_time": now()}, expect=(states.RUNNING,))
        self.proc.asleep = True

    def fail_node(self, ex_data: str) -> None:
        """Fail a node that is not an activity (subprocess, gateway, event) the way bamboo does:
        ``ex_data`` joins the outputs it already had and its inputs stay as they were, so a
        subprocess that never got in records ``{"inputs": {}, "outputs": {"ex_data": ...}}``
        (no ``_result`` or loop counters: those belong to activities)."""
        old = self.unit.get_execution_data(self.node.id)
        self.fail(ex_data, outputs=dict(old[1]) if old else {})

    # -- data -----------------------------------------------------------------------------
    def fetch_from(self, pipeline_id: str) -> cdata.Fetch:
        unit = self.unit
        return lambda keys: unit.get_context(pipeline_id, keys)

    def lazy_resolver(self) -> cdata.LazyResolver:
        """Resolves lazy variables for this node, reading the root data when first needed."""
        root_data: UserData | None = None

        def current_root_data() -> UserData:
            nonlocal root_data
            if root_data is None:
                root_data = self.root_data()
            return root_data

        return lazy_resolver(current_root_data, self.state.inner_loop)

    def detached_lazy_resolver(self, root_data: dict[str, Any]) -> cdata.LazyResolver:
        """A resolver that needs nothing from the transaction (for user code run outside it)."""
        return lazy_resolver(lambda: root_data, self.state.inner_loop)

    def raw_inputs(self) -> dict[str, Any]:
        # Only retry_node writes overrides, and it bumps ``retry``; a node never retried nor
        # re-entered cannot have one, which spares the common path a query.
        if self.state.retry > 0 or self.state.loop > 1:
            override = self.unit.get_inputs_override(self.node.id)
            if override is not None:
                return override
        return cdata.refer_lazy_inputs(self.node, cdata.node_inputs(self.node))

    def root_data(self) -> dict[str, Any]:
        return self.engine.root_data(self.root_id, self.unit)

    def seed_loop_outputs(self, pipeline_id: str) -> None:
        """Write this run's ``_loop``/``_inner_loop`` into the context keys they map to, before the
        inputs are rendered, so that a node's inputs can refer to its own loop counters."""
        counters = {"_loop": self.state.loop, "_inner_loop": self.state.inner_loop}
        seeds = [ContextValue(ctx_key, "plain", counters[src]) for src, ctx_key in
                 cdata.output_mapping(self.graph, self.node) if src in counters]
        self.upsert_context(pipeline_id, seeds)

    def upsert_context(self, pipeline_id: str, values: list[ContextValue], *, checked: bool = False) -> None:
        if values:
            self.unit.upsert_context(pipeline_id, values, checked=checked)

    def record_history(self, *, always: bool = False) -> None:
        record_history(self.unit, self.state, always=always)


def lazy_resolver(root_data: Callable[[], dict[str, Any]], inner_loop: int) -> cdata.LazyResolver:
    """``resolve(var, rendered)``: the value of lazy variable ``var`` by its class's ``get_value``."""

    def resolve(var: dctx.ContextVar, rendered: Any) -> Any:
        from culm.components import variables

        cls = variables.library.get(var.code or "")
        return cls(value=rendered, pipeline_data=root_data(), inner_loop=inner_loop, key=var.key).get_value()

    return resolve


def stored_state(unit: Unit, node_id: str) -> StateRecord:
    """The state of a node the engine knows has one (LookupError, naming it, when it has not)."""
    st = unit.get_state(node_id)
    if st is None:
        raise LookupError(f"node {node_id} has no stored state")
    return st


def record_history(unit: Unit, st: StateRecord, *, within_budget: bool = False, always: bool = False) -> None:
    """Keep a node's current run (state counters and execution data) before it is run again.

    A history that would take the pipeline past what it may store (StoredBytesBudgetError) is
    kept without its inputs and outputs, a note in their place, so that a skip or a loop still
    moves on; ``within_budget`` (a retry, which an operator asks for) raises the error instead,
    and checks the history whatever its size (a storm of retries of small ones passed any budget);
    so does ``always`` (a node entered again: a loop's iterations, up to MAX_LOOP_TIMES of them).
    """
    exec_data: tuple[UserData, UserData] = unit.get_execution_data(st.node_id) or ({}, {})
    rec = HistoryRecord(0, st.node_id, st.started_time, st.archived_time, st.loop, st.skip, st.retry,
                        st.version, exec_data[0], exec_data[1])
    try:
        unit.add_history(rec, always=within_budget or always)
    except StoredBytesBudgetError as exc:
        if within_budget:
            raise
        unit.add_history(replace(rec, inputs={}, outputs={"_left_out": clip_ex_data(str(exc))}))


def store_failure(unit: Unit, node_id: str, inputs: UserData, outputs: UserData) -> None:
    """Store the execution data of a node being failed. When they would take the pipeline past
    what it may store, its ``ex_data`` (cut short) and the reason are stored alone, so that the
    node still fails where an operator sees it."""
    try:
        unit.set_execution_data(node_id, inputs, outputs)
    except StoredBytesBudgetError as exc:
        said = str(outputs.get("ex_data", ""))
        said = said if len(said) <= 2_000 else f"{said[:2_000]} [...]"
        kept: dict[str, Any] = {key: outputs[key] for key in ("_result", "_loop", "_inner_loop", *ENGINE_MARKERS)
                                if key in outputs}
        unit.set_execution_data(node_id, {}, {**kept, "ex_data": f"{said}\n(inputs and outputs left out: {exc})"})
