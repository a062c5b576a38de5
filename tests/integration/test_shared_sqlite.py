"""Two processes on one SQLite file: when the runner exits, another live process takes over.

Process A holds the runner lock of the file; the test process opens a ``Runtime`` on the same file
too, so it stands by. When A exits (closing cleanly or killed), the test process takes the lock and
runs what A left within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

import culm
from culm import api

APP = Path(__file__).with_name("crash_app.py")
pytestmark = pytest.mark.timeout(120)
# A runner that imports no component of the tests (it runs only culm's own code).
BARE_RUNNER = ("import sys, culm; rt = culm.Runtime(sys.argv[1]); print('ready', flush=True); "
               "sys.stdin.readline(); rt.close()")


def _runner(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "CRASH_LOG": str(tmp_path / "exec.log"), "PYTHONPATH": str(APP.parent)}
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _state(rt: culm.Runtime, root: str, node: str | None = None) -> str:
    entry = api.get_pipeline_states(rt, root).data[root]
    return str(entry["state"] if node is None else entry["children"].get(node, {}).get("state"))


@pytest.mark.parametrize("exit_how", ["close", "kill -9"])
def test_a_live_process_takes_over_when_the_runner_exits(
    tmp_path: Path, exit_how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crash_app

    monkeypatch.setattr(crash_app, "LOG", str(tmp_path / "exec.log"))  # where its component writes

    db = f"sqlite:///{tmp_path}/shared.db"
    first = _runner(tmp_path, str(APP), "serve", db)
    with culm.Runtime(db) as rt:
        assert rt.dispatcher is None, "the lock is the first process's: this one submits and stands by"
        tree = crash_app.chain_with_parallel()
        assert api.run_pipeline(rt, tree).result
        root = tree["id"]
        # The first process runs it...
        wait_for(lambda: sum(1 for e in api.get_pipeline_states(rt, root).data[root]["children"].values()
                             if e["state"] == "FINISHED") >= 4, 30, message="the runner to make progress")
        if exit_how == "close":
            assert first.stdin is not None
            first.stdin.write("close\n")
            first.stdin.flush()
        else:
            os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
        assert _state(rt, root) == "RUNNING", "the runner finished before it exited: nothing to take over"
        # ...and this one takes over what it left.
        wait_for(lambda: rt.dispatcher is not None, 10, message="this process to take the runner lock")
        wait_for(lambda: _state(rt, root) == "FINISHED", 30, message="the pipeline to finish here")
        children = api.get_pipeline_states(rt, root).data[root]["children"]
        assert all(e["state"] == "FINISHED" for e in children.values())


def test_missing_component_names_the_process_then_retry_from_one_that_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crash_app

    monkeypatch.setattr(crash_app, "LOG", str(tmp_path / "exec.log"))

    db = f"sqlite:///{tmp_path}/shared.db"
    first = _runner(tmp_path, "-c", BARE_RUNNER, db)
    with culm.Runtime(db) as rt:
        assert rt.dispatcher is None
        tree = crash_app.callback_tree()  # crash_wait, then crash_slow: neither is known to the runner
        assert api.run_pipeline(rt, tree).result
        root = tree["id"]
        wait_id = tree["flows"][tree["start_event"]["outgoing"]]["target"]
        wait_for(lambda: _state(rt, root, wait_id) == "FAILED", 30, message="the node to fail in the runner")
        ex_data = api.get_execution_data_outputs(rt, wait_id).data["ex_data"]
        assert "crash_wait" in ex_data
        assert f"pid {first.pid}" in ex_data
        assert "retry" in ex_data and "import" in ex_data

        assert first.stdin is not None
        first.stdin.write("close\n")
        first.stdin.flush()
        first.wait(30)
        wait_for(lambda: rt.dispatcher is not None, 10, message="this process to take the runner lock")
        assert api.retry_node(rt, wait_id).result
        wait_for(lambda: _state(rt, root, wait_id) == "RUNNING", 10, message="the retried node to wait")
        version = api.get_pipeline_states(rt, root).data[root]["children"][wait_id]["version"]
        assert api.callback(rt, wait_id, version, {"k": 2}).result
        wait_for(lambda: _state(rt, root) == "FINISHED", 30, message="the pipeline to finish here")
        assert api.get_execution_data_outputs(rt, wait_id).data["got"] == {"k": 2}
