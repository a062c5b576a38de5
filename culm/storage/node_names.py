"""The names a run's tree gives a few of its nodes, read without reading the tree.

A list of pipelines names the nodes that need an operator (a failed one, one that waits for a
callback): a few nodes of each pipeline of the page. Reading their trees whole (the ``tree``
column, tens of KiB for a pipeline of a hundred nodes) to keep a few names cost a first
``culm list`` of 50 such pipelines 1.7 MB. Here the database returns only the name of each
node: ``culm_node`` says in which (sub)pipeline of the tree the node lies and of which kind it is,
which gives the node's place in the tree as a JSON path, and the dialect's JSON function reads the
value there (``json_extract`` on SQLite and MySQL/MariaDB, ``#>`` on PostgreSQL).

An id a JSON path cannot carry as a plain quoted label (quotes, backslashes, characters outside
``[A-Za-z0-9_.:-]``) has its run's tree read whole instead, as before; so has a tree the
database's JSON functions may not read as the codec meant (:func:`plain_tree`): an envelope of
the codec (a tree compressed or pickled, ``{"__culm_...``); one holding a NaN or an infinity
(``NaN``, ``Infinity``: the codec writes them, JSON has none; SQLite and PostgreSQL raise on
them, MariaDB answers NULL); and one holding any escape at all (a backslash: the codec escapes
every character outside printable ASCII, and ``\u0000`` or a lone surrogate makes PostgreSQL
raise, MariaDB answer NULL, SQLite cut or fail a name). So a tree with text outside printable
ASCII (names in Chinese, a quote, a newline) is read whole, as before this module: right, not
quicker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"[A-Za-z0-9_.:\-]+\Z")


def plain_tree(find: str) -> tuple[str, list[str]]:
    """SQL true of the trees whose names the database may read, and its params: ``find`` is the
    dialect's substring position function (``INSTR``, PostgreSQL's ``STRPOS``; both need no
    pattern characters, and the texts sought are bound, so no dialect's escaping applies). A
    string value holding "NaN" or "Infinity" only sends its tree to the whole read. (No double
    quote in the SQL: MySQL's statements have theirs turned into backquotes.)"""
    return (f"SUBSTR(tree, 3, 7) <> '__culm_' AND {find}(tree, ?) = 0 AND {find}(tree, ?) = 0 "
            f"AND {find}(tree, ?) = 0", ["\\", "NaN", "Infinity"])
# Arms of one UNION ALL read: a few parameters each, under SQLite's oldest limit of 999.
ARMS = 100


def plain(node_id: str) -> bool:
    """Whether ``node_id`` can be a quoted label of a JSON path on every dialect."""
    return _PLAIN.match(node_id) is not None


def json_path(keys: Sequence[str]) -> str:
    """``$."a"."b"``: the JSON path of ``keys`` (each :func:`plain`) on SQLite and MySQL/MariaDB."""
    return "$" + "".join(f'."{key}"' for key in keys)


def where_in_tree(node_id: str, node_type: str, pipelines: Sequence[str]) -> list[str]:
    """The keys leading to the name of ``node_id`` (of ``node_type``, as ``culm_node`` keeps it)
    in a tree, ``pipelines`` the ids of the SubProcess nodes around it, outermost first (a
    subprocess's pipeline has the id of its SubProcess node)."""
    keys: list[str] = []
    for sub in pipelines:
        keys += ["activities", sub, "pipeline"]
    if node_type.endswith("StartEvent"):
        return [*keys, "start_event", "name"]
    if node_type.endswith("EndEvent"):
        return [*keys, "end_event", "name"]
    return [*keys, "gateways" if node_type.endswith("Gateway") else "activities", node_id, "name"]


def read(wanted: Mapping[str, Sequence[str]], fetch: Callable[[str, Sequence[Any]], list[Any]],
         value_at: Callable[[list[str]], tuple[str, list[Any]]], trees: Callable[[list[str]], dict[str, Any]],
         readable: tuple[str, list[str]]) -> dict[str, dict[str, str]]:
    """``{root_id: {node_id: name}}`` for the nodes ``wanted`` (by root id); ``""`` for a node
    its tree gives no text name. ``fetch(sql, params)`` runs a read; ``value_at(keys)`` is the
    dialect's SQL of the JSON text of the tree's value at ``keys`` (NULL when none) and its
    params; ``trees(root_ids)`` reads trees whole (ids a path cannot carry, and trees the SQL of
    ``readable``, the dialect's :func:`plain_tree` and its params, is false of)."""
    found: dict[str, dict[str, str]] = {root_id: {} for root_id in wanted}
    whole = sorted(root_id for root_id, node_ids in wanted.items() if not all(plain(n) for n in node_ids))
    paths = _paths({r: n for r, n in wanted.items() if r not in whole}, fetch)
    for root_id, of_root in list(paths.items()):
        if not all(plain(key) for keys in of_root.values() for key in keys):  # a subprocess's id
            whole.append(root_id)
            del paths[root_id]
    arms = [(root_id, node_id, keys) for root_id, of_root in paths.items() for node_id, keys in of_root.items()]
    for at in range(0, len(arms), ARMS):
        chunk = arms[at:at + ARMS]
        sql, params = [], []
        for index, (root_id, _node_id, keys) in enumerate(chunk):
            expr, expr_params = value_at(keys)
            sql.append(f"SELECT {index}, {expr} FROM culm_pipeline WHERE id = ? AND {readable[0]}")  # index: ours
            params += [*expr_params, root_id, *readable[1]]
        answered = set()
        for index, value in fetch(" UNION ALL ".join(sql), params):
            root_id, node_id, _keys = chunk[int(index)]
            found[root_id][node_id] = _text(value)
            answered.add(int(index))
        # no row: the run is gone, or its tree is one the database cannot read (read it whole)
        whole += sorted({root_id for index, (root_id, _n, _k) in enumerate(chunk) if index not in answered})
    for root_id, tree in trees(sorted(set(whole))).items():
        found[root_id] = names_in(tree, wanted[root_id])
    for root_id, node_ids in wanted.items():
        for node_id in node_ids:
            found[root_id].setdefault(node_id, "")
    return found


def _paths(wanted: Mapping[str, Sequence[str]], fetch: Callable[[str, Sequence[Any]], list[Any]]
           ) -> dict[str, dict[str, list[str]]]:
    """``{root_id: {node_id: keys}}`` from ``culm_node``: the node, then the SubProcess nodes
    around it, one read per level of nesting (nodes of the root pipeline: one read in all)."""
    rows: dict[str, tuple[str, str, str]] = {}  # id -> (root_id, pipeline_id, type)
    ask = sorted({node_id for node_ids in wanted.values() for node_id in node_ids})
    while ask:
        for at in range(0, len(ask), 500):
            part = ask[at:at + 500]
            sql = f"SELECT id, root_id, pipeline_id, type FROM culm_node WHERE id IN ({', '.join('?' * len(part))})"
            for node_id, root_id, pipeline_id, node_type in fetch(sql, part):
                if node_id in part:  # (MySQL's collation matches ids of another case too)
                    rows[str(node_id)] = (str(root_id), str(pipeline_id), str(node_type))
        ask = sorted({pipeline_id for root_id, pipeline_id, _t in rows.values()
                      if pipeline_id != root_id and pipeline_id not in rows})
    out: dict[str, dict[str, list[str]]] = {}
    for root_id, node_ids in wanted.items():
        for node_id in node_ids:
            row = rows.get(node_id)
            if row is None or row[0] != root_id:
                continue  # not a node of this run: no name
            chain: list[str] = []
            pipeline_id = row[1]
            while pipeline_id != root_id and pipeline_id in rows and len(chain) < 1000:
                chain.insert(0, pipeline_id)
                pipeline_id = rows[pipeline_id][1]
            out.setdefault(root_id, {})[node_id] = where_in_tree(node_id, row[2], chain)
    return out


def _text(value: Any) -> str:
    """The name from the JSON text a dialect returned (a text value only; anything else: none)."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    try:
        name = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return ""
    return name if isinstance(name, str) else ""


def names_in(tree: Any, node_ids: Sequence[str]) -> dict[str, str]:
    """The names ``tree``, read whole, gives ``node_ids`` (``""``: none)."""
    from culm.model.tree_ids import walk_tree

    names = {node["id"]: node["name"] for _pipe, nodes in walk_tree(tree) for node in nodes
             if isinstance(node.get("name"), str)}
    return {node_id: names.get(node_id, "") for node_id in node_ids}
