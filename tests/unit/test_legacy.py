"""The v3 facade: PipelineParser and task_service on an in-memory runtime."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from support import wait_until

import culm
from culm import legacy
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components import Component, Service
from culm.errors import NotFoundError, TreeInvalidError
from culm.legacy import ActionResult, PipelineParser, task_service

pytestmark = pytest.mark.timeout(60)

TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


class GateService(Service):
    """Fails unless its ``ok`` input is truthy."""

    def execute(self, data, parent_data):
        data.set_outputs("seen", data.get_one_of_inputs("ok"))
        if not data.get_one_of_inputs("ok"):
            data.set_outputs("ex_data", "gate closed")
            return False
        return True


class GateComponent(Component):
    code = "legacy_test_gate"
    name = "gate"
    bound_service = GateService


class WaitService(Service):
    """Waits for one callback and stores its payload."""

    __need_schedule__ = True
    interval = None

    def execute(self, data, parent_data):
        data.set_outputs("waiting", True)
        return True

    def schedule(self, data, parent_data, callback_data=None):
        data.set_outputs("payload", callback_data)
        return True


class WaitComponent(Component):
    code = "legacy_test_wait"
    name = "wait"
    bound_service = WaitService


@pytest.fixture
def runtime() -> Iterator[culm.Runtime]:
    rt = culm.Runtime("sqlite:///:memory:")
    legacy.set_default_runtime(rt)
    try:
        yield rt
    finally:
        legacy.set_default_runtime(None)
        rt.close()


def chain(code: str, **inputs: Any) -> tuple[dict, str]:
    start = EmptyStartEvent()
    act = ServiceActivity(component_code=code)
    for key, value in inputs.items():
        setattr(act.component.inputs, key, Var(type=Var.PLAIN, value=value))
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act.id


def state_of(node_id: str) -> str | None:
    try:
        return task_service.get_state(node_id)["state"]
    except NotFoundError:
        return None


def test_quick_start_of_the_v3_readme(runtime: culm.Runtime) -> None:
    tree, act_id = chain("example_component")
    pipeline = PipelineParser(pipeline_tree=tree).parse()
    assert pipeline.id == tree["id"]

    result = task_service.run_pipeline(pipeline)
    assert isinstance(result, ActionResult) and result.result, result.message
    wait_until(lambda: state_of(pipeline.id) == "FINISHED", 20.0, 0.02)

    state = task_service.get_state(pipeline.id)
    assert set(state) == {"id", "state", "start_time", "finish_time", "loop", "retry", "skip", "children"}
    assert TIME.match(state["start_time"]) and TIME.match(state["finish_time"])
    assert len(state["children"]) == 3
    assert all(child["state"] == "FINISHED" for child in state["children"].values())
    act = state["children"][act_id]
    assert (act["loop"], act["retry"], act["skip"], act["children"]) == (1, 0, False, {})


def test_get_state_of_a_single_node(runtime: culm.Runtime) -> None:
    tree, act_id = chain("example_component")
    task_service.run_pipeline(PipelineParser(tree).parse())
    wait_until(lambda: state_of(tree["id"]) == "FINISHED", 20.0, 0.02)
    assert task_service.get_state(act_id)["state"] == "FINISHED"


def test_unknown_ids(runtime: culm.Runtime) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        task_service.get_state("nope")
    for outcome in (task_service.pause_pipeline("nope"), task_service.revoke_pipeline("nope"),
                    task_service.skip_activity("nope"), task_service.callback("nope", {})):
        assert outcome.result is False and "nope" in outcome.message


def test_parser_reports_every_problem() -> None:
    tree, act_id = chain("legacy_test_no_such_component")
    tree["flows"]["ghost"] = {"id": "ghost", "source": act_id, "target": "nowhere", "is_default": False}
    with pytest.raises(TreeInvalidError) as info:
        PipelineParser(tree).parse()
    text = " | ".join(str(p) for p in info.value.problems)
    assert "legacy_test_no_such_component" in text and "nowhere" in text


def test_parse_keeps_root_data(runtime: culm.Runtime) -> None:
    tree, _ = chain("example_component")
    pipeline = PipelineParser(tree).parse(root_pipeline_data={"operator": "ann"})
    assert pipeline.root_pipeline_data == {"operator": "ann"}
    assert pipeline.tree is tree


def test_failed_activity_is_retried_with_new_inputs(runtime: culm.Runtime) -> None:
    tree, act_id = chain("legacy_test_gate", ok=False)
    task_service.run_pipeline(PipelineParser(tree).parse())
    wait_until(lambda: state_of(act_id) == "FAILED", 20.0, 0.02)
    assert task_service.get_state(tree["id"])["state"] == "RUNNING"  # a failure leaves the pipeline running
    assert task_service.get_outputs(act_id)["ex_data"] == "gate closed"

    result = task_service.retry_activity(act_id, inputs={"ok": True})
    assert result.result, result.message
    wait_until(lambda: state_of(tree["id"]) == "FINISHED", 20.0, 0.02)
    state = task_service.get_state(act_id)
    assert (state["state"], state["retry"]) == ("FINISHED", 1)
    assert task_service.get_inputs(act_id)["ok"] is True
    assert len(task_service.get_activity_histories(act_id)) == 1


def test_failed_activity_is_skipped(runtime: culm.Runtime) -> None:
    tree, act_id = chain("legacy_test_gate", ok=False)
    task_service.run_pipeline(PipelineParser(tree).parse())
    wait_until(lambda: state_of(act_id) == "FAILED", 20.0, 0.02)
    assert task_service.skip_activity(act_id).result
    wait_until(lambda: state_of(tree["id"]) == "FINISHED", 20.0, 0.02)
    assert task_service.get_state(act_id)["skip"] is True


def test_callback_looks_up_the_version(runtime: culm.Runtime) -> None:
    tree, act_id = chain("legacy_test_wait")
    task_service.run_pipeline(PipelineParser(tree).parse())
    wait_until(lambda: task_service.get_outputs(act_id)["outputs"].get("waiting") is True, 20.0, 0.02)
    result = task_service.callback(act_id, {"answer": 42})
    assert result.result, result.message
    wait_until(lambda: state_of(tree["id"]) == "FINISHED", 20.0, 0.02)
    assert task_service.get_outputs(act_id)["outputs"]["payload"] == {"answer": 42}


def test_forced_fail_then_revoke(runtime: culm.Runtime) -> None:
    tree, act_id = chain("legacy_test_wait")
    task_service.run_pipeline(PipelineParser(tree).parse())
    wait_until(lambda: task_service.get_outputs(act_id)["outputs"].get("waiting") is True, 20.0, 0.02)
    assert task_service.forced_fail(act_id, ex_data="operator gave up").result
    assert task_service.get_state(act_id)["state"] == "FAILED"
    assert task_service.get_outputs(act_id)["ex_data"] == "operator gave up"
    assert task_service.revoke_pipeline(tree["id"]).result
    assert task_service.get_state(tree["id"])["state"] == "REVOKED"
    second = task_service.revoke_pipeline(tree["id"])
    assert second.result is False and tree["id"] in second.message


def test_pause_and_resume(runtime: culm.Runtime) -> None:
    tree, act_id = chain("legacy_test_wait")
    task_service.run_pipeline(PipelineParser(tree).parse())
    wait_until(lambda: task_service.get_outputs(act_id)["outputs"].get("waiting") is True, 20.0, 0.02)
    assert task_service.pause_pipeline(tree["id"]).result
    assert task_service.get_state(tree["id"])["state"] == "SUSPENDED"
    assert task_service.resume_pipeline(tree["id"]).result
    assert task_service.get_state(tree["id"])["state"] == "RUNNING"


def test_created_and_ready_show_as_running() -> None:
    entry = {"id": "n1", "state": "READY", "started_time": None, "archived_time": None, "loop": 1,
             "retry": 0, "skip": False, "children": {"n2": {"id": "n2", "state": "CREATED", "children": {}}}}
    shown = legacy._legacy_entry(entry)
    assert shown["state"] == "RUNNING" and shown["children"]["n2"]["state"] == "RUNNING"
    assert shown["start_time"] is None and shown["finish_time"] is None


def test_default_runtime_is_created_lazily(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CULM_DATABASE_URL", f"sqlite:///{tmp_path / 'legacy.db'}")
    legacy.set_default_runtime(None)
    try:
        rt = legacy.get_default_runtime()
        assert legacy.get_default_runtime() is rt
        tree, _ = chain("example_component")
        assert task_service.run_pipeline(PipelineParser(tree).parse()).result
        wait_until(lambda: state_of(tree["id"]) == "FINISHED", 20.0, 0.02)
    finally:
        legacy.set_default_runtime(None)
        rt.close()
    assert (tmp_path / "legacy.db").exists()


def test_v3_run_options_and_output_shape(runtime: culm.Runtime) -> None:
    tree, act_id = chain("legacy_test_gate", ok=False)
    assert task_service.get_outputs(act_id) == {"outputs": {}, "ex_data": None}

    result = task_service.run_pipeline(PipelineParser(tree).parse(), check_workers=False, priority=50, queue="")
    assert result.result, result.message
    wait_until(lambda: state_of(act_id) == "FAILED", 20.0, 0.02)

    found = task_service.get_outputs(act_id)
    assert found["ex_data"] == "gate closed"
    assert found["outputs"]["seen"] is False and found["outputs"]["_result"] is False
    assert task_service.get_batch_outputs([act_id, "never-ran"]) == {act_id: found}
    refused = task_service.run_pipeline(PipelineParser(chain("example_component")[0]).parse(), priority=256)
    assert refused.result is False and "priority" in refused.message


def test_v3_conditional_parallel_skip_and_subprocess_pause(runtime: culm.Runtime) -> None:
    from culm.builder import ConditionalParallelGateway, ConvergeGateway, SubProcess

    sub_start = EmptyStartEvent()
    waiter = ServiceActivity(component_code="legacy_test_wait")
    sub_start.extend(waiter).extend(EmptyEndEvent())
    start = EmptyStartEvent()
    cpg = ConditionalParallelGateway(conditions={0: "1 == 2", 1: "1 == 3"})
    sub = SubProcess(start=sub_start)
    other = ServiceActivity(component_code="example_component")
    converge = ConvergeGateway()
    start.extend(cpg).connect(sub, other).to(cpg).converge(converge).extend(EmptyEndEvent())
    tree = build_tree(start)
    assert task_service.run_pipeline(PipelineParser(tree).parse()).result
    wait_until(lambda: state_of(cpg.id) == "FAILED", 20.0, 0.02)

    outcome = task_service.skip_conditional_parallel_gateway(cpg.id, tree["gateways"][cpg.id]["outgoing"],
                                                              converge.id)
    assert outcome.result, outcome.message
    wait_until(lambda: task_service.get_outputs(waiter.id)["outputs"].get("waiting") is True, 20.0, 0.02)
    assert task_service.pause_subprocess(sub.id).result
    assert task_service.get_state(sub.id)["state"] == "SUSPENDED"
    assert task_service.resume_pipeline(sub.id).result
    assert task_service.callback(waiter.id, {}).result
    wait_until(lambda: state_of(tree["id"]) == "FINISHED", 20.0, 0.02)
    assert task_service.get_state(cpg.id)["skip"] is True
