"""A worker whose engine thread is stuck in a database call does not keep its work for ever.

The heartbeat beats on connections of its own, so a worker whose engine thread waits for ever on
a statement (here: a trigger that sleeps in the first write of one node's execution data; on CI,
session 17, psycopg's pipelined commit left half sent) kept beating and kept its tasks' leases: the
pipeline stayed RUNNING with no reason shown. Its EngineWatchdog now logs why and ends the process
after CULM_ENGINE_STUCK_AFTER, PostgreSQL ends the statement of the vanished client
(client_connection_check_interval), and another worker takes the task over.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from backends import own_backend
from engine_fixtures import chain
from sqlalchemy import create_engine, text
from support import wait_until

from culm import api
from culm.builder import ServiceActivity, build_tree
from culm.dispatch.liveness import ENGINE_STUCK_EXIT

pytestmark = pytest.mark.timeout(180)

WEDGE = """
CREATE SEQUENCE culm_test_wedge;
CREATE FUNCTION culm_test_wedge() RETURNS trigger AS $$
BEGIN
    IF NEW.node_id = '{node}' AND nextval('culm_test_wedge') = 1 THEN
        PERFORM pg_sleep(3600);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER culm_test_wedge BEFORE INSERT OR UPDATE ON culm_execution_data
    FOR EACH ROW EXECUTE FUNCTION culm_test_wedge();
"""


def test_a_worker_whose_engine_is_stuck_in_the_database_hands_its_work_over(tmp_path: Path) -> None:
    backend = own_backend("postgres-redis", tmp_path, env={"CULM_ENGINE_STUCK_AFTER": "3"})
    admin = create_engine(backend.db_url, isolation_level="AUTOCOMMIT")
    try:
        act = ServiceActivity(component_code="dist_sleep")
        tree = build_tree(chain(act))
        with admin.connect() as conn:
            conn.exec_driver_sql(WEDGE.format(node=act.id))
        backend.concurrency = 1
        backend.start_workers(2)
        runtime = backend.runtime()
        began = time.monotonic()
        assert api.run_pipeline(runtime, tree).result

        def finished() -> bool:
            return api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["state"] == "FINISHED"

        wait_until(finished, 90, 0.2, what="the pipeline to finish on the other worker")
        took = time.monotonic() - began

        logs = [backend.worker_log(i) for i in range(2)]
        said = [line for log in logs for line in log.splitlines() if "has been in one batch" in line]
        assert len(said) == 1, said  # one process was stuck, and said so once
        assert re.search(r"for \d+ s, over CULM_ENGINE_STUCK_AFTER \(3 s\): this worker process \(.+, pid \d+\) "
                         rf"stops beating and exits with status {ENGINE_STUCK_EXIT}", said[0]), said[0]
        assert "psycopg" in "".join(logs)  # where the engine thread was: in the driver's wait
        # The wedged statement ended with its client: no session sleeps in the trigger any more.
        with admin.connect() as conn:
            sleeping = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                                         "AND datname = current_database()")).scalar()
        assert sleeping == 0
        # The wedged write is that of the call's outputs: its result was never committed, so the
        # call ran again on the other worker, once, as after a kill -9 of a worker in the middle of a
        # batch (docs/distributed.md, "A stuck engine").
        assert backend.executions()[act.id] == 2, backend.executions()
        print(f"finished {took:.1f} s after the run (engine stuck after 3 s)\n" + said[0])
    finally:
        admin.dispose()
        backend.teardown()
