"""A database that cannot be reached is answered as an outage, not as a fault of the engine.

culm's stores speak to the drivers directly, so a lost connection reaches the API as the driver's
own ``OperationalError``: the service answered it 500 "Internal server error" (a storm met it when
PostgreSQL ran out of connections). It is 503 with ``Retry-After`` now, naming the database.
"""

from __future__ import annotations

import pytest
from backends import MY_ADMIN, create_database, drop_database
from fastapi.testclient import TestClient

import culm
from culm.storage import migrate
from culm.web.app import create_app

pytestmark = pytest.mark.timeout(120)


def _gone(kind: str, url: str) -> None:
    """Drop the database and end the sessions on it (PostgreSQL's WITH (FORCE) does; MariaDB keeps
    them, on a database that no longer exists, until they are killed)."""
    if kind == "mariadb":
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = create_engine(MY_ADMIN, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                ids = conn.execute(text("SELECT id FROM information_schema.processlist WHERE db = :db"),
                                   {"db": make_url(url).database}).scalars().all()
                for session in ids:
                    conn.execute(text(f"KILL CONNECTION {int(session)}"))
        finally:
            admin.dispose()
    drop_database(url)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_the_service_answers_503_when_its_database_is_gone(kind: str) -> None:
    url = create_database(kind)
    migrate.upgrade_database(url)
    rt = culm.Runtime(url, workers=0)
    try:
        with TestClient(create_app(rt, auth_enabled=False), raise_server_exceptions=False,
                        base_url="http://127.0.0.1") as client:
            assert client.get("/api/v1/pipelines").status_code == 200
            _gone(kind, url)
            for method, path in (("GET", "/api/v1/pipelines/p1"), ("POST", "/api/v1/pipelines/p1/pause"),
                                 ("POST", "/api/v1/nodes/n1/retry"), ("GET", "/api/v1/pipelines")):
                got = client.request(method, path)
                assert got.status_code == 503, (method, path, got.text)
                assert got.headers["Retry-After"] == "2"
                problem = got.json()
                assert problem["title"] == "Service unavailable"
                assert problem["detail"].startswith("the database cannot be reached or used: ")
    finally:
        rt.close()
        drop_database(url)
