"""``sqlite:///`` URLs with a query string: the file is the path before the ``?`` (or the path of
a ``file:`` URI with ``uri=true``), the parameters are checked, a bad one refused by name."""

from __future__ import annotations

import re
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
    ("sqlite:///plain.db?uri=true", "plain.db", False),  # SQLite opens a name without file: as a plain path
    ("sqlite:///:memory:?timeout=5", None, False),
    ("sqlite:///x.db?timeout=2147483", "x.db", False),
])
def test_the_file_of_a_sqlite_url(url: str, path: str | None, read_only: bool) -> None:
    parsed = parse_sqlite_url(url)
    assert (parsed.path, parsed.read_only) == (path, read_only)


@pytest.mark.parametrize(("url", "said"), [
    ("sqlite:///x.db?timout=5", "unknown parameter timout (a sqlite URL takes timeout,"),
    ("sqlite:///x.db?mode=ro", "unknown parameter mode (a SQLite URI parameter: add uri=true"),
    ("sqlite:///x.db?timeout=1&timeout=2", "the parameter timeout is given more than once"),
    ("sqlite:///x.db?timeout=soon", "timeout=soon is not a number of seconds"),
    ("sqlite:///x.db?mode=ro&uri=true", "mode needs a SQLite URI: write the file as file:x.db "
                                        "(sqlite:///file:x.db?mode=ro&uri=true)"),
    # Each would give a busy timeout of 0 (no wait at all for a lock).
    ("sqlite:///x.db?timeout=inf", "timeout=inf is not a number of seconds from 0 to 2147483"),
    ("sqlite:///x.db?timeout=nan", "timeout=nan is not a number of seconds from 0 to 2147483"),
    ("sqlite:///x.db?timeout=-1", "timeout=-1 is not a number of seconds from 0 to 2147483"),
    ("sqlite:///x.db?timeout=1e12", "timeout=1e12 is not a number of seconds from 0 to 2147483"),
    # SQLite would open q (a fragment follows), or decode %2541 once more (to %41, then A).
    ("sqlite:///file:q#dir/x.db?mode=ro&uri=true", "the file name 'q#dir/x.db' of a SQLite URI (uri=true) holds #"),
    ("sqlite:///file:a%2541/x.db?uri=true", "the file name 'a%2541/x.db' of a SQLite URI (uri=true) holds %"),
])
def test_a_parameter_that_cannot_be_passed_on_is_refused_by_name(tmp_path: Path, url: str, said: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(said)):
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



@pytest.mark.parametrize("url", ["sqlite:///:memory:?timeout=5", "sqlite:///file:m?mode=memory&cache=shared&uri=true"])
def test_a_database_in_memory_given_with_parameters_runs_pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    url: str) -> None:
    """Its store is one in memory (one connection: "cannot start a transaction within a
    transaction" otherwise, as the workers and the caller share it) and leaves no file."""
    from culm import api
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    monkeypatch.chdir(tmp_path)
    with culm.Runtime(url) as rt:
        ids = []
        for _ in range(30):
            start = EmptyStartEvent()
            start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
            tree = build_tree(start)
            assert api.run_pipeline(rt, tree).result
            ids.append(tree["id"])
        assert [rt.wait(i, timeout=30) for i in ids] == ["FINISHED"] * 30
    assert list(tmp_path.iterdir()) == []


def test_a_plain_path_with_uri_true_is_that_file(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    with culm.Runtime(f"sqlite:///{db}?uri=true", workers=0) as rt:
        assert rt.store.database_file == str(db)
    assert db.exists()


def test_keyword_options_without_a_broker_are_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """They are Celery options; without a broker, `db=` would have opened ./culm.db silently."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) db, prefix: .* only with broker="):
        culm.Runtime(db=f"sqlite:///{tmp_path}/x.db", prefix="p")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
