"""The storm driver (``storm_driver.py``) on PostgreSQL + Redis and MariaDB + RabbitMQ, bounded.

Each run: rich random trees on two ``culm worker`` processes (components from ``$CULM_IMPORTS``),
every control call from API threads (with bursts), a second process, a real ``culm serve`` and
``culm`` commands, ``culm status`` reading, a worker killed with ``kill -9`` and restarted every
few seconds; then the never-stuck checker, an operator driving every pipeline to its end, the CLI
and REST agreeing with the API, and re-run executions only where a kill caught them. A CLI-only
storm (no kill, a relay that never looks in time) checks that every command's work is published.

``CULM_STORM_DRIVER_SEEDS=1-5`` runs those seeds; longer storms: the module docstring of
``storm_driver.py`` (``python tests/integration/storm_driver.py --help``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from backends import own_backend
from components import gate
from engine_fixtures import inputs, node_state, run, wait_state
from simulation import parse_seeds
from storm_driver import run_storm
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, Params, ServiceActivity, SubProcess, Var, build_tree
from culm.core.invariants import check
from culm.core.snapshots import read_snapshot

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(420)]

SEEDS = parse_seeds(os.environ.get("CULM_STORM_DRIVER_SEEDS", "1"))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_storm_of_every_control_call_with_kill_9_of_workers(kind: str, seed: int, tmp_path: Path) -> None:
    outcome = run_storm(kind, seed, tmp_path, pipelines=10, size=10, seconds=15)
    print("\n" + outcome.line())
    assert outcome.kills >= 1 and set(outcome.ended) <= {"FINISHED", "REVOKED"}


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_storm_of_control_calls_through_cli_processes_only_needs_no_relay(kind: str, tmp_path: Path) -> None:
    """Every call a ``culm`` process (random ones, bursts, and an operator's mostly accepted ones),
    half with ``--no-follow``; no kill, and workers whose relay grace is 10 minutes: each call's work
    must reach the workers through its own publish (a ``--no-follow`` command's work waited for the
    relay, 15 s on the default grace: the settle or the relayed-lines check fails then)."""
    outcome = run_storm(kind, 1, tmp_path, pipelines=6, size=8, seconds=20, kill_every=(0, 0), cli_only=3,
                        burst=4, relay_grace=600)
    print("\n" + outcome.line())
    assert outcome.fired.get("cli-op", 0) > outcome.refused.get("cli-op", 0)  # some calls made work
    assert outcome.again == 0 and set(outcome.ended) <= {"FINISHED", "REVOKED"}


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_a_worker_killed_while_a_paused_subprocess_renders_its_params(kind: str, tmp_path: Path) -> None:
    """The replay side of the storm's finding (test_engine_subprocess.py: a subprocess paused while
    its params render): the worker rendering them is killed with ``kill -9``, and its task's replay
    found the subprocess SUSPENDED, took the call as moved on and deleted the task: the process was
    stranded. The replay now parks it on the paused subprocess; the resume steps it in."""
    backend = own_backend(kind, tmp_path)
    try:
        backend.start_workers(1)
        rt = backend.runtime()
        inner = EmptyStartEvent()
        inner.extend(ServiceActivity(component_code="t_none")).extend(EmptyEndEvent())
        sub = SubProcess(start=inner, params=Params({"${g}": Var(type=Var.LAZY, custom_type="t_lazy_gate",
                                                                 value=f"killed-{kind}")}))
        start = EmptyStartEvent()
        start.extend(sub).extend(EmptyEndEvent())
        root = run(rt, build_tree(start))
        wait_state(rt, sub.id, "RUNNING", timeout=30)
        assert api.pause_pipeline(rt, sub.id).result
        backend.kill_worker(0)  # the render is in flight: its task is replayed by the next worker
        gate(f"killed-{kind}").set()
        backend.start_workers(1)
        wait_until(lambda: not read_snapshot(rt.engine, root).tasks, 60, 0.05,
                   what="the replayed entry to park on the paused subprocess")
        assert check(read_snapshot(rt.engine, root)) == []
        assert node_state(rt, sub.id)["state"] == "SUSPENDED"
        assert api.resume_pipeline(rt, sub.id).result
        wait_state(rt, root, "FINISHED", timeout=60)
        assert inputs(rt, sub.id) == {"${g}": "opened"}
    finally:
        backend.teardown()
