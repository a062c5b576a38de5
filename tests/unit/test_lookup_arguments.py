"""Ids and filters the API looks up, holding text no database can carry.

Found probing (session 23): an id, a callback's version or a list's name filter holding a NUL or a
lone surrogate (the CLI's argv holds one for each byte that is not UTF-8; JSON's ``\\ud800`` holds
one) went to the driver as it was. SQLite and the drivers of PostgreSQL and MariaDB refused the
surrogate with a ``UnicodeEncodeError`` that became the answer's message, PostgreSQL refused the
NUL with a ``DataError`` (a 500 and a traceback in the server's log for every such request), and
MariaDB, SQLite and the memory store answered "does not exist": one request, four answers. No
stored id or name holds such a character (the validator refuses them), so the API refuses the
argument before any lookup, naming it, the same on every backend
(``tests/integration/test_lookup_arguments_servers.py`` runs these on the servers).
"""

from __future__ import annotations

from typing import Any

import pytest
from lookup_arguments import CALLS, TEXTS, check_refused

import culm
from culm import api

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "sqlite"])
def runtime(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/t.db"
    with culm.Runtime(url) as rt:
        yield rt


@pytest.mark.parametrize("kind", sorted(TEXTS))
@pytest.mark.parametrize(("what", "argument", "others"), CALLS, ids=[c[0] for c in CALLS])
def test_an_argument_no_database_can_look_up_is_refused_naming_it(
    runtime: culm.Runtime, kind: str, what: str, argument: str, others: dict[str, Any],
) -> None:
    check_refused(runtime, kind, what, argument, others)


def test_printable_ids_that_do_not_exist_are_still_not_found(runtime: culm.Runtime) -> None:
    result = api.get_pipeline_tree(runtime, "p-\u00e9t\u00e9")
    assert not result.result and "does not exist" in result.message
    assert api.list_pipelines(runtime, name="\u00e9t\u00e9").data["total"] == 0
