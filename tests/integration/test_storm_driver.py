"""The storm driver (``storm_driver.py``) on PostgreSQL + Redis and MariaDB + RabbitMQ, bounded.

Each run: rich random trees on two ``culm worker`` processes (components from ``$CULM_IMPORTS``),
every control call from API threads (with bursts), a second process, a real ``culm serve`` and
``culm`` commands, ``culm status`` reading, a worker killed with ``kill -9`` and restarted every
few seconds; then the never-stuck checker, an operator driving every pipeline to its end, the CLI
and REST agreeing with the API, and re-run executions only where a kill caught them.

``CULM_STORM_DRIVER_SEEDS=1-5`` runs those seeds; longer storms: the module docstring of
``storm_driver.py`` (``python tests/integration/storm_driver.py --help``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from simulation import parse_seeds
from storm_driver import run_storm

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(420)]

SEEDS = parse_seeds(os.environ.get("CULM_STORM_DRIVER_SEEDS", "1"))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_storm_of_every_control_call_with_kill_9_of_workers(kind: str, seed: int, tmp_path: Path) -> None:
    outcome = run_storm(kind, seed, tmp_path, pipelines=10, size=10, seconds=15)
    print("\n" + outcome.line())
    assert outcome.kills >= 1 and set(outcome.ended) <= {"FINISHED", "REVOKED"}
