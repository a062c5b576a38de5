"""kill -9 of the process holding a node's deadline: another process fires it, once, from the
database (the killed one's memory is gone), at the time set when the node started.

Embedded: a process on a SQLite file is killed; a runtime opened on the file afterwards takes the
work over. Distributed: the only worker, which runs the hung call and holds the deadline's timer
message, is killed; a worker started afterwards fires it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import components
import pytest
from backends import BACKENDS, own_backend
from engine_fixtures import chain, outputs, wait_state

import culm
from culm import api
from culm.builder import ServiceActivity, Var, build_tree

APP = Path(__file__).with_name("timeout_app.py")
APP_PATH = os.pathsep.join((str(APP.parent), str(APP.parent.parent)))
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def gate_name():
    name = f"hang-{uuid.uuid4().hex[:8]}"
    yield name
    components.gate(name).set()


def _fired_once(runtime: Any, root_id: str, node_id: str, seconds: int) -> None:
    entry = wait_state(runtime, node_id, "FAILED", timeout=40)
    out = outputs(runtime, node_id)
    assert out["ex_data"].startswith(f"timed out after {seconds} s") and out["_timed_out"] is True
    # The deadline counts from the node's start, not from the takeover.
    assert (entry["archived_time"] - entry["started_time"]).total_seconds() >= seconds
    failed = [c for c in runtime.changes(root_id=root_id, timeout=0) if c.node_id == node_id and c.to_state == "FAILED"]
    assert len(failed) == 1, failed


def test_kill_9_of_the_embedded_process_holding_a_deadline(tmp_path: Path, gate_name: str) -> None:
    db = f"sqlite:///{tmp_path}/timeout.db"
    env = {**os.environ, "PYTHONPATH": APP_PATH}
    first = subprocess.Popen([sys.executable, str(APP), db, gate_name, "3"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        info = json.loads(first.stdout.readline())
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    with culm.Runtime(db) as runtime:
        # The replayed call hangs at the gate again; the deadline the dead process armed fires.
        _fired_once(runtime, info["root"], info["node"], 3)
        components.gate(gate_name).set()


@pytest.mark.parametrize("name", list(BACKENDS))
def test_kill_9_of_the_worker_holding_a_deadline(name: str, tmp_path: Path, gate_name: str) -> None:
    backend = own_backend(name, tmp_path)
    try:
        backend.start_workers(1)
        runtime = backend.runtime()
        act = ServiceActivity(component_code="t_gate",
                              timeout_config={"enable": True, "action": "forced_fail", "seconds": 4})
        act.component.inputs.gate = Var(type=Var.PLAIN, value=gate_name)
        tree = build_tree(chain(act))
        assert api.run_pipeline(runtime, tree).result
        wait_state(runtime, act.id, "RUNNING", timeout=20)
        backend.kill_worker(0)
        backend.start_workers(1)
        _fired_once(runtime, tree["id"], act.id, 4)
        components.gate(gate_name).set()
    finally:
        components.gate(gate_name).set()
        backend.teardown()
