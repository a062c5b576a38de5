"""The ports: every implementation offers every verb the core's protocols declare."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from culm.core import ports
from culm.dispatch.celery import CeleryDispatcher
from culm.dispatch.inline import InlineDispatcher
from culm.dispatch.runner import WorkerRunner
from culm.dispatch.threads import ThreadDispatcher
from culm.storage.cache import CachedUnit, RecordCache
from culm.storage.memory import MemoryStore, MemoryUnit
from culm.storage.sql import SqlStore, SqlUnit


def _verbs(protocol: type) -> set[str]:
    return {name for name in dir(protocol) if not name.startswith("_")}


def test_the_unit_is_the_union_of_the_concerns() -> None:
    concerns = (ports.Runs, ports.States, ports.Changes, ports.Processes, ports.Tasks, ports.NodeData,
                ports.Schedules, ports.Histories)
    union = set().union(*(_verbs(c) for c in concerns))
    assert _verbs(ports.Unit) == union | {"announce_change", "savepoint", "prefetch"}
    # No verb is declared by two concerns.
    assert sum(len(_verbs(c)) for c in concerns) == len(union)


@pytest.mark.parametrize("impl", [SqlUnit, CachedUnit, MemoryUnit])
def test_units_offer_every_verb_with_the_declared_parameters(impl: type) -> None:
    for name in sorted(_verbs(ports.Unit)):
        declared = getattr(ports.Unit, name)
        offered = getattr(impl, name, None)
        assert offered is not None, f"{impl.__name__} lacks {name}"
        if inspect.isfunction(declared):
            assert list(inspect.signature(offered).parameters)[: len(inspect.signature(declared).parameters)] == list(
                inspect.signature(declared).parameters
            ), name


def test_sql_units_read_ahead_with_the_declared_parameters() -> None:
    from culm.storage.sql.postgres import PostgresUnit

    for impl in (SqlUnit, PostgresUnit):
        for name in sorted(_verbs(ports.Prefetch)):
            declared, offered = getattr(ports.Prefetch, name), getattr(impl, name)
            assert list(inspect.signature(offered).parameters) == list(inspect.signature(declared).parameters), name


@pytest.mark.parametrize("impl", [ThreadDispatcher, WorkerRunner, CeleryDispatcher, InlineDispatcher])
def test_every_dispatcher_is_a_dispatcher(impl: type) -> None:
    assert issubclass(impl, ports.Dispatcher)


def test_units_declare_their_read_ahead_capabilities(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/p.db")
    try:
        with store.transaction() as unit:
            # SQLite: the states of a walk are read in one statement; tasks one by one.
            assert unit.prefetch is unit
            unit.prefetch.read_tasks_ahead(["t1", "t2"], [], ("me", 2.0, 1.0))
            assert unit.prefetch.tasks_read_ahead() == []
        with store.transaction(cache=RecordCache()) as unit:
            # The kept copies already answer for every state of a loaded root.
            assert unit.prefetch is None
    finally:
        store.dispose()
    with MemoryStore().transaction() as unit:  # every read is a lookup: nothing to read ahead
        assert unit.prefetch is None


def test_the_sql_worker_registry_is_a_worker_registry() -> None:
    from culm.storage.workers import SqlWorkerRegistry

    for name in sorted(_verbs(ports.WorkerRegistry)):
        declared, offered = getattr(ports.WorkerRegistry, name), getattr(SqlWorkerRegistry, name, None)
        assert offered is not None, f"SqlWorkerRegistry lacks {name}"
        assert list(inspect.signature(offered).parameters) == list(inspect.signature(declared).parameters), name
