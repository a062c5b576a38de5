"""Control commands on a cluster publish the work they make: it never waits for the relay.

A ``culm`` control command given ``--broker`` with ``--no-follow`` opened a runtime without the
broker: its work (the retried node's step, the resumed pipeline's) was only a committed row, which
the workers found when their relay looked for forgotten rows, ``CULM_RELAY_GRACE`` (15 s by
default) later. The workers here have a relay grace of 10 minutes, so work that needs the relay
does not move within the test's bound; work that was published moves at once.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from backends import HERE, REPO, own_backend
from engine_fixtures import node_state, run, wait_state
from storm_driver import relayed_lines

from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]

RELAY_GRACE = 600.0
# How long the resumed pipeline may take to finish: one activity and an end event on idle workers
# (milliseconds when the work is published), under a loaded machine; far below RELAY_GRACE.
MOVES_WITHIN = 30.0


def culm_command(backend, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "culm", *argv, "--db", backend.db_url, "--broker", backend.broker_url,
         "--prefix", backend.prefix], capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(HERE), str(REPO)))})
    assert done.returncode == 0 and "Traceback" not in done.stderr, (argv, done.stdout, done.stderr)
    return done


def one_activity(backend, code: str, state: str) -> tuple[Any, str, str]:
    """Workers with the long relay grace, and a pipeline of one ``code`` activity in ``state``:
    (runtime, pipeline id, activity id)."""
    backend.start_workers(1)
    rt = backend.runtime()
    act = ServiceActivity(component_code=code)
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    root = run(rt, build_tree(start))
    wait_state(rt, act.id, state, timeout=60)
    return rt, root, act.id


@pytest.mark.parametrize("follow", [False, True], ids=["no-follow", "follow"])
@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_pause_retry_resume_through_cli_processes_moves_without_the_relay(kind: str, follow: bool,
                                                                          tmp_path: Path) -> None:
    backend = own_backend(kind, tmp_path, env={"CULM_RELAY_GRACE": f"{RELAY_GRACE:g}"})
    try:
        rt, root, act = one_activity(backend, "t_fail", "FAILED")
        mode = () if follow else ("--no-follow",)
        culm_command(backend, "pause", root, *mode)
        assert node_state(rt, root)["state"] == "SUSPENDED"
        culm_command(backend, "retry", act, *mode, "--data", json.dumps({"ok": True}))
        assert node_state(rt, act)["state"] == "READY"  # parked on the paused pipeline
        culm_command(backend, "resume", root, *mode)
        resumed = time.monotonic()
        wait_state(rt, root, "FINISHED", timeout=MOVES_WITHIN)
        took = time.monotonic() - resumed
        assert node_state(rt, act)["state"] == "FINISHED"
        assert not relayed_lines(backend), f"the resumed work reached a worker through the relay ({took:.1f} s)"
    finally:
        backend.teardown()


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_a_callback_through_a_cli_process_moves_without_the_relay(kind: str, tmp_path: Path) -> None:
    backend = own_backend(kind, tmp_path, env={"CULM_RELAY_GRACE": f"{RELAY_GRACE:g}"})
    try:
        rt, root, act = one_activity(backend, "t_callback", "RUNNING")
        culm_command(backend, "callback", act, "--no-follow", "--data", json.dumps({"ok": True}))
        wait_state(rt, root, "FINISHED", timeout=MOVES_WITHIN)
        assert not relayed_lines(backend)
    finally:
        backend.teardown()


def culm_said(backend, *argv: str, broker: bool = True, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """`culm ARGV --db DB [--broker B --prefix P]`: its exit code and what it printed."""
    cluster = ("--broker", backend.broker_url, "--prefix", backend.prefix) if broker else ()
    return subprocess.run(
        [sys.executable, "-m", "culm", *argv, "--db", backend.db_url, *cluster], capture_output=True, text=True,
        timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join((str(HERE), str(REPO))), **(env or {})})


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_a_control_command_on_a_cluster_reports_the_engine_s_verdict_and_how_the_pipeline_then_stands(
        kind: str, tmp_path: Path) -> None:
    """`culm retry NODE --db SERVER` printed "retried" and exited while the workers had not yet
    run the node: whether it failed again was for `culm status` to find out (on the embedded
    runtime the command says it). Now it follows the workers' progress as `culm run` does on a
    cluster: with --broker (published) and without (the workers' relay finds the work), the node
    that failed again is named with its ex_data, exit 0 (the command was accepted); a refusal is
    one line, exit 5; with no worker left, the wait ends at work that nothing takes, saying what
    to check, not after --timeout."""
    backend = own_backend(kind, tmp_path, env={"CULM_RELAY_GRACE": "2"})
    try:
        rt, root, act = one_activity(backend, "t_fail", "FAILED")
        for broker in (True, False):
            out = culm_said(backend, "retry", act, "--timeout", "60", broker=broker)
            said = out.stdout + out.stderr
            assert out.returncode == 0 and "Traceback" not in said, said
            lines = out.stdout.splitlines()
            assert lines[0] == f"retried {act}", said
            assert f"FAILED    node {act}" in out.stdout, said  # the workers' verdict on the node, followed
            assert f"FAILED {act}" in lines and "timed out" not in said, said
            assert f"`culm retry {act} [--data '{{...}}'] --db {shlex.quote(backend.db_url)}" in out.stdout, said
        refused = culm_said(backend, "callback", act)
        assert refused.returncode == 5 and refused.stdout == "", refused.stdout + refused.stderr
        assert refused.stderr.strip() == f"error: cannot call back node {act}: its state is FAILED, expected RUNNING"
        backend.stop_workers()
        stalled = culm_said(backend, "retry", act, "--data", json.dumps({"ok": True}), "--timeout", "100")
        said = stalled.stdout + stalled.stderr
        assert stalled.returncode == 0 and "Traceback" not in said, said
        assert f"pipeline {root} is RUNNING, and nothing takes its work:" in stalled.stdout, said
        assert "check that a worker runs" in stalled.stdout and "timed out" not in said, said
        assert node_state(rt, act)["state"] == "READY"  # recorded, waiting for a worker
    finally:
        backend.teardown()
