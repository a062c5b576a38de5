"""Validation and normalisation of pipeline trees, and start-position rules.

Pure functions, no I/O. :func:`validate_tree` lists every problem of a tree (never raising, even
on garbage); :func:`process_tree` raises :class:`~culm.errors.TreeInvalidError` with all of them
or returns a normalised deep copy ready for the engine.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from culm import _json
from culm.errors import StartPositionInvalidError, TreeInvalidError, TreeProblem
from culm.model import limits
from culm.model.flowgraph import (
    CONDITIONAL_PARALLEL,
    CONVERGE,
    END,
    EXCLUSIVE,
    PARALLEL,
    PARALLEL_TYPES,
    SERVICE,
    START,
    SUBPROCESS,
    PipelineGraph,
    check_connections,
)
from culm.model.gateways import check_streams, pair_gateways
from culm.model.syntax_warnings import tree_warnings
from culm.model.tree_shape import ShapeChecker, label, too_large, tree_size
from culm.model.variable_cycles import variable_cycle_problems

__all__ = [
    "PreparedTree",
    "allowed_start_node_ids",
    "prepare_tree",
    "process_tree",
    "renormalise",
    "skipped_node_ids",
    "tree_warnings",
    "validate_start_node",
    "validate_tree",
]

ComponentExists = Callable[[str, str | None], bool]
LazyExists = Callable[[str], bool]
EndEventExists = Callable[[str], bool]

START_NODE_TYPES = frozenset({START, SERVICE, EXCLUSIVE, PARALLEL, CONDITIONAL_PARALLEL})
_ACTIVITY_DEFAULTS = {"error_ignorable": False, "skippable": True, "retryable": True, "optional": False}


def _analyse(
    tree: Any, cycle_tolerate: bool, component_exists: ComponentExists | None,
    lazy_exists: LazyExists | None, end_event_exists: EndEventExists | None,
    preset: tuple[Collection[str], Collection[str]] = ((), ()), size: tuple[int, int, int] | None = None,
) -> ShapeChecker:
    """The checker that walked ``tree``: every problem of it (``problems``), the graph of each of its
    pipelines (``graphs``, root first), and whether a value holds dict keys JSON would merge.
    ``preset``: the context keys a run presets in the root and in every subprocess; ``size``: the
    tree's :func:`tree_size` when the caller counted it already."""
    checker = ShapeChecker(component_exists, lazy_exists, end_event_exists)
    try:
        checker.run(tree, size)
        for graph in checker.graphs:
            check_connections(graph, checker.add, cycle_tolerate)
            # Pairing a graph whose flows or degrees are wrong would only repeat those problems.
            if graph.sound and pair_gateways(graph, checker.add):
                check_streams(graph, checker.add)
        # Parsing too many fragments would take seconds (refused anyway). A tree the shape walk
        # found sound and saw no variable that refers in has no cycle to look for; one with
        # problems may hold variables the walk passed over, and is looked at as before.
        if not checker.too_many_fragments and (checker.referring_variables or checker.problems):
            for problem in variable_cycle_problems(tree, *preset):
                checker.add(problem.where, problem.message)
    except Exception as exc:  # the contract is "garbage in, problems out", never an exception
        checker.add(None, f"tree could not be validated: {type(exc).__name__}: {exc}")
    return checker


def validate_tree(
    tree: Any, *, cycle_tolerate: bool = False, component_exists: ComponentExists | None = None,
    lazy_exists: LazyExists | None = None, end_event_exists: EndEventExists | None = None,
) -> list[TreeProblem]:
    """List every problem of a pipeline tree, nested subprocess trees included.

    Args:
        tree: The pipeline tree (bamboo's schema). Anything is accepted; garbage yields problems.
        cycle_tolerate: Allow loop-back flows (graph loops).
        component_exists: ``(code, version) -> bool``; when given, unknown components are problems.
        lazy_exists: ``(custom_type) -> bool``; when given, unknown lazy variables are problems.
        end_event_exists: ``(type) -> bool``; when given, unknown executable end events are problems.

    Returns:
        The problems found, each naming the node, flow or data path at fault; empty when valid.
    """
    return _analyse(tree, cycle_tolerate, component_exists, lazy_exists, end_event_exists).problems


@dataclass(frozen=True)
class PreparedTree:
    """A validated tree ready to run: its normalised copy, and what storing it needs.

    ``text`` is the argument as JSON, before normalising, when it is plain JSON (None otherwise),
    already compressed as the store keeps it (a :class:`culm._json.ShrunkText`) when measuring a
    large tree took that; :func:`renormalise` with ``converge_of`` turns the tree read back from it
    into ``tree`` again, so a run stores the text it already has instead of encoding (and
    compressing) the normalised copy once more.
    """

    tree: dict[str, Any]
    text: str | None
    converge_of: dict[str, str]
    # The graph of each pipeline of the tree, root first, as its analysis left them.
    graphs: tuple[PipelineGraph, ...] = ()

    def check_start_node(self, node_id: Any) -> None:
        """:func:`validate_start_node` of this tree, from the graphs its analysis built already.

        Raises:
            StartPositionInvalidError: The node is not an allowed start position.
        """
        _check_start(self.graphs[0], list(self.graphs), node_id)


def process_tree(
    tree: Any, *, cycle_tolerate: bool = False, component_exists: ComponentExists | None = None,
    lazy_exists: LazyExists | None = None, end_event_exists: EndEventExists | None = None,
) -> dict[str, Any]:
    """Validate a tree and return a normalised deep copy of it (the argument is not modified).

    The copy has every ``incoming`` as a list, ``converge_gateway_id`` on each parallel and
    conditional parallel gateway (and on exclusive gateways that match a converge gateway), and
    defaults filled in for omitted optional keys, in every subprocess as well. Values JSON holds
    as something else come back as JSON reads them (a tuple as a list, an int key as a string),
    as they would after being stored.

    Args:
        tree: The pipeline tree.
        cycle_tolerate: Allow loop-back flows.
        component_exists: See :func:`validate_tree`.
        lazy_exists: See :func:`validate_tree`.
        end_event_exists: See :func:`validate_tree`.

    Returns:
        The normalised copy.

    Raises:
        TreeInvalidError: The tree breaks at least one rule; ``problems`` lists all of them.
    """
    return prepare_tree(tree, cycle_tolerate=cycle_tolerate, component_exists=component_exists,
                        lazy_exists=lazy_exists, end_event_exists=end_event_exists).tree


def prepare_tree(
    tree: Any, *, cycle_tolerate: bool = False, component_exists: ComponentExists | None = None,
    lazy_exists: LazyExists | None = None, end_event_exists: EndEventExists | None = None,
    preset: tuple[Collection[str], Collection[str]] = ((), ()),
) -> PreparedTree:
    """:func:`process_tree`, also returning the tree's JSON text and its gateway pairs.

    ``preset``: the keys of ``root_pipeline_context`` and ``subprocess_context`` of the run it is
    for: they give those variables plain values, so a reference cycle through them is none.
    """
    # Encoded first (storing needs it anyway), so a tree too large to store is refused before its
    # analysis builds a graph of every node (a 99,000-node tree: 6 s and 160 MB, then refused).
    encoded: _Encoded | None = None
    failure: BaseException | None = None
    size = tree_size(tree) if isinstance(tree, dict) else None
    if size is not None and too_large(size) is None:
        try:
            encoded = _encode(tree, exact=False)
        except Exception as exc:  # noqa: BLE001 - named after the analysis, which may say where
            failure = exc
    packed = _check_size(tree, encoded) if encoded is not None else None
    checker = _analyse(tree, cycle_tolerate, component_exists, lazy_exists, end_event_exists, preset, size)
    problems, graphs = checker.problems, checker.graphs
    if problems:
        raise TreeInvalidError(problems)
    if failure is not None or (encoded is not None and checker.merging_keys and encoded.text is not None):
        try:
            encoded = _encode(tree, exact=True)
        except RecursionError:
            raise TreeInvalidError([TreeProblem(None, "tree values are nested too deeply to copy")])
        except Exception as exc:  # noqa: BLE001 - pickle raises many kinds (TypeError, PicklingError...)
            raise TreeInvalidError([TreeProblem(label(tree["id"]), (
                f"tree holds a value neither JSON nor pickle takes ({type(exc).__name__}: {exc})"))])
        packed = _check_size(tree, encoded)
    assert encoded is not None  # a tree without problems is a dict within the count
    result = encoded.copy()
    text = packed if packed is not None and encoded.text is not None else encoded.text
    converge_of = {g: c for graph in graphs for g, c in graph.converge_of.items()}
    _normalise(result, converge_of)
    return PreparedTree(result, text, converge_of, tuple(graphs))


def renormalise(tree: dict[str, Any], converge_of: dict[str, str]) -> dict[str, Any]:
    """Normalise a tree read back from a :attr:`PreparedTree.text` (in place; returns it)."""
    _normalise(tree, converge_of)
    return tree


@dataclass(frozen=True)
class _Encoded:
    """A tree as it is stored: JSON text, or (``text`` None) a pickle, and the bytes it takes (of a
    text of at most half of MAX_PAYLOAD_BYTES characters, its length: it is within the limit)."""

    text: str | None
    blob: bytes
    size: int

    def copy(self) -> dict[str, Any]:
        """The tree as storing it gives it back."""
        tree: dict[str, Any] = _json.loads(self.text) if self.text is not None else pickle.loads(self.blob)  # noqa: S301
        return tree


def _encode(tree: dict[str, Any], *, exact: bool) -> _Encoded:
    """``tree`` encoded as the store keeps it, with the bytes it takes (an upper estimate for a
    pickle). Raises what JSON and pickle raise for a value neither takes."""
    # JSON where it keeps the tree (a round trip copies a plain tree several times faster than
    # deepcopy, and gives it exactly as storing it would); a pickle for a tree JSON cannot hold
    # (sets, objects), or with ``exact`` (a variable's value holds dict keys JSON would merge,
    # ``{1: "a", "1": "b"}``: the stored tree keeps them, see culm.storage.codec).
    if not exact:
        try:
            # No circular-reference bookkeeping (it costs ~10 % of the encoding): a cyclic value
            # recurses until RecursionError instead, and is pickled.
            text = _json.dumps(tree)
            # Each character takes at most two bytes: a text of at most half the limit passes
            # whatever it holds, and is not scanned three times to say by how much.
            within = len(text) <= limits.MAX_PAYLOAD_BYTES // 2
            return _Encoded(text, b"", len(text) if within else limits.payload_size(text))
        except (TypeError, ValueError, RecursionError):
            pass
    blob = pickle.dumps(tree, protocol=pickle.HIGHEST_PROTOCOL)
    return _Encoded(None, blob, limits.pickled_payload_size(len(blob)))




def _check_size(tree: dict[str, Any], encoded: _Encoded) -> _json.ShrunkText | None:
    """Refuse a tree too large to store; returns its text as stored when measuring it took that."""
    size, packed = encoded.size, None
    if size > limits.MAX_PAYLOAD_BYTES and encoded.text is not None:  # a large tree is stored compressed
        packed = _json.shrunk(encoded.text)
        size = min(size, limits.payload_size(packed))
    if size > limits.MAX_PAYLOAD_BYTES:
        raise TreeInvalidError([TreeProblem(label(tree.get("id")), (
            f"tree takes {size:,} bytes once stored, over the {limits.MAX_PAYLOAD_BYTES:,} a store holds "
            "(culm.model.limits.MAX_PAYLOAD_BYTES); split the work into several pipelines"))])
    return packed


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else list(value)


def _normalise(tree: dict[str, Any], converge_of: dict[str, str]) -> None:
    pipelines = [tree]
    while pipelines:
        pipe = pipelines.pop()
        for key in ("activities", "gateways"):
            if pipe.get(key) is None:
                pipe[key] = {}
        data = pipe.get("data")
        pipe["data"] = data = data if data is not None else {}
        data.setdefault("inputs", {})
        data.setdefault("outputs", [])
        pipe["end_event"]["incoming"] = _as_list(pipe["end_event"].get("incoming"))
        for act in pipe["activities"].values():
            act["incoming"] = _as_list(act.get("incoming"))
            if act["type"] == SUBPROCESS:
                act.setdefault("params", {})
                pipelines.append(act["pipeline"])
            else:
                _normalise_activity(act)
        for gateway in pipe["gateways"].values():
            gateway["incoming"] = _as_list(gateway.get("incoming"))
            if gateway["id"] in converge_of:
                gateway["converge_gateway_id"] = converge_of[gateway["id"]]


def _normalise_activity(act: dict[str, Any]) -> None:
    for key, default in _ACTIVITY_DEFAULTS.items():
        act.setdefault(key, default)
    act.setdefault("timeout", None)
    if act["component"].get("inputs") is None:
        act["component"]["inputs"] = {}


# ---------------------------------------------------------------------------------------------
# Start positions
# ---------------------------------------------------------------------------------------------


def _analysed_root(tree: Any) -> tuple[PipelineGraph, list[PipelineGraph]]:
    checker = _analyse(tree, True, None, None, None)
    if checker.problems:
        raise TreeInvalidError(checker.problems)
    return checker.graphs[0], checker.graphs


def _main_line(graph: PipelineGraph) -> list[str]:
    """Allowed start nodes: the main line, jumping over each parallel block to its converge."""
    assert graph.start_id is not None
    seen = {graph.start_id}
    queue = deque([graph.start_id])
    allowed: list[str] = []
    while queue:
        node_id = queue.popleft()
        kind = graph.kinds[node_id]
        if kind in START_NODE_TYPES:
            allowed.append(node_id)
        if kind in PARALLEL_TYPES:
            following = [graph.converge_of[node_id]]
        else:
            following = [graph.target(f) for f in graph.out_flows[node_id]]
        for nxt in following:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return allowed


def allowed_start_node_ids(tree: Any) -> list[str]:
    """Ids of the nodes a run of ``tree`` may start at (spec 2.6), main line order.

    Raises:
        TreeInvalidError: The tree itself is invalid (loops are tolerated).
    """
    return _main_line(_analysed_root(tree)[0])


def _why_not(node_id: Any, root: PipelineGraph, graphs: list[PipelineGraph]) -> str:
    if not isinstance(node_id, str):
        return "start node id must be a string"
    kind = root.kinds.get(node_id)
    if kind is None:
        inner = next((g.id for g in graphs[1:] if node_id in g.kinds), None)
        if inner is not None:
            return f"node is inside subprocess {inner}; a run can only start in the root pipeline"
        return "no node with this id in the pipeline"
    if kind in (END, CONVERGE, SUBPROCESS):
        return f"a {kind} cannot be a start position"
    return "node is inside a parallel block; only nodes on the main line can be start positions"


def _check_start(root: PipelineGraph, graphs: list[PipelineGraph], node_id: Any) -> None:
    if node_id == root.start_id or (isinstance(node_id, str) and node_id in _main_line(root)):
        return
    where = label(node_id)
    raise StartPositionInvalidError([TreeProblem(where, _why_not(node_id, root, graphs))])


def validate_start_node(tree: Any, node_id: Any) -> None:
    """Check that a run of ``tree`` may start at ``node_id`` (the start event always may).

    Raises:
        StartPositionInvalidError: The node is not an allowed start position; the problem says why.
        TreeInvalidError: The tree itself is invalid.
    """
    root, graphs = _analysed_root(tree)
    _check_start(root, graphs, node_id)


def skipped_node_ids(tree: Any, start_node_id: Any, validate: bool = True) -> list[str]:
    """Ids of the root-pipeline nodes that will not run when starting at ``start_node_id``.

    These are the nodes on some path from the start event to ``start_node_id`` (loop-back
    flows ignored; for an exclusive gateway only the branch leading there), in flow order.

    Args:
        tree: The pipeline tree.
        start_node_id: The node the run would start at.
        validate: Check first that ``start_node_id`` is an allowed start position (bamboo's
            ``validate``); without the check, any node of the root pipeline is accepted.

    Raises:
        StartPositionInvalidError: ``start_node_id`` is not an allowed start position (or, without
            ``validate``, not a node of the root pipeline).
        TreeInvalidError: The tree itself is invalid.
    """
    root, graphs = _analysed_root(tree)
    if validate or not isinstance(start_node_id, str) or start_node_id not in root.kinds:
        _check_start(root, graphs, start_node_id)
    if start_node_id == root.start_id:
        return []
    before: set[str] = set()
    queue = deque([start_node_id])
    while queue:
        for flow_id in root.in_flows[queue.popleft()]:
            source = root.flows[flow_id][0]
            if flow_id not in root.back_flows and source in root.reachable and source not in before:
                before.add(source)
                queue.append(source)
    return [n for n in reversed(root.postorder) if n in before]


__all__ = [
    "validate_tree", "process_tree", "allowed_start_node_ids", "validate_start_node", "skipped_node_ids",
]
