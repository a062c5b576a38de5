"""Storing a new pipeline run: tree, node index, root state, contexts, root process, first task."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any

from culm.core import data as cdata
from culm.core import states
from culm.core.engine import Engine
from culm.core.records import EXECUTE, ProcessRecord, StateRecord, TaskRecord, new_id, new_version, now
from culm.errors import InvalidOperationError
from culm.model import limits
from culm.model.compiled import Graph, Node
from culm.model.validator import PreparedTree


def run_pipeline(
    engine: Engine,
    tree: dict[str, Any],
    graph: Graph,
    *,
    root_pipeline_data: dict[str, Any],
    root_pipeline_context: dict[str, Any],
    subprocess_context: dict[str, Any],
    start_node_id: str | None,
    priority: int = 100,
    queue: str = "",
    stored: PreparedTree | None = None,
) -> None:
    """Persist everything a run needs in one transaction and dispatch its first task.

    ``stored``: what validation made of ``tree``; its JSON text, when it has one, is stored as
    it is (with the gateway pairs that normalise it again), instead of encoding ``tree`` anew.
    """
    root_id = graph.root_id
    payload = {
        "pipeline": tree, "root_pipeline_data": root_pipeline_data,
        "root_pipeline_context": root_pipeline_context, "subprocess_context": subprocess_context,
    }
    ids = [root_id, *graph.nodes.keys()]
    contexts = _contexts(graph, root_pipeline_context, subprocess_context)
    try:
        with engine.step(new_rows_only=True, graph=graph) as step:
            unit = step.unit
            # Every stored run indexes its root id and node ids in culm_node, and a state only ever
            # exists for an indexed id. A unit whose unique keys refuse a taken id (a server
            # database) is not asked first: the read would cost a round trip per run, while the
            # commit that carries the inserts is one anyway.
            if not unit.refuses_duplicate_ids:
                _refuse_taken(root_id, unit.existing_node_ids(ids), ids)
            step.event("pre_prepare_run_pipeline", **payload)
            at = now()
            options: dict[str, Any] = {"start_node_id": start_node_id, "priority": priority, "queue": queue}
            name = tree.get("name")
            name = name if isinstance(name, str) else ""
            if stored is not None and stored.text is not None and not _too_many_pairs(stored.converge_of):
                options["converge_of"] = stored.converge_of
                unit.add_pipeline(root_id, stored.text, root_pipeline_data, options, at, name=name)
            else:
                unit.add_pipeline(root_id, tree, root_pipeline_data, options, at, name=name)
            rows = [(root_id, root_id, root_id, "Pipeline")]
            rows.extend([(n.id, root_id, n.pipeline_id, n.type) for n in graph.nodes.values()])
            unit.add_nodes(rows)
            for pipeline_id, values in contexts.items():
                unit.insert_context(pipeline_id, values)
            if limits.MAX_STORED_BYTES:  # a storm of runs presetting megabytes each filled the store
                unit.check_new_pipeline(root_id)
            root_state = StateRecord(root_id, root_id, "", states.RUNNING, new_version(), 1, 1, 0, False, False, at, at)
            step.create_state(root_state, 1)
            start = start_node_id or graph.pipelines[root_id].start_event_id
            proc = ProcessRecord(new_id(), root_id, None, start, None, [root_id], priority=priority, queue=queue)
            unit.insert_processes([proc])
            step.add_task(TaskRecord(new_id(), EXECUTE, proc.id, start, root_id, due=at, priority=priority, queue=queue))
            step.event("post_prepare_run_pipeline", **payload)
    except Exception as exc:
        if not engine.store.is_duplicate(exc):
            raise
        with engine.store.reading() as unit:  # which ids were taken (a refusal names them)
            _refuse_taken(root_id, unit.existing_node_ids(ids), ids)
        _refuse_lookalikes(root_id, ids, contexts)
        # The key refused an id that no stored run holds now: a run of the same ids that was
        # being stored at the same moment, and was rolled back.
        raise InvalidOperationError(
            f"pipeline {root_id} was refused by a unique key of the database as if it already exists, though no "
            f"stored run holds its ids now (a run of the same ids at the same moment, rolled back since?): "
            f"run it again") from exc


def _contexts(graph: Graph, root_context: dict[str, Any], subprocess_context: dict[str, Any]) -> dict[str, list[Any]]:
    """The variables each (sub)pipeline context of a new run starts with."""
    members: dict[str, list[Node]] = {spec_id: [] for spec_id in graph.pipelines}
    for node in graph.nodes.values():
        members[node.pipeline_id].append(node)
    return {spec.id: cdata.context_values_for(spec, root_context if spec.id == graph.root_id else subprocess_context,
                                              members[spec.id]) for spec in graph.pipelines.values()}


# MySQL and MariaDB compare text columns by the database's collation, by default one that ignores
# case, accents and trailing spaces (utf8mb4_general_ci): two ids or keys a tree holds apart are
# one to them, and their unique keys refuse the second.
_LOOKALIKE = "this database compares ids and keys ignoring case, accents and trailing spaces (MySQL and MariaDB do by default)"


def _folded(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).rstrip(" ")


def _lookalike(texts: Iterable[str]) -> tuple[str, str] | None:
    """Two of ``texts`` that differ only by case, accents or trailing spaces, or None."""
    seen: dict[str, str] = {}
    for text in texts:
        other = seen.setdefault(_folded(text), text)
        if other != text:
            return other, text
    return None


def _refuse_taken(root_id: str, taken: set[str], ids: list[str]) -> None:
    lookalikes = sorted(taken - set(ids))
    note = f" ({_LOOKALIKE}: {lookalikes[:5]} stored, the tree's differ only so)" if lookalikes else ""
    if root_id in taken or any(_folded(t) == _folded(root_id) for t in taken):
        raise InvalidOperationError(f"pipeline {root_id} already exists: a tree id can run only once{note}")
    if taken:
        raise InvalidOperationError(f"pipeline {root_id} reuses node ids of another pipeline: {sorted(taken)[:5]}{note}")


def _refuse_lookalikes(root_id: str, ids: list[str], contexts: dict[str, list[Any]]) -> None:
    """Refuse a run that the database refused for two of its ids or context keys that it holds
    to be one (see _LOOKALIKE), naming them."""
    if pair := _lookalike(ids):
        raise InvalidOperationError(f"pipeline {root_id}: node ids {pair[0]!r} and {pair[1]!r} are one id to the "
                                    f"database, which cannot store both: {_LOOKALIKE}; rename one")
    for pipeline_id, values in contexts.items():
        if pair := _lookalike(value.key for value in values):
            where = "" if pipeline_id == root_id else f" of subprocess {pipeline_id}"
            raise InvalidOperationError(
                f"pipeline {root_id}: context keys {pair[0]!r} and {pair[1]!r}{where} are one key to the "
                f"database, which cannot store both: {_LOOKALIKE}; rename one")


def _too_many_pairs(converge_of: dict[str, str]) -> bool:
    """Whether a tree's gateway pairs would not fit in its options (a TEXT column on MySQL: 1,500
    pairs of long ids failed the run there with "Data too long"); the tree is stored normalised
    then, which needs none of them."""
    return limits.json_text_over([i for pair in converge_of.items() for i in pair], limits.TEXT_BYTES - 1_000) is not None
