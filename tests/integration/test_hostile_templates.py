"""Templates with too many ``${...}`` fragments: refused when the tree is submitted, or failing their
node when the excess only shows at run time, on every runtime (embedded and distributed).

Each fragment is parsed on its own (tens of microseconds) before any clock can stop it: six inputs
of 100,000 fragments each held the embedded engine thread for 17 s (a healthy pipeline started
beside them took 45 s to finish), and variables of 600,000 fragments held the submitting call for
16 s before it was refused (found probing, session 12). The limits are documented in
docs/data-and-variables.md.
"""

from __future__ import annotations

import time

import pytest
from engine_fixtures import chain, outputs, refused, run, wait_pipeline, wait_state

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ServiceActivity,
    Var,
    build_tree,
)
from culm.data import template
from culm.variables import LazyVariable

pytestmark = pytest.mark.timeout(120)

LIMIT = template.MAX_NODE_FRAGMENTS


def echo(**values: str) -> ServiceActivity:
    act = ServiceActivity(component_code="t_echo")
    for key, value in values.items():
        setattr(act.component.inputs, key, Var(type=Var.SPLICE, value=value))
    return act


def line(*nodes, data: Data | None = None) -> dict:
    return build_tree(chain(*nodes), data=data)


def distinct(count: int) -> str:
    """``count`` fragments that each parse on their own (no cache helps)."""
    return "".join(f"${{a{i} + 1}}" for i in range(count))


def healthy() -> tuple[dict, ServiceActivity]:
    act = echo(x="${n}")
    return line(act, data=Data(inputs={"${n}": Var(type=Var.PLAIN, value=41)})), act


def failed_beside_a_healthy_pipeline(runtime, tree: dict, act: ServiceActivity) -> str:
    """Run ``tree`` and a healthy pipeline: the healthy one finishes, ``act`` fails; its ex_data."""
    ok, ok_act = healthy()
    run(runtime, tree)
    run(runtime, ok)
    wait_pipeline(runtime, ok["id"], "FINISHED", timeout=30)
    assert outputs(runtime, ok_act.id)["out"] == "41!"
    wait_state(runtime, act.id, "FAILED", timeout=30)
    ex = outputs(runtime, act.id)["ex_data"]
    assert ex.startswith("inputs hydrate failed"), ex
    return ex


def test_inputs_with_too_many_fragments_are_refused_naming_the_node(runtime):
    act = echo(x=distinct(LIMIT // 2), y=distinct(LIMIT // 2 + 1))
    refused(api.run_pipeline(runtime, line(act)), act.id, "component inputs", f"{LIMIT + 1:,}", "fragments")


def test_a_variable_with_too_many_fragments_is_refused_naming_it(runtime):
    data = Data(inputs={"${v}": Var(type=Var.SPLICE, value=["${n}"] * (LIMIT + 1)),
                        "${n}": Var(type=Var.PLAIN, value=1)})
    refused(api.run_pipeline(runtime, line(echo(x="${v}"), data=data)), "data.inputs", "${v}", "fragments")


def test_variables_of_a_tree_with_too_many_fragments_in_all_are_refused_naming_the_tree(runtime):
    share = LIMIT - 1
    count = template.MAX_TREE_VARIABLE_FRAGMENTS // share + 1
    data = Data(inputs={f"${{v{i}}}": Var(type=Var.SPLICE, value=distinct(share) + str(i)) for i in range(count)})
    tree = line(echo(x="${v0}"), data=data)
    refused(api.run_pipeline(runtime, tree), tree["id"], "variables of the tree", f"{share * count:,}")


def test_conditions_with_too_many_fragments_are_refused_naming_the_gateway(runtime):
    a, b = echo(x="a"), echo(x="b")
    gw = ExclusiveGateway(conditions={0: "'" + "${n}" * (LIMIT + 1) + "' == '1'", 1: "1 == 1"})
    start = EmptyStartEvent()
    start.extend(gw).connect(a, b).to(gw).converge(ConvergeGateway()).extend(EmptyEndEvent())
    tree = build_tree(start, data=Data(inputs={"${n}": Var(type=Var.PLAIN, value=1)}))
    refused(api.run_pipeline(runtime, tree), gw.id, "conditions", "fragments")


def test_inputs_at_the_limit_render(runtime):
    act = echo(x="${n}" * (LIMIT // 2), y="-${n}" * (LIMIT // 2))
    tree = line(act, data=Data(inputs={"${n}": Var(type=Var.PLAIN, value=7)}))
    run(runtime, tree)
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=60)
    assert outputs(runtime, act.id)["out"] == "7" * (LIMIT // 2) + "!"


def test_inputs_and_the_variables_they_need_over_the_limit_fail_the_node_beside_a_healthy_pipeline(runtime):
    # Each under the limit, so the tree is valid; together over it once the node gathers them.
    act = echo(x="${v}" + distinct(LIMIT // 2))
    data = Data(inputs={"${v}": Var(type=Var.SPLICE, value=distinct(LIMIT // 2 + 1))})
    ex = failed_beside_a_healthy_pipeline(runtime, line(act, data=data), act)
    assert "variables they need" in ex and f"{LIMIT + 2:,}" in ex, ex


def test_conditions_and_the_variables_they_need_over_the_limit_fail_the_gateway(runtime):
    a, b = echo(x="a"), echo(x="b")
    gw = ExclusiveGateway(conditions={0: "'${v}" + "${n}" * (LIMIT // 2) + "' == '1'", 1: "1 == 1"})
    start = EmptyStartEvent()
    start.extend(gw).connect(a, b).to(gw).converge(ConvergeGateway()).extend(EmptyEndEvent())
    data = Data(inputs={"${v}": Var(type=Var.SPLICE, value="${n}" * (LIMIT // 2 + 1)),
                        "${n}": Var(type=Var.PLAIN, value=1)})
    tree = build_tree(start, data=data)
    run(runtime, tree)
    wait_state(runtime, gw.id, "FAILED", timeout=30)
    ex = outputs(runtime, gw.id)["ex_data"]
    assert ex.startswith("gateway conditions hydrate failed") and "fragments" in ex, ex


def test_retry_data_with_too_many_fragments_is_refused_and_the_node_stays_failed(runtime):
    act = ServiceActivity(component_code="t_fail")
    tree = line(act)
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED", timeout=30)
    res = api.retry_node(runtime, act.id, data={"ok": distinct(LIMIT + 1)})
    refused(res, act.id, "retry data", "fragments")
    assert wait_state(runtime, act.id, "FAILED")["retry"] == 0
    res = api.retry_node(runtime, act.id, data={"ok": distinct(LIMIT + 1), "_escape_render_keys": ["ok"]})
    assert res.result, res.message  # not rendered: no fragments to parse


def test_inputs_that_each_render_in_time_but_not_together_fail_the_node(tmp_path, monkeypatch):
    """Embedded only: the limits are made generous per expression and short per node here, in this
    process (a worker process keeps its own)."""
    import culm
    from culm.data import sandbox

    monkeypatch.setattr(sandbox, "TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "RENDER_TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "NODE_RENDER_TIME_LIMIT", 0.3)
    act = echo(**{f"x{i}": f"${{len([x for x in range(20000)]) + {i}}}" for i in range(400)})
    with culm.Runtime(f"sqlite:///{tmp_path}/t.db") as rt:
        ex = failed_beside_a_healthy_pipeline(rt, line(act), act)
    assert "took longer than 0.3 seconds to render in all" in ex, ex


class _NoCpuForAWhile:
    """A value whose text comes only after a wait during which its thread uses no CPU: to the
    clocks, what a pool thread left without a core or the GIL in the middle of a render looks like
    (a machine at load 200, or valgrind running one thread at a time)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __str__(self) -> str:
        time.sleep(self.seconds)
        return "late"


class _DescheduledVariable(LazyVariable):
    code = "t_descheduled"

    def get_value(self):
        return _NoCpuForAWhile(float(self.value))


def test_a_render_whose_thread_gets_no_cpu_past_the_time_limit_does_not_fail_its_node(tmp_path, monkeypatch):
    """The time limits count the rendering thread's CPU time: a render that waited longer than
    RENDER_TIME_LIMIT (and than the node's limit) for a core, without working, still renders.
    With the wall clock, a busy machine failed nodes with "rendering took longer than 1.0 seconds"
    and left their pipelines RUNNING (seen by the batch benchmarks under load). Work past the
    limits still fails the node (the tests above). Embedded only: the limits are this process's."""
    import culm
    from culm.data import sandbox

    monkeypatch.setattr(sandbox, "TRUST_CONTEXT_OBJECTS", True)  # its __str__ runs inside the render
    monkeypatch.setattr(template, "RENDER_TIME_LIMIT", 0.2)
    monkeypatch.setattr(template, "NODE_RENDER_TIME_LIMIT", 0.3)
    act = echo(x="${slow}-${n}")  # a lazy variable: rendered on the user-code pool
    tree = line(act, data=Data(inputs={"${slow}": Var(type=Var.LAZY, custom_type="t_descheduled", value="0.5"),
                                       "${n}": Var(type=Var.PLAIN, value=1)}))
    with culm.Runtime(f"sqlite:///{tmp_path}/t.db") as rt:
        run(rt, tree)
        node = wait_state(rt, act.id, ("FINISHED", "FAILED"), timeout=30)
        assert node["state"] == "FINISHED", outputs(rt, act.id).get("ex_data")
        assert outputs(rt, act.id)["out"] == "late-1!"
        wait_pipeline(rt, tree["id"], "FINISHED")


def test_a_decimal_too_large_to_convert_fails_its_node_and_the_worker_goes_on(runtime):
    """int() of a Decimal('1e999999999') in a context (a component returning money, a tree given one)
    built a billion-digit int: the worker's thread never came back."""
    from decimal import Decimal

    act = echo(x="${int(amount)}")
    tree = line(act, data=Data(inputs={"${amount}": Var(type=Var.PLAIN, value=Decimal("1e999999999"))}))
    assert "Decimal of exponent 999999999" in failed_beside_a_healthy_pipeline(runtime, tree, act)
    fine = echo(x="${int(amount) + 1}")
    finished = line(fine, data=Data(inputs={"${amount}": Var(type=Var.PLAIN, value=Decimal("41.5"))}))
    run(runtime, finished)
    wait_pipeline(runtime, finished["id"], "FINISHED", timeout=30)  # the same worker still renders
    assert outputs(runtime, fine.id)["out"] == "42!"


def test_a_preview_through_nested_subprocesses_shares_one_time_budget(tmp_path, monkeypatch):
    """Each subprocess's params render well within the node budget; twenty of them, nested, do not."""
    import culm
    from culm.builder import Params, SubProcess
    from culm.data import sandbox
    from culm.data.sandbox_eval import render_clock

    # The budget is the thread's CPU time (render_clock): one level's cost measured here (the
    # cheapest of five, a collection of garbage left by other tests is no level's cost), the budget
    # five levels' worth, so one level is well within it and twenty are not, on any machine.
    costs = []
    for _ in range(5):
        began = render_clock()
        sandbox.evaluate("len([x for x in range(20000)]) + 1", {})
        costs.append(render_clock() - began)
    budget = round(5 * min(costs), 4) or 0.001
    monkeypatch.setattr(sandbox, "TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "RENDER_TIME_LIMIT", 60.0)
    monkeypatch.setattr(template, "NODE_RENDER_TIME_LIMIT", budget)
    inner = echo(x="${p}")
    stack = []
    node = inner
    for level in range(20):
        start = EmptyStartEvent()
        start.extend(node).extend(EmptyEndEvent())
        node = SubProcess(start=start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="")}),
                          params=Params({"${p}": Var(type=Var.SPLICE,
                                                     value=f"${{len([x for x in range(20000)]) + {level}}}")}))
        stack.insert(0, node.id)
    tree = line(node)
    with culm.Runtime(f"sqlite:///{tmp_path}/t.db") as rt:
        res = api.preview_node_inputs(rt, tree, inner.id, subprocess_stack=stack)
    refused(res, f"took longer than {budget} seconds to render in all")


def test_bytes_formatted_too_wide_fail_their_node_and_the_worker_goes_on(runtime):
    """b'%999999999d' % 1 (a component's bytes in a context) built a gigabyte before any check."""
    act = echo(x="${b % 1}")
    tree = line(act, data=Data(inputs={"${b}": Var(type=Var.PLAIN, value=b"%999999999d")}))
    assert "%-format width 999999999 is over 1000" in failed_beside_a_healthy_pipeline(runtime, tree, act)


def test_a_read_of_histories_returns_the_payloads_of_the_newest_within_a_bound(runtime, monkeypatch):
    # Found probing (session 15): every retry and loop keeps a history holding the node's inputs
    # (up to 4,000,000 characters rendered from a template of a few bytes) and outputs, and one read
    # returned them all: a viewer opening a node retried a thousand times (GET /api/v1/nodes/ID, the
    # console's node panel, `culm history`) read gigabytes into the service's memory.
    from culm.model import limits

    act = ServiceActivity(component_code="t_attrs", loop_config={"enable": True, "loop_times": 6})
    act.component.inputs.big = Var(type=Var.SPLICE, value="${'x' * 900000}")
    tree = line(act)
    run(runtime, tree)
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=60)
    monkeypatch.setattr(limits, "MAX_HISTORY_READ_CHARS", 2_000_000)
    every = api.get_node_histories(runtime, act.id).data
    assert [h["loop"] for h in every] == [1, 2, 3, 4, 5]  # every run is listed, oldest first
    assert [len(h["inputs"].get("big", "")) for h in every] == [0, 0, 0, 900_000, 900_000]
    left = every[0]["left_out"]
    assert left.startswith("inputs and outputs (9") and "left out" in left and "MAX_HISTORY_READ_CHARS" in left
    assert "read one loop's with loop=1" in left and "left_out" not in every[4]
    assert len(api.get_node_histories(runtime, act.id, loop=1).data[0]["inputs"]["big"]) == 900_000
    assert [h["loop"] for h in api.get_node_short_histories(runtime, act.id).data] == [1, 2, 3, 4, 5]


def test_a_nested_object_index_of_too_many_digits_stays_text_in_its_own_node(tmp_path):
    """With render_nested_objects, ``${cfg[<5,000 digits>]}`` beside ``${cfg}`` raised a bare
    ValueError out of the renderer: the start event before the activity failed with its traceback
    and the pipeline stayed RUNNING (found probing, session 22). It stays text, as it does without
    the setting, and the pipeline finishes."""
    import culm

    index = "9" * 5_000
    act = echo(x="${cfg[" + index + "]}", y="${cfg}")
    after = echo(x="${v}")
    tree = line(act, after, data=Data(inputs={
        "${cfg}": Var(type=Var.PLAIN, value=[1, 2]),
        "${v}": Var(type=Var.SPLICE, value="${cfg[-" + index + "]}${cfg[0]}"),
    }))
    with culm.Runtime(f"sqlite:///{tmp_path}/t.db", settings=culm.Settings(render_nested_objects=True)) as rt:
        preview = api.preview_node_inputs(rt, tree, act.id)
        assert preview.result, preview.message
        run(rt, tree)
        wait_pipeline(rt, tree["id"], "FINISHED", timeout=30)
        assert outputs(rt, act.id)["out"] == "${cfg[" + index + "]}!"
        assert outputs(rt, after.id)["out"] == "${cfg[-" + index + "]}1!"
