"""``sqlite:///`` URLs with a query string: the file is the path before the ``?`` (or the path of
a ``file:`` URI with ``uri=true``), the parameters are checked, a bad one refused by name."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import culm
from culm.errors import InvalidOperationError
from culm.storage.sqlite_url import parse_sqlite_url


@pytest.mark.parametrize(("url", "path", "read_only"), [
    ("sqlite:///x.db", "x.db", False),
    ("sqlite:////abs/x.db", "/abs/x.db", False),
    ("sqlite:///x.db?timeout=5", "x.db", False),
    ("sqlite:///file:x.db?mode=ro&uri=true", "x.db", True),
    ("sqlite:///file:///abs/x.db?uri=true&immutable=1", "/abs/x.db", True),
    ("sqlite:///file://localhost/abs/x.db?uri=true", "/abs/x.db", False),
    ("sqlite:///a%20b.db", "a b.db", False),
    ("sqlite://", None, False),
    ("sqlite:///:memory:", None, False),
    ("sqlite:///file:mem?mode=memory&cache=shared&uri=true", None, False),
])
def test_the_file_of_a_sqlite_url(url: str, path: str | None, read_only: bool) -> None:
    parsed = parse_sqlite_url(url)
    assert (parsed.path, parsed.read_only) == (path, read_only)


@pytest.mark.parametrize(("url", "said"), [
    ("sqlite:///x.db?timout=5", "unknown parameter timout (a sqlite URL takes timeout,"),
    ("sqlite:///x.db?mode=ro", "unknown parameter mode (a SQLite URI parameter: add uri=true"),
    ("sqlite:///x.db?timeout=1&timeout=2", "the parameter timeout is given more than once"),
    ("sqlite:///x.db?timeout=soon", "timeout=soon is not a number of seconds"),
    ("sqlite:///x.db?uri=true", "uri=true takes a SQLite URI: write the file as file:x.db"),
])
def test_a_parameter_that_cannot_be_passed_on_is_refused_by_name(tmp_path: Path, url: str, said: str) -> None:
    with pytest.raises(ValueError, match="^" + said.replace("(", r"\(").replace("?", r"\?")):
        parse_sqlite_url(url)
    with pytest.raises(InvalidOperationError, match="cannot use the database URL"):
        culm.Runtime(url.replace("///x.db", f"///{tmp_path}/x.db"), workers=0)
    assert list(tmp_path.iterdir()) == []


def test_the_url_s_timeout_is_the_busy_timeout(tmp_path: Path) -> None:
    """`?timeout=0.2`: a write behind another process's write lock gives up after about 0.2 s, not
    culm's default 30 s."""
    db = tmp_path / "t.db"
    with culm.Runtime(f"sqlite:///{db}", workers=0):
        pass
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="locked"):  # noqa: PT011 - the driver's error, wrapped
            with culm.Runtime(f"sqlite:///{db}?timeout=0.2", workers=0) as rt, rt.store.engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        assert time.monotonic() - started < 10  # culm's own default waits 30 s
    finally:
        holder.execute("ROLLBACK")
        holder.close()
