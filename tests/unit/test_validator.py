"""Tree validation, normalisation and start positions."""

from __future__ import annotations

import base64
import copy
import random
import re
import time
from typing import Any

import pytest

from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.errors import StartPositionInvalidError, TreeInvalidError, TreeProblem
from culm.model.validator import (
    allowed_start_node_ids,
    prepare_tree,
    process_tree,
    skipped_node_ids,
    validate_start_node,
    validate_tree,
)

pytestmark = pytest.mark.timeout(60)

_PREFIX_TYPES = (
    ("cpg", "ConditionalParallelGateway"),
    ("pg", "ParallelGateway"),
    ("eg", "ExclusiveGateway"),
    ("cg", "ConvergeGateway"),
    ("sub", "SubProcess"),
)


def _type_of(name: str) -> str:
    if re.fullmatch(r"s\d*", name):
        return "EmptyStartEvent"
    if re.fullmatch(r"end\d*|e\d+", name):
        return "EmptyEndEvent"
    return next((t for prefix, t in _PREFIX_TYPES if name.startswith(prefix)), "ServiceActivity")


def make_tree(spec: str, pid: str = "root", subs: dict | None = None) -> dict:
    """A raw tree from ``"s>a a>b b>end"``; node types come from the name prefixes above."""
    flows, order, seen = {}, [], set()
    for edge in spec.split():
        source, target = edge.split(">")
        fid = f"{pid}:{source}-{target}"
        while fid in flows:
            fid += "'"
        flows[fid] = {"id": fid, "source": source, "target": target, "is_default": False}
        order += [n for n in (source, target) if n not in seen]
        seen.update((source, target))
    tree = {
        "id": pid,
        "activities": {},
        "gateways": {},
        "flows": flows,
        "data": {"inputs": {}, "outputs": []},
    }
    ins_of: dict = {}
    outs_of: dict = {}
    for fid, flow in flows.items():
        ins_of.setdefault(flow["target"], []).append(fid)
        outs_of.setdefault(flow["source"], []).append(fid)
    for name in order:
        kind = _type_of(name)
        ins, outs = ins_of.get(name, []), outs_of.get(name, [])
        node = {"id": name, "name": name, "type": kind, "incoming": ins}
        if kind in ("ParallelGateway", "ExclusiveGateway", "ConditionalParallelGateway"):
            node["outgoing"] = outs
        else:
            node["outgoing"] = outs[0] if len(outs) == 1 else ("" if not outs else outs)
        if kind in ("ExclusiveGateway", "ConditionalParallelGateway"):
            node["conditions"] = {f: {"evaluate": "1 == 1"} for f in outs}
        if kind == "EmptyStartEvent":
            tree["start_event"] = {**node, "incoming": ""}
        elif kind == "EmptyEndEvent":
            tree["end_event"] = node
        elif kind == "ServiceActivity":
            tree["activities"][name] = {
                **node,
                "component": {"code": "c", "inputs": {}},
                "error_ignorable": False,
                "skippable": True,
                "retryable": True,
            }
        elif kind == "SubProcess":
            tree["activities"][name] = {**node, "params": {}, "pipeline": (subs or {})[name]}
        else:
            tree["gateways"][name] = node
    return tree


def wheres(problems: list[TreeProblem]) -> set:
    return {p.where for p in problems}


LINE = "s>a a>b b>end"
PARALLEL = "s>pg pg>a pg>b a>cg b>cg cg>end"
NESTED = "s>pg1 pg1>a pg1>pg2 pg2>b pg2>c b>cg2 c>cg2 cg2>d a>cg1 d>cg1 cg1>end"
LOOP = "s>a a>eg eg>a eg>b b>end"


# -- good trees --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        LINE,
        PARALLEL,
        NESTED,
        "s>eg eg>a eg>b a>cg b>cg cg>end",  # exclusive matched
        "s>eg eg>a eg>b a>end b>end",  # exclusive, both branches dangling
        "s>eg eg>a eg>b a>cg b>cg cg>c c>end eg>end",  # a third, dangling branch
        "s>eg1 eg1>a eg1>eg2 eg2>b eg2>c a>cg b>cg c>cg cg>end",  # exclusives sharing a converge
        "s>pg pg>eg pg>c eg>a eg>b a>cg1 b>cg1 cg1>cg c>cg cg>end",  # exclusive nested in parallel
        "s>cpg cpg>a cpg>b a>cg b>cg cg>end",
        "s>pg pg>cg cg>end",  # empty parallel branch
        "s>pg pg>a pg>cg a>cg cg>end",
    ],
)
def test_valid_trees_have_no_problems(spec):
    assert validate_tree(make_tree(spec)) == []


def test_builder_tree_is_valid():
    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="c")).extend(EmptyEndEvent())
    assert validate_tree(build_tree(start)) == []


# -- structure ---------------------------------------------------------------------------------


def test_pipeline_id_must_be_a_string():
    tree = make_tree(LINE)
    tree["id"] = 5
    assert any("pipeline id" in p.message for p in validate_tree(tree))


def test_ids_unique_across_the_whole_tree():
    tree = make_tree(LINE)
    tree["flows"]["b"] = {"id": "b", "source": "a", "target": "b"}  # a flow id clashing with a node id
    assert "b" in wheres(validate_tree(tree))
    sub = make_tree("s2>x x>end2", pid="sub1")
    sub["activities"]["a"] = copy.deepcopy(sub["activities"]["x"]) | {"id": "a"}
    outer = make_tree("s>a a>sub1 sub1>end", subs={"sub1": sub})
    problems = validate_tree(outer)
    assert any(p.where == "a" and "more than once" in p.message for p in problems)


def test_node_key_must_match_id_and_ids_be_strings():
    tree = make_tree(LINE)
    tree["activities"]["a"]["id"] = 12
    tree["gateways"][7] = {"id": 7}
    problems = validate_tree(tree)
    assert {"a", "7"} <= wheres(problems)


def test_a_flow_without_id_is_known_by_its_key():
    """bamboo reads a flow by its key and never its ``id``: a flow without one is valid; one with a
    wrong or empty ``id`` is not."""
    tree = make_tree(LINE)
    for flow in tree["flows"].values():
        del flow["id"]
    assert validate_tree(tree) == []
    assert "id" not in process_tree(tree)["flows"]["root:a-b"]  # the tree as given
    tree["flows"]["root:a-b"]["id"] = ""
    tree["flows"]["root:b-end"]["id"] = "other"
    assert {"root:a-b", "root:b-end"} <= wheres(validate_tree(tree))


def test_flow_to_unknown_node():
    tree = make_tree(LINE)
    tree["flows"]["root:a-b"]["target"] = "ghost"
    problems = validate_tree(tree)
    assert "root:a-b" in wheres(problems)
    assert any("ghost" in p.message for p in problems)


def test_incoming_and_outgoing_must_agree_with_flows():
    tree = make_tree(LINE)
    tree["activities"]["b"]["incoming"] = ["nope"]
    tree["activities"]["a"]["outgoing"] = ["root:a-b"]  # a list on a single-outgoing node
    assert {"a", "b"} <= wheres(validate_tree(tree))


def test_incoming_as_string_is_tolerated_and_normalised():
    tree = make_tree(LINE)
    tree["activities"]["b"]["incoming"] = "root:a-b"
    tree["end_event"]["incoming"] = "root:b-end"
    assert validate_tree(tree) == []
    processed = process_tree(tree)
    assert processed["activities"]["b"]["incoming"] == ["root:a-b"]
    assert processed["end_event"]["incoming"] == ["root:b-end"]
    assert tree["activities"]["b"]["incoming"] == "root:a-b"


def test_degree_rules():
    two_out = make_tree("s>a a>b a>end b>end")
    assert "a" in wheres(validate_tree(two_out))
    end_out = make_tree("s>a a>end end>b b>end")
    assert "end" in wheres(validate_tree(end_out))
    to_start = make_tree("s>a a>s a>end")
    problems = validate_tree(to_start)
    assert "root:a-s" in wheres(problems) and "s" in wheres(problems)
    straight = make_tree("s>end")
    assert "root:s-end" in wheres(validate_tree(straight))
    no_out = make_tree("s>pg pg>a a>end")
    no_out["gateways"]["pg"]["outgoing"] = []
    del no_out["flows"]["root:pg-a"]
    no_out["activities"]["a"]["incoming"] = []
    assert {"pg", "a"} <= wheres(validate_tree(no_out))


def test_max_degree():
    names = [f"a{i}" for i in range(1001)]
    spec = " ".join(["s>pg"] + [f"pg>{n}" for n in names] + [f"{n}>cg" for n in names] + ["cg>end"])
    assert {"pg", "cg"} <= wheres(validate_tree(make_tree(spec)))


def test_isolated_node():
    tree = make_tree(LINE + " x>y y>end")
    tree["activities"]["x"]["incoming"] = []
    problems = validate_tree(tree)
    assert "y" in wheres(problems) and "x" in wheres(problems)
    assert any(p.where == "y" and "isolated" in p.message for p in problems)


# -- cycles ------------------------------------------------------------------------------------


def test_cycle_rejected_unless_tolerated():
    tree = make_tree(LOOP)
    problems = validate_tree(tree)
    assert [p.where for p in problems] == ["a"]
    assert "cycle" in problems[0].message
    assert validate_tree(tree, cycle_tolerate=True) == []
    assert "converge_gateway_id" not in process_tree(tree, cycle_tolerate=True)["gateways"]["eg"]


def test_loop_through_converge_head_and_inside_parallel():
    head = make_tree("s>cg a>eg cg>a eg>cg eg>b b>end")
    assert validate_tree(head, cycle_tolerate=True) == []
    inner = make_tree("s>pg pg>a pg>c a>eg eg>a eg>b b>cg c>cg cg>end")
    assert validate_tree(inner, cycle_tolerate=True) == []
    assert process_tree(inner, cycle_tolerate=True)["gateways"]["pg"]["converge_gateway_id"] == "cg"


def test_loop_back_leaving_a_parallel_branch():
    tree = make_tree("s>a a>pg pg>b pg>c b>eg eg>a eg>cg c>cg cg>end")
    problems = validate_tree(tree, cycle_tolerate=True)
    assert [(p.where, "crosses" in p.message) for p in problems] == [("a", True)]


# -- gateway pairing ---------------------------------------------------------------------------


def test_nested_parallel_pairing():
    processed = process_tree(make_tree(NESTED))
    assert processed["gateways"]["pg1"]["converge_gateway_id"] == "cg1"
    assert processed["gateways"]["pg2"]["converge_gateway_id"] == "cg2"


def test_exclusive_pairing_and_sharing():
    matched = process_tree(make_tree("s>eg eg>a eg>b a>cg b>cg cg>end"))
    assert matched["gateways"]["eg"]["converge_gateway_id"] == "cg"
    dangling = process_tree(make_tree("s>eg eg>a eg>b a>end b>end"))
    assert "converge_gateway_id" not in dangling["gateways"]["eg"]
    shared = process_tree(make_tree("s>eg1 eg1>a eg1>eg2 eg2>b eg2>c a>cg b>cg c>cg cg>end"))
    assert shared["gateways"]["eg1"]["converge_gateway_id"] == "cg"
    assert shared["gateways"]["eg2"]["converge_gateway_id"] == "cg"


def test_parallel_branch_without_converge():
    problems = validate_tree(make_tree("s>pg pg>a pg>b a>cg b>end cg>end"))
    assert "pg" in wheres(problems)


def test_parallel_branches_at_different_converges():
    problems = validate_tree(make_tree("s>pg pg>a pg>b a>cg1 b>cg2 cg1>c cg2>d c>end d>end"))
    assert "pg" in wheres(problems)


def test_converge_shared_by_two_parallel_gateways():
    tree = make_tree("s>eg eg>pg1 eg>pg2 pg1>a pg1>b pg2>c pg2>d a>cg b>cg c>cg d>cg cg>end")
    problems = validate_tree(tree)
    assert wheres(problems) & {"pg1", "pg2"}


def test_exclusive_with_dangling_branch_inside_parallel():
    tree = make_tree("s>pg pg>eg pg>c eg>a eg>b a>cg b>end c>cg cg>end")
    problems = validate_tree(tree)
    assert "eg" in wheres(problems)


def test_stream_crossing_between_parallel_branches():
    tree = make_tree("s>pg pg>a pg>b a>eg eg>b eg>cg b>cg cg>end")
    problems = validate_tree(tree)
    assert problems
    assert wheres(problems) & {"b", "cg", "pg"}


def test_gateways_inside_subprocess_are_paired():
    sub = make_tree("s2>pg2 pg2>x pg2>y x>cg2 y>cg2 cg2>end2", pid="sub1")
    outer = make_tree("s>sub1 sub1>end", subs={"sub1": sub})
    processed = process_tree(outer)
    inner = processed["activities"]["sub1"]["pipeline"]
    assert inner["gateways"]["pg2"]["converge_gateway_id"] == "cg2"
    broken = make_tree("s2>pg2 pg2>x pg2>y x>cg2 y>end2 cg2>end2", pid="sub1")
    assert "pg2" in wheres(validate_tree(make_tree("s>sub1 sub1>end", subs={"sub1": broken})))


def test_subprocess_pipeline_id_must_match():
    sub = make_tree("s2>x x>end2", pid="other")
    problems = validate_tree(make_tree("s>sub1 sub1>end", subs={"sub1": sub}))
    assert "sub1" in wheres(problems)
    missing = make_tree("s>sub1 sub1>end", subs={"sub1": None})
    assert "sub1" in wheres(validate_tree(missing))


# -- conditions --------------------------------------------------------------------------------


def test_conditions_cover_every_outgoing_flow_except_default():
    spec = "s>eg eg>a eg>b a>cg b>cg cg>end"
    tree = make_tree(spec)
    del tree["gateways"]["eg"]["conditions"]["root:eg-b"]
    assert "eg" in wheres(validate_tree(tree))
    tree["gateways"]["eg"]["default_condition"] = {"flow_id": "root:eg-b"}
    assert validate_tree(tree) == []
    tree["gateways"]["eg"]["default_condition"] = {"flow_id": "root:a-cg"}
    assert "eg" in wheres(validate_tree(tree))


def test_condition_keys_and_shapes():
    tree = make_tree("s>cpg cpg>a cpg>b a>cg b>cg cg>end")
    tree["gateways"]["cpg"]["conditions"]["root:a-cg"] = {"evaluate": "1 == 1"}
    tree["gateways"]["cpg"]["conditions"]["root:cpg-a"] = {"evaluate": 5}
    problems = validate_tree(tree)
    assert [p.where for p in problems] == ["cpg", "cpg"]
    tree["gateways"]["cpg"]["conditions"] = "bad"
    assert "cpg" in wheres(validate_tree(tree))


# -- activities, variables and data ------------------------------------------------------------


def test_component_code_and_registry_callback():
    tree = make_tree(LINE)
    tree["activities"]["a"]["component"]["code"] = None
    tree["activities"]["b"]["component"]["version"] = "v9"
    seen = []

    def exists(code, version):
        seen.append((code, version))
        return version != "v9"

    problems = validate_tree(tree, component_exists=exists)
    assert wheres(problems) == {"a", "b"}
    assert ("c", "v9") in seen
    del tree["activities"]["a"]["component"]
    assert "a" in wheres(validate_tree(tree))


def test_callbacks_that_raise_become_problems():
    def boom(*_):
        raise RuntimeError("registry down")

    problems = validate_tree(make_tree(LINE), component_exists=boom)
    assert wheres(problems) == {"a", "b"} and any("registry down" in p.message for p in problems)


def test_activity_flags_and_loop_config():
    tree = make_tree(LINE)
    tree["activities"]["a"]["skippable"] = "yes"
    tree["activities"]["b"]["loop_config"] = {"enable": True, "loop_times": 0}
    assert wheres(validate_tree(tree)) == {"a", "b"}
    tree["activities"]["a"]["skippable"] = False
    tree["activities"]["b"]["loop_config"] = {"enable": True, "loop_times": 3, "outputs_key": "outs"}
    assert validate_tree(tree) == []
    tree["activities"]["b"]["loop_config"] = {"enable": False}
    assert validate_tree(tree) == []


@pytest.mark.parametrize("times", [10**12, 2.5, "3", True, None, -1, 10_001])
def test_loop_times_out_of_range_is_refused_naming_node_and_field(times):
    tree = make_tree(LINE)
    tree["activities"]["b"]["loop_config"] = {"enable": True, "loop_times": times}
    (problem,) = validate_tree(tree)
    assert problem.where == "b"
    assert problem.message.startswith("loop_config.loop_times must be a whole number from 1 to 10,000")
    assert "$CULM_MAX_LOOP_TIMES" in problem.message and repr(times)[:12] in problem.message


def test_loop_times_cap_is_read_at_every_validation(monkeypatch):
    from culm.model import limits

    tree = make_tree(LINE)
    tree["activities"]["b"]["loop_config"] = {"enable": True, "loop_times": 10_000}
    assert validate_tree(tree) == []
    monkeypatch.setattr(limits, "MAX_LOOP_TIMES", 50)
    (problem,) = validate_tree(tree)
    assert problem.where == "b" and "from 1 to 50 " in problem.message
    tree["activities"]["b"]["loop_config"]["loop_times"] = 50
    assert validate_tree(tree) == []


def test_variable_types_and_lazy_variables():
    tree = make_tree(LINE)
    tree["data"]["inputs"] = {
        "${ok}": {"type": "plain", "value": 1},
        "${bad}": {"type": "weird", "value": 1},
        "${lazy}": {"type": "lazy", "value": "x", "custom_type": "ip_list"},
        "${nolazy}": {"type": "lazy", "value": "x"},
    }
    tree["activities"]["a"]["component"]["inputs"] = {
        "k": {"type": "lazy", "value": 1, "custom_type": "nope"}
    }
    problems = validate_tree(tree, lazy_exists=lambda t: t == "ip_list")
    assert wheres(problems) == {"data.inputs.${bad}", "data.inputs.${nolazy}", "a"}
    assert validate_tree(tree) != []  # the type problem does not depend on the callback


def test_node_output_references():
    tree = make_tree(LINE)
    tree["data"]["inputs"] = {
        "${good}": {"type": "plain", "value": None, "source_act": "a", "source_key": "out"},
        "${ghost}": {"type": "plain", "value": None, "source_act": "zz", "source_key": "out"},
        "${many}": {
            "type": "plain",
            "value": None,
            "source_act": [{"source_act": "b", "source_key": "k"}, {"source_act": "s", "source_key": "k"}],
        },
        "${shape}": {"type": "plain", "value": None, "source_act": 5},
    }
    problems = validate_tree(tree)
    assert wheres(problems) == {"data.inputs.${ghost}", "data.inputs.${many}", "data.inputs.${shape}"}


def test_data_outputs_and_params():
    tree = make_tree(LINE)
    tree["data"]["outputs"] = ["${x}", 3]
    assert "data.outputs" in wheres(validate_tree(tree))
    tree["data"]["outputs"] = {"${x}": "${x}"}
    assert validate_tree(tree) == []
    sub = make_tree("s2>x x>end2", pid="sub1")
    sub["data"]["inputs"] = {"${p}": {"type": "plain", "value": 0, "is_param": "no"}}
    outer = make_tree("s>sub1 sub1>end", subs={"sub1": sub})
    outer["activities"]["sub1"]["params"] = {"${p}": {"type": "nope", "value": 1}}
    assert wheres(validate_tree(outer)) == {"sub1", "sub1.data.inputs.${p}"}


def test_executable_end_event_callback():
    tree = make_tree(LINE)
    tree["end_event"]["type"] = "MyEnd"
    assert validate_tree(tree) == []
    assert wheres(validate_tree(tree, end_event_exists=lambda t: False)) == {"end"}
    assert validate_tree(tree, end_event_exists=lambda t: t == "MyEnd") == []


# -- all problems, garbage, limits --------------------------------------------------------------


def test_every_problem_is_reported_at_once():
    tree = make_tree(LINE + " x>end")
    tree["activities"]["x"]["incoming"] = []
    tree["activities"]["a"]["component"]["code"] = ""
    tree["activities"]["b"]["component"]["inputs"] = {
        "k": {"type": "lazy", "value": 1, "custom_type": "nope"}
    }
    tree["data"]["inputs"] = {"${v}": {"type": "plain", "value": None, "source_act": "zz", "source_key": "k"}}
    tree["flows"]["stray"] = {"id": "stray", "source": "a", "target": "ghost"}
    problems = validate_tree(tree, lazy_exists=lambda _: False)
    assert {"a", "b", "x", "data.inputs.${v}", "stray"} <= wheres(problems)
    with pytest.raises(TreeInvalidError) as info:
        process_tree(tree, lazy_exists=lambda _: False)
    assert info.value.problems == problems


GARBAGE = [
    None,
    0,
    "tree",
    [],
    [1, 2],
    {},
    {"id": None},
    {"id": "p", "start_event": []},
    {"id": "p", "start_event": {"id": 1}, "end_event": {"id": "e"}, "flows": {"f": 3}},
    {
        "id": "p",
        "start_event": {"id": "s", "type": "EmptyStartEvent", "outgoing": 5},
        "end_event": None,
        "activities": [],
        "gateways": "x",
        "flows": {"f": {"id": "f", "source": ["s"], "target": None}},
    },
    {"id": "p", "activities": {"a": {"id": "a", "type": "SubProcess", "pipeline": 5, "params": []}}},
    {
        "id": "p",
        "activities": {
            "a": {
                "id": "a",
                "type": "ServiceActivity",
                "component": {"code": 1, "inputs": [1]},
                "loop_config": 5,
                "timeout": "x",
                "incoming": 7,
                "outgoing": {},
            }
        },
    },
    {
        "id": "p",
        "gateways": {
            "g": {
                "id": "g",
                "type": "ExclusiveGateway",
                "conditions": [],
                "default_condition": 5,
                "incoming": [None],
                "outgoing": "x",
            }
        },
    },
    {
        "id": "p",
        "data": {
            "inputs": {1: 2, "k": None, "j": {"type": "lazy", "source_act": [None, {}]}},
            "outputs": 5,
            "pre_render_keys": "x",
        },
    },
]


@pytest.mark.parametrize("tree", GARBAGE)
def test_garbage_never_raises(tree):
    problems = validate_tree(tree)
    assert problems
    assert all(isinstance(p, TreeProblem) for p in problems)
    assert not any("could not be validated" in p.message for p in problems)
    with pytest.raises(TreeInvalidError):
        process_tree(tree)


def test_garbage_with_real_nodes_mixed_in():
    tree = make_tree(PARALLEL)
    tree["gateways"]["pg"]["outgoing"] = "root:pg-a"
    tree["flows"]["root:a-cg"]["source"] = 1
    tree["activities"]["a"]["incoming"] = [None]
    problems = validate_tree(tree)
    assert {"pg", "root:a-cg", "a"} <= wheres(problems)
    assert not any("could not be validated" in p.message for p in problems)


def test_too_many_nodes():
    tree = make_tree(LINE)
    tree["activities"].update({f"x{i}": {} for i in range(100_001)})
    problems = validate_tree(tree)
    assert len(problems) == 1 and "too large" in problems[0].message


def test_subprocess_nesting_depth_limit():
    inner = make_tree("s0>a0 a0>e0", pid="sub0")
    for depth in range(1, 70):
        inner = make_tree(
            f"s{depth}>sub{depth - 1} sub{depth - 1}>e{depth}",
            pid=f"sub{depth}",
            subs={f"sub{depth - 1}": inner},
        )
    problems = validate_tree(inner)
    assert len(problems) == 1 and "nested" in problems[0].message


def _chain_tree(length: int) -> dict:
    start = EmptyStartEvent()
    node = start
    for _ in range(length):
        node = node.extend(ServiceActivity(component_code="c"))
    node.extend(EmptyEndEvent())
    return build_tree(start)


def _validation_cpu(tree: dict) -> float:
    """The least CPU time (not wall time: other processes' load does not count) of 3 validations."""
    best = float("inf")
    for _ in range(3):
        began = time.process_time()
        assert validate_tree(tree) == []
        best = min(best, time.process_time() - began)
    return best


def test_ten_thousand_node_chain_validates_in_linear_time():
    # Against a 1,000-node chain validated in the same test, not a wall-clock limit (it failed at
    # load 11+): ten times the nodes cost about 16 times the CPU; anything quadratic costs 100 times.
    small, big = _chain_tree(1_000), _chain_tree(10_000)
    ratio = _validation_cpu(big) / max(_validation_cpu(small), 1e-4)
    assert ratio < 40, f"validating 10x the nodes took {ratio:.0f}x the CPU time"
    assert len(process_tree(big)["activities"]) == 10_000


def test_long_nested_parallel_chain_does_not_recurse():
    depth = 3000
    spec = ["s>pg0"] + [f"pg{i}>pg{i + 1} pg{i}>x{i} x{i}>cg{i} cg{i + 1}>cg{i}" for i in range(depth)]
    spec += [f"pg{depth}>y y>cg{depth}", "cg0>end"]
    tree = make_tree(" ".join(spec))
    assert validate_tree(tree) == []


# -- process_tree ------------------------------------------------------------------------------


def test_process_tree_returns_a_normalised_copy():
    tree = make_tree("s>pg pg>a pg>eg eg>b eg>c b>cg2 c>cg2 cg2>cg a>cg cg>end")
    del tree["data"]
    del tree["activities"]["a"]["skippable"]
    snapshot = copy.deepcopy(tree)
    processed = process_tree(tree)
    assert tree == snapshot
    assert processed["gateways"]["pg"]["converge_gateway_id"] == "cg"
    assert processed["gateways"]["eg"]["converge_gateway_id"] == "cg2"
    assert "converge_gateway_id" not in processed["gateways"]["cg"]
    assert processed["data"] == {"inputs": {}, "outputs": []}
    assert processed["activities"]["a"]["skippable"] is True
    assert all(isinstance(n["incoming"], list) for n in processed["activities"].values())


# -- start positions ---------------------------------------------------------------------------


MAIN = "s>a a>pg pg>b pg>c b>cg c>cg cg>eg eg>d eg>e d>cg2 e>cg2 cg2>f f>end"


def test_allowed_start_nodes():
    assert allowed_start_node_ids(make_tree(MAIN)) == ["s", "a", "pg", "eg", "d", "e", "f"]


def test_validate_start_node_reasons():
    tree = make_tree(MAIN)
    validate_start_node(tree, "s")
    validate_start_node(tree, "d")
    for node_id, fragment in (
        ("b", "parallel"),
        ("cg", "ConvergeGateway"),
        ("end", "EndEvent"),
        ("ghost", "no node"),
        (3, "string"),
    ):
        with pytest.raises(StartPositionInvalidError) as info:
            validate_start_node(tree, node_id)
        assert fragment in str(info.value)
        assert info.value.problems[0].where == str(node_id)


def test_start_node_inside_subprocess_is_refused():
    sub = make_tree("s2>x x>end2", pid="sub1")
    tree = make_tree("s>a a>sub1 sub1>end", subs={"sub1": sub})
    assert allowed_start_node_ids(tree) == ["s", "a"]
    with pytest.raises(StartPositionInvalidError, match="subprocess"):
        validate_start_node(tree, "x")
    with pytest.raises(StartPositionInvalidError, match="SubProcess"):
        validate_start_node(tree, "sub1")


def _start_answer(check: Any, node_id: Any) -> Any:
    try:
        check(node_id)
    except StartPositionInvalidError as exc:
        return exc.problems
    return "allowed"


@pytest.mark.parametrize("cycle_tolerate", [False, True])
def test_a_prepared_tree_judges_start_nodes_as_validate_start_node_does(cycle_tolerate: bool) -> None:
    sub = make_tree("s2>x x>end2", pid="sub1")
    trees = [make_tree(MAIN), make_tree("s>a a>sub1 sub1>end", subs={"sub1": sub})]
    if cycle_tolerate:
        trees.append(make_tree("s>a a>eg eg>b eg>c b>a c>end"))
    for tree in trees:
        prepared = prepare_tree(tree, cycle_tolerate=cycle_tolerate)
        candidates = [*prepared.graphs[0].kinds, "x", "sub1", "ghost", 3, None]
        for node_id in candidates:
            expected = _start_answer(lambda n, t=tree: validate_start_node(t, n), node_id)
            assert _start_answer(prepared.check_start_node, node_id) == expected, node_id
        assert {n for n in candidates if _start_answer(prepared.check_start_node, n) == "allowed"} == set(
            allowed_start_node_ids(tree))


def test_skipped_nodes():
    tree = make_tree(MAIN)
    assert skipped_node_ids(tree, "s") == []
    assert skipped_node_ids(tree, "a") == ["s"]
    assert set(skipped_node_ids(tree, "d")) == {"s", "a", "pg", "b", "c", "cg", "eg"}
    assert set(skipped_node_ids(tree, "f")) == {"s", "a", "pg", "b", "c", "cg", "eg", "d", "e", "cg2"}
    order = skipped_node_ids(tree, "f")
    assert order.index("s") < order.index("pg") < order.index("cg") < order.index("eg")
    with pytest.raises(StartPositionInvalidError):
        skipped_node_ids(tree, "b")


def test_start_positions_in_a_loop():
    tree = make_tree(LOOP)
    assert allowed_start_node_ids(tree) == ["s", "a", "eg", "b"]
    assert set(skipped_node_ids(tree, "b")) == {"s", "a", "eg"}
    assert skipped_node_ids(tree, "a") == ["s"]


def test_start_positions_of_an_invalid_tree_raise():
    with pytest.raises(TreeInvalidError):
        allowed_start_node_ids({"id": "p"})


# -- random damage -----------------------------------------------------------------------------

_JUNK = [
    None,
    0,
    -1,
    1.5,
    "",
    "x",
    [],
    {},
    [None],
    {"id": 1},
    True,
    "root:s-a",
    "a",
    "pg",
    ["a"],
    {"evaluate": 1},
]


def _paths(obj, prefix=()):
    if prefix:
        yield prefix
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in list(children):
        yield from _paths(value, prefix + (key,))


def _damage(tree: dict, rng) -> None:
    path = rng.choice(list(_paths(tree)))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.6:
        parent[path[-1]] = copy.deepcopy(rng.choice(_JUNK))
    elif isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])


def test_randomly_damaged_trees_never_raise():
    import random

    rng = random.Random(7)
    sub = make_tree("s2>pg2 pg2>x pg2>y x>cg2 y>cg2 cg2>end2", pid="sub1")
    bases = [
        make_tree(NESTED),
        make_tree(LOOP),
        make_tree(MAIN),
        make_tree("s>a a>sub1 sub1>end", subs={"sub1": sub}),
    ]
    for _ in range(1500):
        tree = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            _damage(tree, rng)
        for tolerate in (False, True):
            problems = validate_tree(tree, cycle_tolerate=tolerate)
            assert not any("could not be validated" in p.message for p in problems)
            try:
                process_tree(tree, cycle_tolerate=tolerate)
            except TreeInvalidError:
                assert problems


def test_tree_problems_looks_plugins_up_in_this_process():
    from culm import validator

    act = ServiceActivity(component_code="no_such_component_here")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)

    (problem,) = validator.tree_problems(tree)
    assert problem.where == act.id and "no_such_component_here" in problem.message
    # Another process (a cluster's workers) runs the components: they are not judged here.
    assert validator.tree_problems(tree, components=False) == []
    assert validator.tree_problems({"id": "p"})  # not even a tree: problems, not an exception
    assert validator.tree_warnings(tree) == []


def test_a_megabyte_id_or_value_makes_a_short_problem() -> None:
    """The whole id, and the whole activity type, were quoted: a 1 MB id made a 1 MB message
    (printed by the CLI, sent back twice by the REST API)."""
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_component")
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    node = tree["activities"].pop(act.id)
    long_id = "n" * 1_000_000
    tree["activities"][long_id] = {**node, "id": long_id, "type": "T" * 1_000_000}
    problems = validate_tree(tree)
    assert problems
    for problem in problems:
        assert len(str(problem)) < 2000, str(problem)[:200]
    shown = str(TreeInvalidError(problems))
    assert "(1000000 characters)" in shown and "at most 64 are stored" in shown


def test_the_message_of_many_problems_names_the_first_and_counts_the_rest() -> None:
    problems = [TreeProblem(f"n{i}", "broken") for i in range(1000)]
    error = TreeInvalidError(problems)
    assert len(error.problems) == 1000
    assert str(error).startswith("n0: broken; n1: broken") and str(error).endswith("; and 980 more problem(s)")


# Text that does not compress (a large tree is stored compressed; see the next test).
_NOISE = base64.b64encode(random.Random(7).randbytes(5_400_000)).decode("ascii")


@pytest.mark.parametrize("value", [_NOISE, {_NOISE[:6_000_000]}], ids=["json", "pickled"])
def test_a_tree_too_large_to_store_is_refused_before_its_analysis(value):
    # The analysis ran first: a 99,000-node tree held as a pickle (a set among its values) was
    # checked node by node for 6 s and 160 MB, then refused for its size.
    tree = make_tree(LINE)
    tree["data"] = {"inputs": {"${big}": {"type": "plain", "value": value}}}
    asked: list[str] = []

    def component_exists(code, version):
        asked.append(code)
        return True

    with pytest.raises(TreeInvalidError) as raised:
        prepare_tree(tree, component_exists=component_exists)
    (problem,) = raised.value.problems
    assert problem.where == "root" and problem.message.startswith("tree takes ")
    assert "bytes once stored, over the 7,000,000 a store holds" in problem.message and asked == []
    tree["data"]["inputs"]["${big}"]["value"] = value[:1000] if isinstance(value, str) else {"x"}
    prepare_tree(tree, component_exists=component_exists)
    assert asked  # a tree that fits is analysed as before


def test_the_escapes_of_a_tree_count_against_the_limit(monkeypatch) -> None:
    # A text of more than half the limit is measured as a MySQL statement takes it (a quote or
    # a backslash escaped: two bytes); at most half the limit, it fits whatever it holds.
    from culm import _json
    from culm.model import limits

    rng = random.Random(11)
    noise = "".join(rng.choice('"\\\'' + "abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(40_000))
    tree = make_tree(LINE)
    tree["data"] = {"inputs": {"${big}": {"type": "plain", "value": noise}}}
    text = _json.dumps(tree)
    stored = limits.payload_size(text)
    assert stored > len(text) + 4_000  # the escapes
    monkeypatch.setattr(limits, "MAX_PAYLOAD_BYTES", len(text))
    with pytest.raises(TreeInvalidError) as raised:
        prepare_tree(tree, component_exists=lambda code, version: True)
    (problem,) = raised.value.problems
    assert problem.where == "root" and problem.message.startswith(f"tree takes {stored:,} bytes once stored, over the "
                                                                  f"{len(text):,} a store holds")
    monkeypatch.setattr(limits, "MAX_PAYLOAD_BYTES", 2 * len(text))
    assert prepare_tree(tree, component_exists=lambda code, version: True).text == text


def test_a_large_tree_that_compresses_is_accepted() -> None:
    # ~7.1 MB of JSON that zlib takes under the limit is stored compressed (a 10,000-node tree
    # built with culm.builder takes ~7 MB as JSON and was refused for it).
    tree = make_tree(LINE)
    tree["data"] = {"inputs": {"${big}": {"type": "plain", "value": "x" * 7_100_000}}}
    prepared = prepare_tree(tree, component_exists=lambda code, version: True)
    assert prepared.tree["data"]["inputs"]["${big}"]["value"] == "x" * 7_100_000


def test_connections_the_quick_pass_leaves_are_judged_in_full():
    # The common shapes pass without building sets; every other shape gets the full checks,
    # with the same messages in the same order as before there was a quick pass.
    reordered = make_tree(PARALLEL)
    reordered["gateways"]["cg"]["incoming"].reverse()  # another order than the flows': still right
    reordered["activities"]["a"]["incoming"] = "root:pg-a"  # a string for one flow
    assert validate_tree(reordered) == []
    tree = make_tree("s>pg pg>a pg>b a>cg b>cg cg>end")
    tree["activities"]["a"]["outgoing"] = ["root:a-cg"]  # a list on a single-outgoing node
    tree["activities"]["b"]["incoming"] = ""  # none declared, one flow
    tree["gateways"]["pg"]["outgoing"] = "root:pg-a"  # a string on a branching node
    tree["end_event"]["incoming"] = ["root:cg-end", "root:cg-end"]  # a duplicate
    tree["activities"]["b"]["skippable"] = "yes"
    tree["flows"]["root:b-cg"]["source"] = 3
    assert [(p.where, p.message) for p in validate_tree(tree)] == [
        ('root:b-cg', 'flow source and target must be node id strings'),
        ('b', 'skippable must be a bool'),
        ('end', "incoming lists ['root:cg-end', 'root:cg-end'] but the flows are ['root:cg-end']"),
        ('a', 'outgoing of a ServiceActivity must be a single flow id string'),
        ('b', "incoming lists [] but the flows are ['root:pg-b']"),
        ('b', "outgoing lists ['root:b-cg'] but the flows are []"),
        ('b', 'a ServiceActivity needs 1 outgoing flow(s), it has 0'),
        ('pg', 'outgoing of a ParallelGateway must be a list of flow ids'),
        ('pg', "outgoing lists ['root:pg-a'] but the flows are ['root:pg-a', 'root:pg-b']"),
        ('cg', "incoming lists ['root:a-cg', 'root:b-cg'] but the flows are ['root:a-cg']"),
    ]
