"""The names a run's tree gives a few of its nodes.

A list of pipelines names the nodes that need an operator (a failed one, one that waits for a
callback): a few nodes of each pipeline of the page, each run's tree read whole once for them
(:class:`culm.core.waits.NodeNames` keeps the names a process has read: a tree never changes).

Session 21 had the database cut each name out of the stored JSON text instead (a JSON path per
node, one ``UNION ALL`` arm each). It saved bytes (1.7 MB -> 12 KB for a page of 50 runs of 34 KB
trees) but cost time: each arm made the database detoast, scan and parse the tree again, 0.36 s
on PostgreSQL and 0.75 s on MariaDB against 0.06 s for the whole reads of the same page
(review22), and every escape, NaN and envelope of the codec needed its own way around the
dialects' JSON functions (review21b/c). Reading the tree whole is quicker, and right by
construction: the codec that wrote it reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def names_in(tree: Any, node_ids: Sequence[str]) -> dict[str, str]:
    """The names ``tree``, read whole, gives ``node_ids`` (``""``: none)."""
    from culm.model.tree_ids import walk_tree

    names = {node["id"]: node["name"] for _pipe, nodes in walk_tree(tree) for node in nodes
             if isinstance(node.get("name"), str)}
    return {node_id: names.get(node_id, "") for node_id in node_ids}


def from_trees(trees: Mapping[str, Any], wanted: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
    """``{root_id: {node_id: name}}`` for the nodes ``wanted`` (by root id), from ``trees`` (the
    runs' trees by root id, read whole); ``""`` for a node with no text name or of another run;
    runs not in ``trees`` (not stored) left out."""
    return {root_id: names_in(tree, wanted[root_id]) for root_id, tree in trees.items() if root_id in wanted}
