"""Ids and filters holding text no database can carry, on PostgreSQL and MariaDB: refused naming
the argument, as on SQLite and the memory store (see ``tests/unit/test_lookup_arguments.py``;
before, PostgreSQL answered a NUL with a 500 and a logged traceback)."""

from __future__ import annotations

import pytest
from lookup_arguments import CALLS, TEXTS, check_refused

import culm
from culm.storage.migrate import upgrade_database

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_an_argument_no_database_can_look_up_is_refused_naming_it(server_database: str, kind: str) -> None:
    upgrade_database(server_database)
    with culm.Runtime(server_database) as runtime:
        for what, argument, others in CALLS:
            check_refused(runtime, kind, what, argument, others)
