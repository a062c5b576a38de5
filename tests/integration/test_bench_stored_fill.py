"""The fill of ``python -m bench.stored``: copies of real finished pipelines that read back as real
ones (fresh ids, every table, the feed in time order, the kept counts per state counted again), on
SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from backends import create_database, drop_database

import culm
from culm import api

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import stored  # noqa: E402 - the bench package lives at the repository root

pytestmark = pytest.mark.timeout(120)
PIPELINES = 60  # 30 run for real (the largest divisor up to 30 here), then one copy of each


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(stored, "SEED", 30)
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fill.db'}"
        return
    url = create_database(request.param)
    from culm.storage.migrate import upgrade_database

    upgrade_database(url)
    yield url
    drop_database(url)


def _rows(url: str, sql: str) -> list[tuple]:
    db = stored._Db(url)
    try:
        return [tuple(r) for r in db.run(sql)]
    finally:
        db.close()


def _tables(url: str) -> list[str]:
    if url.startswith("sqlite"):
        return [r[0] for r in _rows(url, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    schema = "DATABASE()" if url.startswith("mysql") else "current_schema()"
    return [r[0] for r in _rows(url, f"SELECT table_name FROM information_schema.tables WHERE table_schema = {schema}")]


def test_seed_size_divides_the_count():
    assert stored.seed_size(100_000) == 200
    assert stored.seed_size(300) == 150
    assert stored.seed_size(7) == 7
    assert stored.seed_size(401) == 1  # a prime: one real pipeline, 400 copies


def test_fill_copies_every_table_under_fresh_ids(empty_url):
    assert stored.fill(empty_url, PIPELINES) == PIPELINES
    counts = {t: _rows(empty_url, f"SELECT COUNT(*) FROM {t}")[0][0] for t in
              ("culm_pipeline", "culm_node", "culm_state", "culm_process", "culm_execution_data",
               "culm_context_value", "culm_change")}
    per_pipeline = {t: n / PIPELINES for t, n in counts.items()}
    assert per_pipeline["culm_pipeline"] == 1
    assert per_pipeline["culm_state"] == 18  # 17 executed nodes and the root
    assert all(n == int(n) and n > 0 for n in per_pipeline.values()), per_pipeline  # whole copies
    ids = [r[0] for r in _rows(empty_url, "SELECT node_id FROM culm_state")]
    assert len(set(ids)) == len(ids)
    assert sum(i.startswith("c") and len(i) == 33 for i in ids) == len(ids) // 2  # the copies' ids
    assert _rows(empty_url, "SELECT DISTINCT name FROM culm_state") == [("FINISHED",)]
    assert not [t for t in _tables(empty_url) if t.startswith("seed_")]
    # The feed's time grows with seq, give or take the order in which concurrent writers commit
    # (culm.storage.feed finds a root's history by time, allowing for CLOCK_SKEW).
    times = [r[0] for r in _rows(empty_url, 'SELECT "time" FROM culm_change ORDER BY seq')]
    latest = [max(times[: i + 1]) for i in range(len(times))]
    assert all(t >= top - 1.0 for t, top in zip(times, latest, strict=True))
    with culm.Runtime(empty_url, workers=0) as rt:
        copy = _rows(empty_url, "SELECT node_id FROM culm_state WHERE parent_id = '' AND node_id LIKE 'c%'")[0][0]
        tree = api.get_pipeline_states(rt, copy).data[copy]
        assert tree["state"] == "FINISHED"
        assert len(tree["children"]) == 17
        history = list(rt.changes(copy, 0, timeout=0))
        assert history and {c.root_id for c in history} == {copy}
        assert rt.wait(copy, 1) == "FINISHED"
        listed = api.list_pipelines(rt, limit=1000).data
        assert listed["total"] == PIPELINES and listed["counts"] == {"FINISHED": PIPELINES}
        assert len(listed["items"]) == PIPELINES
    # The kept counts (what the unfiltered list above reported) hold the copies: counted again.
    assert _rows(empty_url, "SELECT name, SUM(pipelines) FROM culm_root_count GROUP BY name HAVING SUM(pipelines) <> 0") \
        == [("FINISHED", PIPELINES)]
    # The stored bytes of each copy (revision 0010's triggers) are its seed's, kept under its own root.
    held = _rows(empty_url, "SELECT root_id, SUM(bytes) FROM culm_root_bytes GROUP BY root_id")
    assert len(held) == PIPELINES and all(int(b) > 0 for _r, b in held), held[:3]
