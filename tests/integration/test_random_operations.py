"""Random sequences of operator commands on a running pipeline never break the engine's promises.

Whatever order pause, resume, retry, skip, callback, forced fail and revoke arrive in, every call
answers with a result (never raises), states stay in the table, and a FINISHED pipeline never keeps
a RUNNING or FAILED node (the bamboo defect the contract names).
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_fixtures import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import culm
from culm import api, states
from culm.api import EngineAPIResult
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
)
from culm.core.invariants import check
from culm.core.snapshots import read_snapshot

OPS = ["pause", "resume", "retry", "retry_ok", "skip", "callback", "callback_fail", "force_fail", "revoke", "settle"]


def _tree() -> tuple[dict[str, Any], str, str]:
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    fail = ServiceActivity(component_code="t_fail")
    fail.component.inputs.x = Var(type=Var.PLAIN, value="x")
    wait = ServiceActivity(component_code="t_callback")
    start.extend(pg).connect(fail, wait).converge(cg).extend(ServiceActivity(component_code="t_none")).extend(end)
    return build_tree(start), fail.id, wait.id


def _apply(runtime: Any, op: str, root: str, fail: str, wait: str) -> EngineAPIResult | None:
    children = (api.get_pipeline_states(runtime, root).data or {}).get(root, {}).get("children", {})
    version = children.get(wait, {}).get("version", "v-unknown")
    calls = {
        "pause": lambda: api.pause_pipeline(runtime, root),
        "resume": lambda: api.resume_pipeline(runtime, root),
        "retry": lambda: api.retry_node(runtime, fail),
        "retry_ok": lambda: api.retry_node(runtime, fail, data={"ok": True}),
        "skip": lambda: api.skip_node(runtime, fail),
        "callback": lambda: api.callback(runtime, wait, version, {"ok": True}),
        "callback_fail": lambda: api.callback(runtime, wait, version, {"ok": False}),
        "force_fail": lambda: api.forced_fail_activity(runtime, wait, "forced"),
        "revoke": lambda: api.revoke_pipeline(runtime, root),
    }
    if op == "settle":
        runtime.wait_idle(5)
        return None
    return calls[op]()


def _check_invariants(runtime: Any, root: str) -> None:
    # One read transaction sees one committed moment: every promise must hold at any of them.
    assert check(read_snapshot(runtime.engine, root)) == []
    entry = api.get_pipeline_states(runtime, root).data[root]
    names = {c["state"] for c in entry["children"].values()}
    assert entry["state"] in states.TRANSITIONS
    assert names <= set(states.TRANSITIONS)
    if entry["state"] == states.FINISHED:
        assert not names & {states.RUNNING, states.FAILED}, entry["children"]


@pytest.mark.timeout(300)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=12))
def test_random_command_sequences_keep_the_engine_consistent(tmp_path_factory: Any, ops: list[str]) -> None:
    db = tmp_path_factory.mktemp("ops") / "t.db"
    with culm.Runtime(f"sqlite:///{db}") as runtime:
        tree, fail, wait = _tree()
        root = run(runtime, tree)
        for op in ops:
            res = _apply(runtime, op, root, fail, wait)
            assert res is None or isinstance(res, EngineAPIResult)
            if res is not None and not res.result:
                assert res.message and res.message != "fail"
            _check_invariants(runtime, root)
        runtime.wait_idle(5)
        _check_invariants(runtime, root)
