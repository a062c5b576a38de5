"""Helpers of the contract conformance tests (``test_contract_surface.py``,
``test_contract_conformance.py``, ``test_contract_idioms.py``): small trees of the ``ct_*``
plugins, bounded waits on the public query API, and the ``harness`` / ``rt`` fixtures (exposed by
``conftest.py``): embedded SQLite, and PostgreSQL + Redis and MariaDB + RabbitMQ with ``culm
worker`` processes started as the acceptance harness starts them, loading the test plugins through
``$CULM_IMPORTS`` only (:data:`HARNESS_IMPORTS`)."""

from __future__ import annotations

from typing import Any

import contract_components  # noqa: F401 - registers the ct_* plugins the trees use
import pytest
from backends import AMQP, REDIS, HarnessBackend, reachable, unavailable
from support import wait_until

import culm
from culm import api

HARNESS = {"postgres-redis": ("postgres", REDIS, 5432, 6379), "mariadb-rabbitmq": ("mariadb", AMQP, 3306, 5672)}
# The plugin modules the harness's workers import: the contract's ct_* plugins, the bamboo idioms'
# ci_* ones, and a user's own ``example_component`` (only the workers load that one: in the test
# process it would replace the demo component for every other test of the session).
HARNESS_IMPORTS = "contract_components,contract_idioms,contract_idioms_example"


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """``harness(name)``: the harness-style backend ``name`` (of :data:`HARNESS`), started on first
    use with two workers and torn down at the module's end (held for the whole session, its
    workers' connections counted against the servers' limits in every later module: the storm
    tests then met "too many clients")."""
    yield from harness_backends(tmp_path_factory, HARNESS_IMPORTS, workers=2)


def harness_backends(tmp_path_factory: Any, imports: str, workers: int):
    """The body of a module-scoped fixture giving ``get(name)``: the harness-style backend ``name``
    whose workers import ``imports``, started on first use, torn down when the fixture ends."""
    started: dict[str, HarnessBackend] = {}

    def get(name: str) -> HarnessBackend:
        if name not in started:
            db_kind, broker, db_port, broker_port = HARNESS[name]
            for port in (db_port, broker_port):
                if not reachable("127.0.0.1", port):
                    unavailable(f"{name}: nothing listens on 127.0.0.1:{port}")
            backend = HarnessBackend(name, db_kind, broker, tmp_path_factory.mktemp(f"harness-{name}"),
                                     imports=imports)
            started[name] = backend
            backend.setup()
            backend.start_workers(workers)
        return started[name]

    yield get
    for backend in started.values():
        backend.teardown()


@pytest.fixture(params=["sqlite", "postgres-redis", "mariadb-rabbitmq"])
def rt(request, tmp_path, harness):
    """A runtime on each runtime the acceptance harness judges."""
    if request.param == "sqlite":
        with culm.Runtime(f"sqlite:///{tmp_path}/c.db") as runtime:
            yield runtime
        return
    yield harness(request.param).runtime()


def builder_tree() -> dict[str, Any]:
    """A tree with every builder element: an activity (value 1), a parallel block holding a
    subprocess (its param ``${sub_in}`` = ``${top}`` = "t"), an exclusive gateway with one branch
    never taken, and a pipeline output ``${out}`` from the first activity's ``echo``."""
    from culm.builder import (
        ConvergeGateway,
        Data,
        DataInput,
        EmptyEndEvent,
        EmptyStartEvent,
        ExclusiveGateway,
        NodeOutput,
        ParallelGateway,
        ServiceActivity,
        SubProcess,
        Var,
        build_tree,
    )

    inner = EmptyStartEvent()
    inner_act = ServiceActivity(component_code="ct_attrs")
    inner_act.component.inputs.value = Var(type=Var.SPLICE, value="${sub_in}")
    inner.extend(inner_act).extend(EmptyEndEvent())
    sub = SubProcess(start=inner, data=Data(inputs={"${sub_in}": DataInput(type=Var.PLAIN, value="d")}),
                     params={"${sub_in}": Var(type=Var.SPLICE, value="${top}")})
    start, act = EmptyStartEvent(), ServiceActivity(component_code="ct_attrs", version="legacy", error_ignorable=True,
                                                    timeout=None, skippable=False, retryable=False)
    act.component.inputs.value = Var(type=Var.PLAIN, value=1)
    pg, cg, eg, end = ParallelGateway(), ConvergeGateway(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"}), \
        EmptyEndEvent()
    other = ServiceActivity(component_code="ct_attrs")
    start.extend(act).extend(pg).connect(sub, ServiceActivity(component_code="ct_attrs")).to(pg).converge(cg) \
        .extend(eg).connect(end, other)
    other.extend(end)
    data = Data(inputs={"${top}": Var(type=Var.PLAIN, value="t"),
                        "${out}": NodeOutput(source_act=act.id, source_key="echo")}, outputs=["${out}"])
    return build_tree(start, data=data)


def state_of(rt: Any, node_id: str) -> str | None:
    """The state name of any node or pipeline id, None when it has none."""
    res = api.get_children_states(rt, node_id)
    assert res.result, res.message
    entry = res.data.get(node_id)
    return entry and entry["state"]


def wait_for(rt: Any, node_id: str, *states: str, timeout: float = 30) -> None:
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = state_of(rt, node_id)
        return last[0] in states

    try:
        wait_until(check, timeout, 0.05, what=f"{node_id} to be {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {last[0]}") from None


def start_run(rt: Any, tree: dict[str, Any], **kwargs: Any) -> str:
    res = api.run_pipeline(rt, tree, **kwargs)
    assert res.result, res.message
    return tree["id"]


def line(*acts: Any, end: Any = None, **build: Any) -> dict[str, Any]:
    """start -> ``acts`` one after the other -> ``end`` (an empty end event by default)."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, build_tree

    start = EmptyStartEvent()
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(end or EmptyEndEvent())
    return build_tree(start, **build)


def act(code: str, **inputs: Any) -> Any:
    """An activity of ``code`` with plain inputs (or the ``Var`` given)."""
    from culm.builder import ServiceActivity, Var

    node = ServiceActivity(component_code=code, version="2.0" if code == "ct_callback" else None)
    for key, value in inputs.items():
        setattr(node.component.inputs, key, value if isinstance(value, Var) else Var(type=Var.PLAIN, value=value))
    return node


STATE_KEYS = {"id", "state", "root_id", "root_id:", "parent_id", "version", "loop", "retry", "skip", "error_ignored",
              "error_ignorable", "created_time", "started_time", "archived_time", "children"}


def walk(entry: dict[str, Any]):
    yield entry
    for child in entry["children"].values():
        yield from walk(child)
