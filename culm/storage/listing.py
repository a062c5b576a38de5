"""Listing root pipelines: counts per state and one page, newest first, from indexes only.

A root pipeline is a ``culm_state`` row whose ``parent_id`` is empty and whose ``root_id`` is set
(an appointed pause on a node not reached yet also has an empty ``parent_id``, but no ``root_id``).
The index ``ix_culm_state_roots`` (migration 0003) holds exactly those rows on SQLite and
PostgreSQL, so a list or a filtered count never reads the rows of ordinary nodes, nor a tree; the
name comes from ``ix_culm_pipeline_id_name``. The counts of an unfiltered list (the console's
first page, ``culm list``) come from ``culm_root_count`` (migration 0007): a few rows kept by the
writers, so they cost the same with a hundred pipelines stored or a million.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from culm.core.ports import PipelineRow
from culm.core.records import PipelineQuery
from culm.storage.sql.statements import ROOT_COUNTS

_ROOTS = "s.parent_id = '' AND s.root_id <> ''"


def _escape_like(text: str) -> str:
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _filters(query: PipelineQuery, pipelines: str) -> tuple[str, str, list[Any]]:
    """(join, where, params) for every filter but the state."""
    where: list[str] = [_ROOTS]
    params: list[Any] = []
    join = ""
    if query.created_after is not None:
        where.append("s.created_time >= ?")
        params.append(query.created_after)
    if query.created_before is not None:
        where.append("s.created_time < ?")
        params.append(query.created_before)
    if query.name:
        join = f" JOIN {pipelines} ON p.id = s.root_id"
        where.append("LOWER(p.name) LIKE ? ESCAPE '!'")
        params.append(f"%{_escape_like(query.name.lower())}%")
    return join, " AND ".join(where), params


def list_pipelines(
    fetch: Callable[[str, Sequence[Any]], list[Any]], tables: tuple[str, str], query: PipelineQuery
) -> tuple[dict[str, int], list[PipelineRow]]:
    """``({state: count}, rows)`` where counts ignore the state filter and rows are
    ``(id, name, state, created_time, started_time, archived_time)``, newest first.

    Args:
        fetch: runs one statement with ``?`` placeholders and returns its rows.
        tables: the FROM names of the root states (``s``) and of the pipelines' names (``p``),
            as the dialect wants them (``statements.LISTING_TABLES``).
        query: the filters and the page.
    """
    states, pipelines = tables
    join, where, params = _filters(query, pipelines)
    if len(params) == 0:  # no filter but the state: the kept counts
        counts = {str(r[0]): int(r[1]) for r in fetch(ROOT_COUNTS, ()) if r[1]}
    else:
        counts = {str(r[0]): int(r[1]) for r in fetch(
            f"SELECT s.name, COUNT(*) FROM {states}{join} WHERE {where} GROUP BY s.name", params)}
    page_where, page_params = where, list(params)
    if query.states is not None:
        if not query.states:
            return counts, []
        page_where += f" AND s.name IN ({', '.join('?' * len(query.states))})"
        page_params.extend(query.states)
    # The page is chosen from the index alone (a root's root_id is its own id), read backwards in
    # its own order (created_time, name, root_id), so no database sorts the roots to find the
    # newest (MariaDB sorted all of them when ties were broken by root_id alone); only the page's
    # rows are then read for their times and names.
    rows = fetch(
        "SELECT r.root_id, COALESCE(p.name, ''), r.name, r.created_time, t.started_time, t.archived_time"
        f" FROM (SELECT s.root_id, s.name, s.created_time FROM {states}{join} WHERE {page_where}"
        " ORDER BY s.created_time DESC, s.name DESC, s.root_id DESC LIMIT ? OFFSET ?) r"
        " JOIN culm_state t ON t.node_id = r.root_id"
        f" LEFT JOIN {pipelines} ON p.id = r.root_id ORDER BY r.created_time DESC, r.name DESC, r.root_id DESC",
        [*page_params, query.limit, query.offset],
    )
    return counts, [tuple(r) for r in rows]


def root_deltas(changes: Iterable[Sequence[Any]]) -> dict[str, int]:
    """The net change of root pipelines per state that recorded state changes make (rows of
    ``(root_id, node_id, from_state, to_state, ...)``: a root's own row is the one whose node is
    the root; ``from_state`` None is a new row); states whose count does not move are left out."""
    deltas: dict[str, int] = {}
    for change in changes:
        root_id, node_id, was, now = change[0], change[1], change[2], change[3]
        if node_id != root_id or was == now:
            continue
        if was is not None:
            deltas[was] = deltas.get(was, 0) - 1
        deltas[now] = deltas.get(now, 0) + 1
    return {name: n for name, n in deltas.items() if n}
