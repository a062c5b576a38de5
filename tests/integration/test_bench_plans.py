"""New work reads by index next to stored finished pipelines (issue 20's scale target):
``bench.plans`` runs run_pipeline, the engine's steps, the state tree of a running pipeline and
the console's first page on a database holding 4,000 finished pipelines (``bench.stored``'s fill),
and every statement's plan, read by the server itself (PostgreSQL ``EXPLAIN ANALYZE``, MariaDB
``ANALYZE``), must neither scan one of the tables that grow with stored work whole nor read more
rows than a few pipelines' worth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from backends import create_database, drop_database

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import plans, stored  # noqa: E402 - the bench package lives at the repository root

pytestmark = pytest.mark.timeout(600)
PIPELINES = 4000  # 40 run for real, 99 copies of each: 72,000 state rows
# Tables with rows per stored pipeline (culm_task, culm_root_count, the schedules stay small).
GROWING = ("culm_pipeline", "culm_node", "culm_state", "culm_process", "culm_execution_data",
           "culm_context_value", "culm_change", "culm_history", "culm_log", "culm_data")


@pytest.fixture(params=["postgres", "mariadb"])
def full_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(stored, "SEED", 40)
    url = create_database(request.param)
    from culm.storage.migrate import upgrade_database

    upgrade_database(url)
    assert stored.fill(url, PIPELINES) == PIPELINES
    yield url
    drop_database(url)


def test_new_work_reads_by_index_next_to_stored_pipelines(full_url):
    figures = plans.explain(full_url, plans.capture(full_url, pipelines=3))
    kinds = {kind for kind, _sql in figures}
    assert kinds == {"run_pipeline", "engine", "states", "list"}, kinds
    read = [f for f in figures.values() if "rows" in f]
    assert len(read) >= 0.8 * len(figures), figures  # nearly every statement was read by the server
    scans = {
        sql[:200]: f["scans"]
        for (_kind, sql), f in figures.items()
        if any(s.split("(")[0] in (f"Seq Scan:{t}", f"ALL:{t}") for t in GROWING for s in f.get("scans", []))
    }
    assert not scans, scans
    heavy = {sql[:200]: f for (_kind, sql), f in figures.items() if f.get("rows", 0) > plans.BIG}
    assert not heavy, heavy
