"""A run's tree is stored as given (its JSON text) and normalised again when read back: an engine
that did not start the run (another process, or one restarted) compiles the same graph and runs it."""

from __future__ import annotations

import pytest
from engine_fixtures import chain, outputs, wait_pipeline

import culm
from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.model.compiled import compile_tree
from culm.model.validator import process_tree

pytestmark = pytest.mark.timeout(60)


def _echo(x: str) -> ServiceActivity:
    act = ServiceActivity(component_code="t_echo")
    act.component.inputs.x = Var(type=Var.SPLICE, value=x)
    return act


def gateway_tree() -> dict:
    """Parallel and exclusive gateways (both paired with converge gateways by validation), a
    subprocess, and activities whose optional keys are left out, as a hand-written tree would."""
    sub_start = EmptyStartEvent()
    sub_start.extend(_echo("${a}-sub")).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, data=Data(inputs={"${a}": Var(type=Var.PLAIN, value="s")}))
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, pcg = ParallelGateway(), ConvergeGateway()
    eg, ecg = ExclusiveGateway(conditions={0: "${n} == 1", 1: "${n} != 1"}), ConvergeGateway()
    start.extend(pg).connect(_echo("${a}-1"), sub).converge(pcg)
    pcg.extend(eg).connect(_echo("${a}-yes"), _echo("${a}-no")).converge(ecg).extend(end)
    tree = build_tree(start, data=Data(inputs={"${a}": Var(type=Var.PLAIN, value="r"),
                                               "${n}": Var(type=Var.PLAIN, value="1")}))
    for act in tree["activities"].values():
        if act["type"] == "ServiceActivity":
            for key in ("skippable", "retryable", "optional", "timeout"):
                act.pop(key, None)
            act["incoming"] = act["incoming"][0]  # a single incoming flow given as a string
    for gateway in tree["gateways"].values():
        gateway.pop("converge_gateway_id", None)
    return tree


def submit_only(url: str, tree: dict) -> None:
    """Store a run with a runtime that runs nothing (so no engine of this test has its graph)."""
    submitter = culm.Runtime(url, workers=0)
    try:
        res = api.run_pipeline(submitter, tree)
        assert res.result, res.message
    finally:
        submitter.close()


def graph_read_back(url: str, root_id: str):
    """The graph a fresh engine compiles from what is stored."""
    reader = culm.Runtime(url, workers=0)
    try:
        with reader.store.reading() as unit:
            return reader.engine.graph(root_id, unit)
    finally:
        reader.close()


def test_another_engine_compiles_the_graph_the_run_started_with(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    tree = gateway_tree()
    expected = compile_tree(process_tree(tree))
    submit_only(url, tree)
    assert graph_read_back(url, tree["id"]) == expected


def test_a_run_submitted_by_one_runtime_finishes_in_another(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    tree = gateway_tree()
    submit_only(url, tree)
    runner = culm.Runtime(url)
    try:
        wait_pipeline(runner, tree["id"], "FINISHED")
        outs = {nid: outputs(runner, nid).get("out") for nid, act in tree["activities"].items()
                if act["type"] == "ServiceActivity"}
        assert sorted(o for o in outs.values() if o) == ["r-1!", "r-yes!"]
    finally:
        runner.close()


def test_a_tree_json_cannot_hold_is_stored_whole(tmp_path):
    """A set in an input is not JSON: the tree is kept by the codec's fallback, not as text."""
    url = f"sqlite:///{tmp_path}/t.db"
    start, act = EmptyStartEvent(), ServiceActivity(component_code="t_echo")
    act.component.inputs.tags = Var(type=Var.PLAIN, value="placeholder")
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    tree["activities"][act.id]["component"]["inputs"]["tags"]["value"] = {"b", "a"}
    expected = compile_tree(process_tree(tree))
    submit_only(url, tree)
    assert graph_read_back(url, tree["id"]) == expected


def test_a_tree_over_the_payload_limit_is_compressed_once_and_read_back_whole(tmp_path, monkeypatch):
    """Validation compresses a tree over 7 MB of JSON to measure what it takes stored; storing it
    used to compress the same 7.6 MB again (~0.2 s of CPU more, inside the run's transaction)."""
    import zlib

    from culm.model import limits

    tree = build_tree(chain(*(ServiceActivity(component_code="example_component") for _ in range(14_000))))
    compressed: list[int] = []
    real = zlib.compress

    def counted(data: bytes, *args):
        compressed.append(len(data))
        return real(data, *args)

    monkeypatch.setattr(zlib, "compress", counted)
    url = f"sqlite:///{tmp_path}/t.db"
    submit_only(url, tree)
    assert len(compressed) == 1 and compressed[0] > limits.MAX_PAYLOAD_BYTES
    graph = graph_read_back(url, tree["id"])
    assert len(graph.nodes) == 14_002 and set(tree["activities"]) < set(graph.nodes)
