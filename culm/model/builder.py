"""A small DSL that builds pipeline trees (bamboo's JSON schema) from linked Python objects.

Elements are linked with :meth:`Element.extend` / :meth:`Element.connect` /
:meth:`Element.converge`; :func:`build_tree` walks the links from the start event and returns
the tree dict. Data objects (:class:`Var` and friends) describe context variables and inputs.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

MULTI_OUTGOING_TYPES = frozenset({"ParallelGateway", "ExclusiveGateway", "ConditionalParallelGateway"})


def unique_id(prefix: str) -> str:
    """A fresh 33-character id: a one-letter ``prefix`` followed by uuid4 hex."""
    return prefix + uuid.uuid4().hex


# ---------------------------------------------------------------------------------------------
# Data objects
# ---------------------------------------------------------------------------------------------


class Var:
    """A context variable or an input value.

    Args:
        type: ``Var.PLAIN``, ``Var.SPLICE`` or ``Var.LAZY``.
        value: The raw value (a template string for splice variables).
        custom_type: Code of the lazy variable class; emitted only for lazy variables.
    """

    PLAIN = "plain"
    SPLICE = "splice"
    LAZY = "lazy"

    def __init__(self, type: str, value: Any, custom_type: str | None = None) -> None:
        self.type = type
        self.value = value
        self.custom_type = custom_type

    def to_dict(self) -> dict[str, Any]:
        """The tree form of this variable."""
        result: dict[str, Any] = {"type": self.type, "value": self.value}
        if self.type == self.LAZY:
            result["custom_type"] = self.custom_type
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


class DataInput(Var):
    """A subprocess data input that the parent's ``params`` may override.

    ``source_tag`` is the older builder's name for ``custom_type`` (bamboo's flow builder guide
    still shows it); either names the lazy variable class.
    """

    def __init__(self, type: str, value: Any, custom_type: str | None = None, source_tag: str | None = None) -> None:
        super().__init__(type, value, custom_type if custom_type is not None else source_tag)

    def to_dict(self) -> dict[str, Any]:
        """The tree form: a :class:`Var` flagged ``is_param``."""
        return {**super().to_dict(), "is_param": True}


class NodeOutput(Var):
    """A context variable that takes the output ``source_key`` of activity ``source_act``.

    As in bamboo, ``value`` is accepted and ignored (the value comes from the node's output).
    """

    def __init__(self, source_act: str, source_key: str, type: str = Var.PLAIN, custom_type: str | None = None,
                 value: Any = None) -> None:
        super().__init__(type, None, custom_type)
        self.source_act = source_act
        self.source_key = source_key

    def to_dict(self) -> dict[str, Any]:
        """The tree form: value ``None`` plus the output reference."""
        return {**super().to_dict(), "source_act": self.source_act, "source_key": self.source_key}


class RewritableNodeOutput(Var):
    """A context variable written by several activities' outputs, the last writer winning.

    Args:
        source_act: A list of ``{"source_act": activity id, "source_key": output key}``.
        type: The variable type.
        custom_type: As for :class:`Var`.
        value: Accepted and ignored, as bamboo does (see :class:`InitializedRewritableNodeOutput`).
    """

    def __init__(self, source_act: list[dict[str, str]], type: str = Var.PLAIN, custom_type: str | None = None,
                 value: Any = None) -> None:
        super().__init__(type, None, custom_type)
        self.source_act = source_act

    def to_dict(self) -> dict[str, Any]:
        """The tree form: value ``None`` plus the list of output references."""
        return {**super().to_dict(), "source_act": [dict(ref) for ref in self.source_act]}


class InitializedRewritableNodeOutput(RewritableNodeOutput):
    """A :class:`RewritableNodeOutput` that also has a value before any writer has run.

    Positional order as bamboo's: ``(source_act, type, value, custom_type)``.
    """

    def __init__(
        self, source_act: list[dict[str, str]], type: str = Var.PLAIN, value: Any = None,
        custom_type: str | None = None,
    ) -> None:
        super().__init__(source_act, type, custom_type)
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        """The tree form: keeps the value and sets ``need_initialization``."""
        return {**super().to_dict(), "value": self.value, "need_initialization": True}


def _var_dict(value: Any) -> Any:
    # Plain dicts pass through so that hand-written Var dicts can be mixed with Var objects.
    return value.to_dict() if isinstance(value, Var) else value


class Namespace:
    """An ordered mapping whose keys can also be read and set as attributes."""

    _items: dict[str, Any]

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_items", dict(items or {}))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._items[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self._items[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self._items[key]
        except KeyError:
            raise AttributeError(key) from None

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._items[key] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> Iterable[tuple[str, Any]]:
        """The ``(key, value)`` pairs, in insertion order."""
        return self._items.items()

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with every :class:`Var` turned into its tree form."""
        return {key: _var_dict(value) for key, value in self._items.items()}

    def __repr__(self) -> str:
        return f"Namespace({self._items!r})"


class Data:
    """The ``data`` section of a (sub)pipeline.

    Args:
        inputs: Context variables, ``{"${key}": Var}``.
        outputs: Context keys exposed as the pipeline's outputs.
        pre_render_keys: Context keys rendered once when the pipeline starts.
    """

    def __init__(
        self, inputs: Mapping[str, Any] | None = None, outputs: list[str] | None = None,
        pre_render_keys: list[str] | None = None,
    ) -> None:
        self.inputs = Namespace(inputs)
        self.outputs = list(outputs or [])
        self.pre_render_keys = list(pre_render_keys or [])

    def to_dict(self) -> dict[str, Any]:
        """The tree form: ``{"inputs", "outputs", "pre_render_keys"}``."""
        return {
            "inputs": self.inputs.to_dict(),
            "outputs": list(self.outputs),
            "pre_render_keys": list(self.pre_render_keys),
        }


class Params:
    """The ``params`` a parent passes to a subprocess: ``{"${key}": Var}``."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = Namespace(params)

    def to_dict(self) -> dict[str, Any]:
        """The tree form: key -> Var dict."""
        return self.params.to_dict()


# ---------------------------------------------------------------------------------------------
# Elements
# ---------------------------------------------------------------------------------------------


class Element:
    """A node of the flow graph; ``outgoing`` holds the elements it links to, in order.

    Args:
        id: Node id; a fresh ``e…`` id when omitted.
        name: Display name.
        outgoing: Initial list of successor elements.
    """

    def __init__(self, id: str | None = None, name: str | None = None, outgoing: list[Element] | None = None) -> None:
        self.id = id or unique_id("e")
        self.name = name
        self.outgoing: list[Element] = list(outgoing or [])

    def type(self) -> str:
        """The node type written to the tree."""
        return type(self).__name__

    def extend(self, element: Element) -> Element:
        """Link ``self -> element`` and return ``element``, so a straight line chains."""
        self.outgoing.append(element)
        return element

    def connect(self, *elements: Element) -> Element:
        """Link ``self`` to each of ``elements`` (a fan-out) and return ``self``."""
        self.outgoing.extend(elements)
        return self

    def converge(self, element: Element) -> Element:
        """Link the tail of every outgoing branch of ``self`` to ``element``; return ``element``."""
        for branch in self.outgoing:
            tail = branch.tail()
            # A branch that already ends at ``element`` must not get a self-loop.
            if tail is not element:
                tail.extend(element)
        return element

    def to(self, element: Element) -> Element:
        """Return ``element``: switches the subject of a chain without linking anything."""
        return element

    def tail(self) -> Element:
        """The last element reached by following first outgoing links (stops on a loop)."""
        node: Element = self
        seen = {id(node)}
        while node.outgoing and id(node.outgoing[0]) not in seen:
            node = node.outgoing[0]
            seen.add(id(node))
        return node

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Element) and self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        # bamboo's form, name included even when it is None, so logs and doctests read the same.
        return f"<{type(self).__name__} {self.name}:{self.id}>"


class EmptyStartEvent(Element):
    """The start event of a (sub)pipeline."""


class EmptyEndEvent(Element):
    """The plain end event of a (sub)pipeline."""


class ExecutableEndEvent(Element):
    """An end event that runs a registered end-event plugin; ``type`` is the plugin code."""

    def __init__(self, type: str, id: str | None = None, name: str | None = None,
                 outgoing: list[Element] | None = None) -> None:
        super().__init__(id, name, outgoing)
        self._type = type

    def type(self) -> str:
        """The registered end-event code."""
        return self._type


class ServiceActivity(Element):
    """A node that runs a component; set inputs with ``act.component.inputs.<key> = Var(...)``.

    Positional arguments are bamboo's (``component_code, error_ignorable, timeout, skippable,
    retryable, id, name, outgoing``); culm's additions are keyword-only.

    Args:
        component_code: Code of the component to run.
        error_ignorable: A failure finishes the node (``error_ignored``) and the flow goes on.
        timeout: Written to the tree and **ignored**, as bamboo-engine ignores it: nothing
            interrupts a node that runs too long. A run whose tree sets it logs a warning (once per
            process).
        skippable: ``skip_node`` may skip the node once it failed.
        retryable: ``retry_node`` may retry the node once it failed.
        id: Node id; a fresh ``e…`` id when omitted.
        name: Display name.
        outgoing: Initial list of successor elements.
        version: Component version (None: ``"legacy"``).
        loop_config: Node-level loop settings (``loop_times``, ``fail_skip``...).
        timeout_config: bamboo-pipeline's contrib node timeout, ``{"enable": True, "action":
            "forced_fail" | "forced_fail_and_skip", "seconds": N}``: enforced by the engine (see
            docs/node-timeout.md).
    """

    def __init__(
        self, component_code: str | None = None, error_ignorable: bool = False, timeout: int | None = None,
        skippable: bool = True, retryable: bool = True,
        id: str | None = None, name: str | None = None, outgoing: list[Element] | None = None, *,
        version: str | None = None, loop_config: Mapping[str, Any] | None = None,
        timeout_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(id, name, outgoing)
        self.component = Namespace({"code": component_code, "version": version, "inputs": Namespace()})
        self.error_ignorable = error_ignorable
        self.timeout = timeout
        self.skippable = skippable
        self.retryable = retryable
        self.loop_config = dict(loop_config) if loop_config is not None else None
        self.timeout_config = dict(timeout_config) if timeout_config is not None else None

    def component_dict(self) -> dict[str, Any]:
        """The ``component`` section: code, inputs and (only when set) version."""
        inputs = self.component.inputs
        result: dict[str, Any] = {
            "code": self.component.code,
            "inputs": inputs.to_dict() if isinstance(inputs, Namespace) else {
                key: _var_dict(value) for key, value in dict(inputs).items()
            },
        }
        if self.component.version is not None:
            result["version"] = self.component.version
        return result


class SubProcess(Element):
    """A node that runs a nested pipeline built from ``start``.

    Args:
        start: Start event of the nested pipeline.
        data: Its ``data`` (a :class:`Data` or a dict).
        params: Values passed from the parent (a :class:`Params` or a dict of Var).
        global_outputs: Kept for compatibility with bamboo's builder; not written to the tree.
        replace_id: The older builder's option to give the nested elements fresh ids; only
            ``False`` is supported (build separate elements for each subprocess instead).
        template_id: The older builder's reference to a stored pipeline template; culm keeps
            no template store, so the nested pipeline must come from ``start``.

    Raises:
        ValueError: ``replace_id`` is true or ``template_id`` is given.
    """

    def __init__(
        self, start: Element | None = None, data: Data | Mapping[str, Any] | None = None,
        params: Params | Mapping[str, Any] | None = None, global_outputs: Mapping[str, Any] | None = None,
        id: str | None = None, name: str | None = None, outgoing: list[Element] | None = None,
        replace_id: bool = False, template_id: str | None = None,
    ) -> None:
        if replace_id:
            raise ValueError("SubProcess(replace_id=True) is not supported: build separate elements "
                             "for each subprocess, they get their own ids")
        if template_id is not None:
            raise ValueError(f"SubProcess(template_id={template_id!r}): culm keeps no pipeline templates; "
                             "build the nested pipeline and pass its start event as start=")
        super().__init__(id, name, outgoing)
        self.start = start
        self.data = data
        self.params = params if params is not None else {}
        self.global_outputs = Namespace(global_outputs)

    def params_dict(self) -> dict[str, Any]:
        """The ``params`` section with every :class:`Var` in tree form."""
        if isinstance(self.params, Params):
            return self.params.to_dict()
        return {key: _var_dict(value) for key, value in dict(self.params).items()}


class ParallelGateway(Element):
    """Runs every outgoing branch concurrently, up to the matching converge gateway."""


class ConvergeGateway(Element):
    """Joins the branches of a gateway."""


class _ConditionalGateway(Element):
    """A gateway whose outgoing branches are chosen by conditions keyed by outgoing index."""

    def __init__(
        self, conditions: Mapping[int, str] | None = None, default_condition_outgoing: int | None = None,
        id: str | None = None, name: str | None = None, outgoing: list[Element] | None = None,
        extra_info: Mapping[str, Any] | None = None, condition: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(id, name, outgoing)
        # ``condition`` is how bamboo's flow builder guide spells ``conditions``.
        self.conditions: dict[int, str] = dict(conditions if conditions is not None else condition or {})
        self.default_condition_outgoing = default_condition_outgoing
        self.extra_info = dict(extra_info) if extra_info is not None else None

    def add_condition(self, index: int, evaluate: str) -> None:
        """Set the condition of the outgoing branch at position ``index``."""
        self.conditions[index] = evaluate

    def link_conditions_with(self, flow_ids: list[str]) -> dict[str, dict[str, str]]:
        """Conditions keyed by flow id (indexes out of range are dropped)."""
        return {
            flow_ids[index]: {"evaluate": expr}
            for index, expr in self.conditions.items()
            if isinstance(index, int) and 0 <= index < len(flow_ids)
        }

    def link_default_condition_with(self, flow_ids: list[str]) -> dict[str, str] | None:
        """``{"flow_id": ...}`` of the default branch, or None when there is none."""
        index = self.default_condition_outgoing
        if isinstance(index, int) and 0 <= index < len(flow_ids):
            return {"flow_id": flow_ids[index]}
        return None


class ExclusiveGateway(_ConditionalGateway):
    """Takes exactly one outgoing branch: the one whose condition holds, else the default."""


class ConditionalParallelGateway(_ConditionalGateway):
    """Runs concurrently every outgoing branch whose condition holds (else the default)."""


# ---------------------------------------------------------------------------------------------
# build_tree
# ---------------------------------------------------------------------------------------------


# A subprocess's pipeline still to build: its start event, the tree to fill, its data.
_Nested = tuple[Element, dict[str, Any], "Data | Mapping[str, Any] | None"]


def _empty_tree(tree_id: str) -> dict[str, Any]:
    return {
        "id": tree_id, "start_event": None, "end_event": None,
        "activities": {}, "gateways": {}, "flows": {}, "data": {"inputs": {}, "outputs": []},
    }


def _data_dict(data: Data | Mapping[str, Any] | None) -> dict[str, Any]:
    if isinstance(data, Data):
        return data.to_dict()
    if data:
        return dict(data)
    return {"inputs": {}, "outputs": []}


def build_tree(start: Element | None = None, id: str | None = None, data: Data | Mapping[str, Any] | None = None,
               *, start_elem: Element | None = None) -> dict[str, Any]:
    """Build the pipeline tree reachable from ``start``.

    Subprocesses are built one after the other, not by recursion, so any nesting depth builds
    (validation refuses a tree nested more than 64 subprocesses deep, naming the subprocess).

    Args:
        start: The :class:`EmptyStartEvent` of the pipeline (the contract's name).
        id: Pipeline id; a fresh ``p…`` id when omitted.
        data: The pipeline's :class:`Data` (or a dict); default ``{"inputs": {}, "outputs": []}``.
        start_elem: ``start`` under bamboo's name (its builder guide calls ``build_tree(start_elem=...)``).

    Returns:
        The tree dict in bamboo's schema (JSON-serialisable when the values are).

    Raises:
        TypeError: neither or both of ``start`` and ``start_elem`` given.
        ValueError: A subprocess has no start event, or holds itself (at any depth).
    """
    if (start is None) == (start_elem is None):
        raise TypeError("build_tree() takes the start event once: build_tree(start) or build_tree(start_elem=start)")
    first = start if start is not None else start_elem
    assert first is not None  # checked above; for the type checker
    root = _empty_tree(id or unique_id("p"))
    pending: list[tuple[Element, dict[str, Any], Data | Mapping[str, Any] | None, tuple[str, ...]]] = [
        (first, root, data, ())]
    while pending:
        pipeline_start, tree, tree_data, outer = pending.pop()
        for sub_start, sub_tree, sub_data in _fill(tree, pipeline_start, tree_data):
            if sub_tree["id"] in outer:
                raise ValueError(f"subprocess {sub_tree['id']} holds itself: its pipeline reaches it again "
                                 f"{len(outer) - outer.index(sub_tree['id'])} level(s) down")
            pending.append((sub_start, sub_tree, sub_data, (*outer, tree["id"])))
    return root


def _fill(tree: dict[str, Any], start_elem: Element, data: Data | Mapping[str, Any] | None) -> list[_Nested]:
    """Place every element reachable from ``start_elem`` in ``tree``; returns each subprocess with
    the empty tree its pipeline is still to be built in (its start event, that tree, its data)."""
    order = _collect(start_elem)
    outgoing = {elem.id: [unique_id("f") for _ in elem.outgoing] for elem in order}
    incoming: dict[str, list[str]] = {elem.id: [] for elem in order}
    for elem in order:
        for flow_id, target in zip(outgoing[elem.id], elem.outgoing, strict=True):
            tree["flows"][flow_id] = {"id": flow_id, "source": elem.id, "target": target.id, "is_default": False}
            incoming[target.id].append(flow_id)
    subs = []
    for elem in order:
        if (nested := _place(tree, elem, incoming[elem.id], outgoing[elem.id])) is not None:
            subs.append(nested)
    tree["data"] = _data_dict(data)
    return subs


def _collect(start_elem: Element) -> list[Element]:
    """Every element reachable from ``start_elem``, breadth first, each once (by id)."""
    seen = {start_elem.id}
    order = [start_elem]
    queue = deque([start_elem])
    while queue:
        for nxt in queue.popleft().outgoing:
            if nxt.id not in seen:
                seen.add(nxt.id)
                order.append(nxt)
                queue.append(nxt)
    return order


def _single(flow_ids: list[str]) -> str | list[str]:
    # Single-outgoing node types carry a str; a wrongly wired element keeps its list so that
    # validation reports it instead of the builder silently dropping edges.
    if len(flow_ids) == 1:
        return flow_ids[0]
    return "" if not flow_ids else list(flow_ids)


def _place(tree: dict[str, Any], elem: Element, incoming: list[str], outgoing: list[str]) -> _Nested | None:
    """Put ``elem`` in ``tree``; for a subprocess, return what building its pipeline needs."""
    base = {"id": elem.id, "name": elem.name, "type": elem.type(), "incoming": incoming}
    if isinstance(elem, EmptyStartEvent):
        tree["start_event"] = {**base, "incoming": "", "outgoing": _single(outgoing)}
    elif isinstance(elem, EmptyEndEvent | ExecutableEndEvent):
        tree["end_event"] = {**base, "outgoing": _single(outgoing)}
    elif isinstance(elem, ServiceActivity):
        tree["activities"][elem.id] = _activity_node(elem, base, outgoing)
    elif isinstance(elem, SubProcess):
        if elem.start is None:
            raise ValueError(f"subprocess {elem.id} has no start event")
        sub_tree = _empty_tree(elem.id)
        tree["activities"][elem.id] = {
            **base, "outgoing": _single(outgoing), "params": elem.params_dict(), "pipeline": sub_tree,
        }
        return elem.start, sub_tree, elem.data
    elif isinstance(elem, _ConditionalGateway):
        tree["gateways"][elem.id] = _conditional_gateway_node(elem, base, outgoing)
    elif isinstance(elem, ParallelGateway):
        tree["gateways"][elem.id] = {**base, "outgoing": list(outgoing)}
    elif isinstance(elem, ConvergeGateway):
        tree["gateways"][elem.id] = {**base, "outgoing": _single(outgoing)}
    else:
        raise TypeError(f"element {elem.id} of type {type(elem).__name__} cannot be placed in a tree")
    return None


def _activity_node(elem: ServiceActivity, base: dict[str, Any], outgoing: list[str]) -> dict[str, Any]:
    node = {
        **base, "outgoing": _single(outgoing), "component": elem.component_dict(),
        "error_ignorable": elem.error_ignorable, "skippable": elem.skippable, "retryable": elem.retryable,
        "optional": False, "timeout": elem.timeout,
    }
    if elem.loop_config is not None:
        node["loop_config"] = dict(elem.loop_config)
    if elem.timeout_config is not None:
        node["timeout_config"] = dict(elem.timeout_config)
    return node


def _conditional_gateway_node(elem: _ConditionalGateway, base: dict[str, Any], outgoing: list[str]) -> dict[str, Any]:
    node: dict[str, Any] = {**base, "outgoing": list(outgoing), "conditions": elem.link_conditions_with(outgoing)}
    default = elem.link_default_condition_with(outgoing)
    if default is not None:
        node["default_condition"] = default
    if elem.extra_info is not None:
        node["extra_info"] = dict(elem.extra_info)
    return node


__all__ = [
    "Element", "EmptyStartEvent", "EmptyEndEvent", "ExecutableEndEvent", "ServiceActivity", "SubProcess",
    "ParallelGateway", "ExclusiveGateway", "ConditionalParallelGateway", "ConvergeGateway",
    "Data", "Params", "Var", "DataInput", "NodeOutput", "RewritableNodeOutput",
    "InitializedRewritableNodeOutput", "Namespace", "build_tree", "unique_id",
]
