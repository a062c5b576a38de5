"""Fixtures for tests against real servers: fresh databases and real ``culm worker`` processes.

The services behind them (and helpers to use directly) are in ``backends.py``. Reusable by any
integration suite:

* ``distributed_backend`` (session scope, parametrized ``"postgres-redis"`` / ``"mariadb-rabbitmq"``)
  yields a :class:`DistributedBackend`: a freshly created and migrated database, a private queue
  prefix on the broker, and two running worker processes (short leases, fast relay). Use
  ``backend.runtime()`` for a submitting :class:`culm.Runtime`, ``backend.start_workers(n)`` /
  ``backend.kill_worker(i)`` / ``backend.ensure_workers(n)`` to change the worker set, and
  ``backend.executions()`` to count component executions recorded by ``culm_dist_components``.
* ``runtime``, ``hook_calls``, ``recorder``: the engine behaviour tests' fixtures, defined in
  ``engine_fixtures.py`` and exposed here.
* ``harness``, ``rt``: the contract conformance tests' fixtures (harness-style workers), defined in
  ``contract_support.py`` and exposed here.
* ``server_database`` (function scope, parametrized ``"postgres"`` / ``"mariadb"``) yields the URL
  of an empty database created for the test and dropped after it.

Every ``culm worker`` a session starts is stopped at teardown whatever fails in it, dies with the
session's process, and is looked for at the session's end: ``tests/worker_guard.py`` (loaded by
``tests/conftest.py``) kills any left and fails the session, naming them.

A backend whose services are unreachable is skipped on a developer machine and FAILS in CI
(``CI=true``): the distributed runtime is never silently left untested there.

The engine behaviour tests run on every backend: their ``runtime`` fixture is parametrized over
``sqlite``, ``memory`` (the in-process store), ``postgres-redis`` and ``mariadb-rabbitmq`` (see
``engine_fixtures.py``); tests that observe in-process state (signals, hooks, gates) are marked
``embedded_only`` and their distributed variants are deselected.
"""

from __future__ import annotations

from typing import Any

import pytest
from backends import BACKENDS, BackendPool, create_database, drop_database


@pytest.fixture(params=["postgres", "mariadb"])
def server_database(request: pytest.FixtureRequest) -> Any:
    url = create_database(request.param)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def backend_pool(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pool = BackendPool(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session", params=list(BACKENDS))
def distributed_backend(request: pytest.FixtureRequest, backend_pool: BackendPool) -> Any:
    """A migrated database + broker + ``culm worker`` processes (see the module docstring)."""
    backend = backend_pool.get(request.param)
    backend.ensure_workers(2)
    return backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the distributed variants of tests that observe in-process state."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("runtime") if callspec else None
        in_process = item.get_closest_marker("embedded_only") or {"recorder", "hook_calls"} & set(item.fixturenames)
        if backend not in (None, *EMBEDDED) and in_process:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# Engine behaviour tests (tests/integration/test_engine_*.py): their fixtures live in engine_fixtures.py.
from engine_fixtures import EMBEDDED, _fresh_shared_state, hook_calls, recorder, runtime  # noqa: E402,F401,I001

# Contract conformance tests (test_contract_*.py): harness-style workers; see contract_support.py.
from contract_support import harness, rt  # noqa: E402,F401,I001
