"""Who runs a server database's work when a command is given no ``--broker``.

``culm run TREE --db postgresql://...`` runs the pipeline in its own process when no ``culm worker``
serves the database, and a failed node's hint says to ``culm retry NODE --import MODULE --db ...``;
the retry, followed as the hint says, runs the node (it used to record it and leave it READY for
good, saying "the workers go on with it" with no worker there). When a live ``culm worker`` is
registered on the database, ``culm run``, ``culm run --attach`` and the control commands run no
work themselves: the worker's relay takes it up, the command follows it, and its hints need no
``--import``. An embedded runner on a server database never voids the leases of another runner.
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
from backends import HERE, REPO, create_database, drop_database, own_backend
from storm_driver import relayed_lines
from support import wait_until

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.core.records import now
from culm.storage import migrate

pytestmark = [pytest.mark.timeout(300)]

RELAY_GRACE = "1"  # the workers' (and the commands'): work recorded without a broker moves in seconds


def failing_tree(path: Path) -> tuple[dict, str]:
    """A tree of one ``t_fail`` activity (fails unless its input ok is true), written to ``path``:
    (tree, activity id)."""
    step = ServiceActivity(component_code="t_fail")
    start = EmptyStartEvent()
    start.extend(step).extend(EmptyEndEvent())
    tree = build_tree(start)
    path.write_text(json.dumps(tree))
    return tree, step.id


def gated_tree(name: str) -> tuple[dict, str]:
    """A tree of one ``t_gate`` activity, whose call waits (15 s at most) for ``gate(name)``:
    (tree, activity id). The shared gates are reset first."""
    from components import reset_shared

    from culm.builder import Var

    reset_shared()
    step = ServiceActivity(component_code="t_gate")
    step.component.inputs.gate = Var(type=Var.PLAIN, value=name)
    start = EmptyStartEvent()
    start.extend(step).extend(EmptyEndEvent())
    return build_tree(start), step.id


def culm_cli(url: str, where: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``culm ARGV --db URL`` run from ``where`` (no broker, none in the environment)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(HERE), str(REPO))), "CULM_RELAY_GRACE": RELAY_GRACE}
    for name in ("CULM_BROKER_URL", "CULM_TEST_EXEC_LOG", "CULM_IMPORTS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "culm", *argv, "--db", url], capture_output=True, text=True,
                          timeout=150, cwd=where, env=env)
    assert "Traceback" not in done.stderr, (argv, done.stdout, done.stderr)
    return done


def node_states(url: str, where: Path, root_id: str) -> dict[str, str]:
    status = culm_cli(url, where, "status", root_id, "--json")
    found: dict[str, str] = {}
    stack: list[Any] = [json.loads(status.stdout)]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "id" in item and "state" in item:
                found[item["id"]] = item["state"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def advised_retry(stdout: str, node: str) -> list[str]:
    """The `culm retry` command a failure hint names, as argv after ``culm`` (without ``[--data ...]``)."""
    line = next(x for x in stdout.splitlines() if f"`culm retry {node} " in x)
    command = line.split("`culm retry ", 1)[1].split("`", 1)[0].replace(" [--data '{...}']", "")
    return ["retry", *shlex.split(command)]


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_the_retry_culm_run_advises_without_a_worker_runs_the_node_here(kind: str, tmp_path: Path) -> None:
    tree, act = failing_tree(tmp_path / "tree.json")
    url = create_database(kind)
    try:
        migrate.upgrade_database(url)
        ran = culm_cli(url, tmp_path, "run", "tree.json", "--import", "components", "--timeout", "60")
        assert ran.returncode == 1, ran.stdout + ran.stderr
        assert ran.stdout.startswith(f"running: pipeline {tree['id']} "), ran.stdout
        advised = advised_retry(ran.stdout, act)
        assert advised == ["retry", act, "--import", "components", "--db", url], ran.stdout
        retried = culm_cli(url, tmp_path, *advised[:-2], "--data", json.dumps({"ok": True}), "--timeout", "60")
        said = retried.stdout + retried.stderr
        assert retried.returncode == 0 and retried.stdout.splitlines()[0] == f"retried {act}", said
        assert f"pipeline {tree['id']} FINISHED" in retried.stdout and "workers" not in said, said
        states = node_states(url, tmp_path, tree["id"])
        assert states[tree["id"]] == states[act] == "FINISHED", states
    finally:
        drop_database(url)


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_with_a_live_worker_the_commands_follow_and_the_worker_runs_the_work(kind: str, tmp_path: Path) -> None:
    """No --broker and no --import: the worker runs the run and the retry (its relay took the work
    up), the commands follow it; once the workers stopped, the same commands run the work here."""
    backend = own_backend(kind, tmp_path, env={"CULM_RELAY_GRACE": RELAY_GRACE, "CULM_RELAY_INTERVAL": "0.5"})
    try:
        backend.start_workers(1)
        tree, act = failing_tree(tmp_path / "tree.json")
        ran = culm_cli(backend.db_url, tmp_path, "run", "tree.json", "--timeout", "60")
        said = ran.stdout + ran.stderr
        assert ran.returncode == 1 and ran.stdout.startswith("submitted to the workers: "), said
        assert "a `culm worker` serves this database: its relay takes up the work" in ran.stderr, said
        assert f"FAILED {act}" in ran.stdout.splitlines(), said
        assert advised_retry(ran.stdout, act) == ["retry", act, "--db", backend.db_url], said  # no --import
        retried = culm_cli(backend.db_url, tmp_path, "retry", act, "--data", json.dumps({"ok": True}),
                           "--timeout", "60")
        said = retried.stdout + retried.stderr
        assert retried.returncode == 0 and f"pipeline {tree['id']} FINISHED" in retried.stdout, said
        # This process has no t_fail (no --import): the worker's relay took both steps up.
        assert relayed_lines(backend), backend.worker_log(0)[-3000:]

        backend.stop_workers()  # a clean stop: no worker is registered any more
        tree2, act2 = failing_tree(tmp_path / "tree2.json")
        ran = culm_cli(backend.db_url, tmp_path, "run", "tree2.json", "--import", "components", "--timeout", "60")
        assert ran.returncode == 1 and ran.stdout.startswith("running: "), ran.stdout + ran.stderr
        advised = advised_retry(ran.stdout, act2)
        assert advised == ["retry", act2, "--import", "components", "--db", backend.db_url], ran.stdout
        retried = culm_cli(backend.db_url, tmp_path, *advised[:-2], "--data", json.dumps({"ok": True}))
        assert retried.returncode == 0 and f"pipeline {tree2['id']} FINISHED" in retried.stdout, retried.stdout
    finally:
        backend.teardown()


def test_an_embedded_runner_on_a_server_database_keeps_another_runner_s_lease(tmp_path: Path) -> None:
    """Another runner's lease on a task (a `culm worker`, another `culm run`) survives an embedded
    runtime starting on the same database: the task stays its, and the node does not run twice."""
    tree, act = failing_tree(tmp_path / "tree.json")
    url = create_database("postgres")
    try:
        migrate.upgrade_database(url)
        with culm.Runtime(url, workers=0) as recorder:
            assert api.run_pipeline(recorder, tree).result
            with recorder.store.transaction() as unit:
                tasks = unit.pending_tasks(now() + 1, 10)
                assert len(tasks) == 1
                assert unit.claim_task(tasks[0].id, "elsewhere:1", now() + 60, now()) is not None
        with culm.Runtime(url) as runner:
            assert runner.dispatcher is not None
            wait_until(lambda: runner.dispatcher.sweep() == 0, 10, 0.2, what="a sweep that takes nothing")
            with runner.store.reading() as unit:
                assert unit._one("SELECT owner FROM culm_task WHERE id = ?", [tasks[0].id]) == ("elsewhere:1",)
            states = api.get_pipeline_states(runner, tree["id"]).data[tree["id"]]["children"]
            assert act not in states, states  # its start event's task is the other runner's
    finally:
        drop_database(url)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_the_callback_a_running_culm_run_advises_runs_beside_it(kind: str, tmp_path: Path) -> None:
    """Two processes run work on one server database: `culm run` waiting for a callback, and the
    `culm callback` its WAITING line names (with the --import it needs there), which runs the
    node's schedule; the run sees the pipeline finish."""
    step = ServiceActivity(component_code="t_callback")
    start = EmptyStartEvent()
    start.extend(step).extend(EmptyEndEvent())
    tree = build_tree(start)
    (tmp_path / "tree.json").write_text(json.dumps(tree))
    url = create_database(kind)
    try:
        migrate.upgrade_database(url)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(HERE), str(REPO))), "CULM_RELAY_GRACE": RELAY_GRACE}
        env.pop("CULM_BROKER_URL", None)
        run = subprocess.Popen([sys.executable, "-m", "culm", "run", "tree.json", "--import", "components",
                                "--timeout", "90", "--db", url], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert run.stdout is not None
            lines = []
            for line in run.stdout:  # bounded: the run's own --timeout ends it
                lines.append(line)
                if "WAITING" in line:
                    break
            hint = lines[-1].split("from another shell: `culm ", 1)[1].split("`", 1)[0]
            assert hint == f"callback {step.id} --data '{{...}}' --import components --db {url}", lines
            argv = shlex.split(hint.replace("'{...}'", shlex.quote(json.dumps({"ok": True}))))
            called = culm_cli(url, tmp_path, *argv[:-2])
            assert called.returncode == 0, called.stdout + called.stderr
            out, errors = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        assert run.returncode == 0 and f"pipeline {tree['id']} FINISHED" in out, "".join(lines) + out + errors
    finally:
        drop_database(url)


def test_an_embedded_runner_on_a_server_database_keeps_its_lease_while_a_call_runs_even_past_close(
        tmp_path: Path) -> None:
    """Its lease of a step whose call runs is its own (another runner takes it only once it ran
    out), and stays so when the runtime closes with the call still running: close() does not wait
    for user code, and a lease ended then let a second runtime run the same step beside the first
    (review22b F1)."""
    import uuid

    from components import gate

    name = f"cli22-{uuid.uuid4().hex[:8]}"
    tree, act = gated_tree(name)
    url = create_database("postgres")
    try:
        migrate.upgrade_database(url)
        runner = culm.Runtime(url, workers=2)
        try:
            assert api.run_pipeline(runner, tree).result

            def lease() -> tuple[Any, ...] | None:
                with runner.store.reading() as unit:
                    return unit._one("SELECT owner, claimed_until FROM culm_task WHERE node_id = ?", [act])

            held = wait_until(lambda: (row := lease()) is not None and row[0] is not None and row, 30, 0.1,
                              what="the gated step to be claimed")
            assert held[0] == runner.engine.owner and float(held[1]) > now() + 30, held
        finally:
            runner.close()
        with culm.Runtime(url, workers=0) as reader, reader.store.reading() as unit:
            owner, until = unit._one("SELECT owner, claimed_until FROM culm_task WHERE node_id = ?", [act])
        assert owner == held[0] and float(until) > now() + 20, (owner, until)
    finally:
        gate(name).set()
        drop_database(url)


def _callback_tree() -> tuple[dict, str]:
    step = ServiceActivity(component_code="t_callback")
    start = EmptyStartEvent()
    start.extend(step).extend(EmptyEndEvent())
    return build_tree(start), step.id


def _callback_from_a_process_without_a_runner(url: str, node: str, version: str) -> None:
    """``api.callback`` from a process of its own that runs no work (``workers=0``), which exits."""
    script = ("import sys, culm\nfrom culm import api\n"
              "with culm.Runtime(sys.argv[1], workers=0) as rt:\n"
              "    assert api.callback(rt, sys.argv[2], sys.argv[3], {'ok': True}).result\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(HERE), str(REPO)))}
    done = subprocess.run([sys.executable, "-c", script, url, node, version], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def _waiting_version(rt: culm.Runtime, node: str) -> str:
    def waiting() -> str | None:
        state = api.get_children_states(rt, node).data.get(node) or {}
        outputs = api.get_execution_data_outputs(rt, node).data if state.get("state") == "RUNNING" else None
        return state["version"] if outputs and outputs.get("waiting") else None

    return wait_until(waiting, 30, 0.05, what=f"node {node} to wait for its callback")


def _finished_after(rt: culm.Runtime, root: str, since: float, within: float) -> float:
    wait_until(lambda: api.get_pipeline_states(rt, root).data[root]["state"] == "FINISHED", within, 0.05,
               what=f"pipeline {root} to finish")
    return time.monotonic() - since


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_an_embedded_runner_alone_takes_up_a_callback_another_process_recorded_at_once(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """review22b F2: an embedded runner on a server database left a task recorded by another
    process for CULM_RELAY_GRACE (15 s) before taking it, as if that process were about to claim
    it; one that runs no work (workers=0), and has exited, never will. With no other live runner
    registered, the callback's step runs at the runner's next sweep (a second)."""
    monkeypatch.delenv("CULM_RELAY_GRACE", raising=False)  # the default, 15 s
    tree, node = _callback_tree()
    url = create_database(kind)
    try:
        migrate.upgrade_database(url)
        with culm.Runtime(url, workers=2) as runner:
            assert api.run_pipeline(runner, tree).result
            version = _waiting_version(runner, node)
            _callback_from_a_process_without_a_runner(url, node, version)
            exited = time.monotonic()
            took = _finished_after(runner, tree["id"], exited, 30)
            print(f"\n{kind}: the callback another process recorded ran {took:.1f} s after that process exited")
            assert took < 5, f"the runner waited {took:.1f} s for a callback nobody else would take up"
    finally:
        drop_database(url)


def test_beside_another_live_runner_an_embedded_runner_keeps_the_grace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With another live runner registered (another `culm run`, here a second runtime), a task it
    did not record itself may be that runner's to claim: the grace applies as before."""
    monkeypatch.setenv("CULM_RELAY_GRACE", "4")
    tree, node = _callback_tree()
    url = create_database("postgres")
    try:
        migrate.upgrade_database(url)
        with culm.Runtime(url, workers=2) as runner, culm.Runtime(url, workers=1) as other:
            assert other.dispatcher is not None
            assert api.run_pipeline(runner, tree).result
            version = _waiting_version(runner, node)
            _callback_from_a_process_without_a_runner(url, node, version)
            exited = time.monotonic()  # the callback's task was recorded before, as the process ran
            took = _finished_after(runner, tree["id"], exited, 30)
            assert took >= 2.5, f"taken up {took:.1f} s after, within the grace (4 s) of a live runner"
    finally:
        drop_database(url)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_step_of_a_killed_culm_run_is_taken_up_at_once_by_the_next_runner(kind: str, tmp_path: Path) -> None:
    """`culm run` on a server database killed (-9) while its step's call runs: the step's lease (60 s)
    held it from the next runner until it ran out, and the grace (15 s) more. The next runner on
    this machine finds that process gone in the registry, frees its leases and runs the step at
    once; the step had not finished, so it runs again there (once)."""
    from components import gate

    name = f"killed-run-{os.getpid()}-{time.monotonic_ns()}"
    tree, act = gated_tree(name)
    (tmp_path / "tree.json").write_text(json.dumps(tree))
    url = create_database(kind)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(HERE), str(REPO)))}
    for unset in ("CULM_BROKER_URL", "CULM_RELAY_GRACE", "CULM_LEASE_SECONDS"):
        env.pop(unset, None)
    try:
        migrate.upgrade_database(url)
        run = subprocess.Popen([sys.executable, "-m", "culm", "run", "tree.json", "--import", "components",
                                "--timeout", "120", "--db", url], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with culm.Runtime(url, workers=0) as reader:
                def leased() -> bool:
                    with reader.store.reading() as unit:
                        row = unit._one("SELECT owner, claimed_until FROM culm_task WHERE node_id = ?", [act])
                    return row is not None and row[0] is not None and float(row[1]) > now() + 30

                wait_until(leased, 60, 0.05, what="the culm run to claim the gated step")
        finally:
            run.kill()
            run.wait(10)
        killed = time.monotonic()
        gate(name).set()  # the step's next call returns at once
        with culm.Runtime(url, workers=2) as runner:
            took = _finished_after(runner, tree["id"], killed, 60)
            print(f"\n{kind}: the killed culm run's step finished {took:.1f} s after the kill (lease 60 s)")
            assert took < 10, f"the next runner took the killed run's step up only {took:.1f} s after the kill"
            assert api.get_pipeline_states(runner, tree["id"]).data[tree["id"]]["children"][act]["state"] == "FINISHED"
    finally:
        gate(name).set()
        drop_database(url)
