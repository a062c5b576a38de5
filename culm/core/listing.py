"""Listing and describing root pipelines (``culm.api.list_pipelines``, ``get_pipeline_tree``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from culm.core import states
from culm.core.engine import Engine
from culm.core.records import PipelineQuery
from culm.errors import InvalidOperationError, NotFoundError
from culm.model.limits import lookup_problem

MAX_LIMIT = 1000
PIPELINE_STATES = (states.CREATED, states.READY, states.RUNNING, states.SUSPENDED, states.BLOCKED,
                   states.FINISHED, states.FAILED, states.REVOKED)


def _epoch(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidOperationError(f"{name} must be a timezone-aware datetime, got a naive one ({value})")
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise InvalidOperationError(f"{name} must be a timezone-aware datetime or epoch seconds, got {value!r}")


def _states(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise InvalidOperationError(f"state must be a state name or a list of them, got {value!r}")
    chosen: list[str] = []
    for item in items:
        name = item.upper() if isinstance(item, str) else item
        if name not in PIPELINE_STATES:
            raise InvalidOperationError(f"state {item!r} is not a state; use one of {', '.join(PIPELINE_STATES)}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _count(value: object, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidOperationError(f"{name} must be an int from {low} to {high}, got {value!r}")
    return value


def make_query(state: object = None, name: object = None, created_after: object = None,
               created_before: object = None, limit: object = 50, offset: object = 0) -> PipelineQuery:
    """Check the arguments of a list and make its query; refuses a bad one with a message naming it."""
    if name is not None and not isinstance(name, str):
        raise InvalidOperationError(f"name must be a string, got {name!r}")
    if name and (problem := lookup_problem(name, "name")) is not None:
        raise InvalidOperationError(problem)
    return PipelineQuery(
        states=_states(state), name=name or None,
        created_after=_epoch(created_after, "created_after"), created_before=_epoch(created_before, "created_before"),
        limit=_count(limit, "limit", 0, MAX_LIMIT), offset=_count(offset, "offset", 0, 2**62),
    )


def _time(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def list_pipelines(engine: Engine, query: PipelineQuery) -> dict[str, Any]:
    """``{"total", "counts", "items"}``: see :func:`culm.api.list_pipelines`."""
    with engine.store.reading() as unit:
        counts, rows = unit.list_pipelines(query)
    chosen = query.states if query.states is not None else tuple(counts)
    items = [
        {"id": r[0], "name": r[1], "state": r[2], "created_time": _time(r[3]), "started_time": _time(r[4]),
         "archived_time": _time(r[5])}
        for r in rows
    ]
    return {"total": sum(counts.get(s, 0) for s in chosen), "counts": counts, "items": items}


def pipeline_tree(engine: Engine, pipeline_id: str) -> dict[str, Any]:
    """The tree a root pipeline was started with, as stored."""
    with engine.store.reading() as unit:
        stored = unit.get_pipeline(pipeline_id)
    if stored is None:
        raise NotFoundError(f"pipeline {pipeline_id} does not exist (or is not a root pipeline)")
    tree: dict[str, Any] = stored[0]
    return tree
