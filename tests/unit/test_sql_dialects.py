"""The SQL store's dialect is chosen in one place (``culm.storage.sql.base.dialect_for``), from the URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from culm.errors import InvalidOperationError
from culm.storage.sql import SqlStore
from culm.storage.sql.base import dialect_for
from culm.storage.sql.mysql import MysqlDialect, MysqlUnit
from culm.storage.sql.postgres import PostgresDialect, PostgresUnit
from culm.storage.sql.sqlite import SqliteDialect, SqliteUnit


@pytest.mark.parametrize(("url", "dialect"), [
    ("sqlite://", SqliteDialect),
    ("sqlite:///some/file.db", SqliteDialect),
    ("postgresql+psycopg://u:p@db/culm", PostgresDialect),
    ("mysql+pymysql://u:p@db/culm", MysqlDialect),
    ("mariadb+pymysql://u:p@db/culm", MysqlDialect),
])
def test_the_url_names_the_dialect(url: str, dialect: type) -> None:
    assert type(dialect_for(url)) is dialect


def test_each_dialect_brings_its_own_unit() -> None:
    units = {d.name: d.unit for d in (SqliteDialect(), PostgresDialect(), MysqlDialect())}
    assert units == {"sqlite": SqliteUnit, "postgresql": PostgresUnit, "mysql": MysqlUnit}
    assert [u.dialect for u in units.values()] == list(units)


def test_another_backend_is_refused_by_name_without_its_password() -> None:
    with pytest.raises(InvalidOperationError, match="not 'oracle'") as caught:
        SqlStore("oracle+oracledb://scott:tiger@db/orcl")
    assert "tiger" not in str(caught.value) and "scott:***@db" in str(caught.value)


def test_a_sqlite_store_hands_out_sqlite_units(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/d.db")
    try:
        assert store.dialect == "sqlite"
        with store.transaction() as unit:
            assert type(unit) is SqliteUnit
            assert (unit.feed_ordered, unit.lock_rows) == (True, False)
        with store.reading() as unit:
            assert type(unit) is SqliteUnit
    finally:
        store.dispose()
