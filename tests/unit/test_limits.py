"""culm.model.limits and culm._json.keys_collide: the rules checked before anything is stored."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from culm import _json
from culm.model import limits


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_depth_is_counted_in_containers():
    assert limits.nesting(1) == 0 and limits.nesting([]) == 1 and limits.nesting({"a": [(1,)]}) == 3
    assert not limits.too_deep(nested(limits.MAX_VALUE_DEPTH))
    assert limits.too_deep(nested(limits.MAX_VALUE_DEPTH + 1))
    assert limits.too_deep({"a": {"b": nested(limits.MAX_VALUE_DEPTH)}})


def test_a_value_that_contains_itself_is_not_deep_for_that():
    loop: list = [1]
    loop.append(loop)
    assert limits.nesting(loop) == 1 and not limits.too_deep(loop)
    deep_loop = nested(limits.MAX_VALUE_DEPTH + 1)
    deep_loop.append(deep_loop)
    assert limits.too_deep(deep_loop)


def test_shared_containers_are_walked_once_per_depth():
    diamond: list = [1]
    for _ in range(60):  # 2**60 paths, 61 distinct lists
        diamond = [diamond, diamond]
    assert not limits.too_deep(diamond)
    for _ in range(60):
        diamond = [diamond, diamond]
    assert limits.too_deep(diamond)


@pytest.mark.parametrize(("text", "problem"), [
    ("plain", None), ("h\u00e9llo \u4e2d", None), ("a\x00b", "a NUL character"), ("a\udcffb", "a lone surrogate"),
    ("\u00e9\x00", "a NUL character"),
])
def test_text_problems(text, problem):
    assert limits.text_problem(text) == problem


def test_column_problems_name_the_length():
    assert limits.column_problem("x" * 64, 64) is None
    assert limits.column_problem("x" * 65, 64) == "is 65 characters long; at most 64 are stored"


@pytest.mark.parametrize(("value", "collide"), [
    ({"a": 1}, False), ({1: "a", 2: "b"}, False), ({1: "a", "1": "b"}, True), ({True: 1, "true": 2}, True),
    ({None: 1, "null": 2}, True), ({1.5: 1, "1.5": 2}, True), ([({"x": {1: "a", "1": "b"}},)], True),
    ({(1, 2): "a", "(1, 2)": "b"}, False),  # JSON refuses the tuple key anyway: pickled
    ("text", False), (None, False),
])
def test_keys_that_json_would_merge(value, collide):
    assert _json.keys_collide(value) is collide


def test_keys_collide_stops_on_a_value_that_contains_itself():
    loop: list = [{1: "a"}]
    loop.append(loop)
    assert _json.keys_collide(loop) is False


@pytest.mark.parametrize(("text", "key"), [
    ('{"a": 1, "b": {"x": 1, "x": 2}}', "x"), (b'[{"k": 1, "k": 1}]', "k"), ('{"a": {"q": 1}, "a": 2}', "a"),
    ('{"a": 1, "A": 2}', None), ('{"a": {"a": 1}}', None), ("{not json", None),
])
def test_duplicate_keys_are_found_in_any_object(text, key):
    assert limits.duplicate_key(text) == key


def test_tree_size_counts_every_pipeline_and_ends_on_a_tree_holding_itself():
    from culm.model.tree_shape import MAX_DEPTH, tree_size

    sub = {"id": "s", "activities": {"a": {"type": "ServiceActivity"}}, "flows": {"f": {}, "g": {}}}
    tree = {"id": "p", "activities": {"s": {"type": "SubProcess", "pipeline": sub}, "b": {}},
            "gateways": {"g": {}}, "flows": {"f1": {}}}
    assert tree_size(tree) == (2 + 3 + 2 + 1, 3, 0)
    sub["activities"]["self"] = {"type": "SubProcess", "pipeline": sub}  # validation refuses it; counting ends
    assert tree_size(tree) == (5 + 4 * MAX_DEPTH, 1 + 2 * MAX_DEPTH, 0)  # counted to the depth validation allows


@pytest.mark.parametrize(("value", "expected"), [("5000", "5000"), ("1_000_000", "1000000"), ("", "100000")])
def test_the_tree_limits_are_read_from_the_environment(value, expected):
    assert _limit_read_with("MAX_TREE_NODES", value) == expected


def _limit_read_with(name: str, value: str) -> str:
    """culm.model.limits.NAME as a fresh process reads it with $CULM_NAME set to ``value``."""
    out = subprocess.run([sys.executable, "-c", f"from culm.model import limits; print(limits.{name})"],
                         env={**os.environ, f"CULM_{name}": value}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_loop_times_cap_is_read_from_the_environment():
    assert _limit_read_with("MAX_LOOP_TIMES", "250") == "250"


def test_a_bad_tree_limit_in_the_environment_names_the_variable(tmp_path):
    # It was a ValueError traceback out of `import culm` (and so out of every culm command).
    (tmp_path / "tree.json").write_text("{}")
    env = {**os.environ, "CULM_MAX_TREE_FLOWS": "lots"}
    out = subprocess.run([sys.executable, "-m", "culm", "validate", str(tmp_path / "tree.json")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "tree not validated: $CULM_MAX_TREE_FLOWS must be a whole number >= 1, got 'lots'" in out.stdout + out.stderr


def test_the_store_total_counts_every_write_of_threads_sharing_it(monkeypatch):
    # Review 18: StoreTotal.after read-modified-wrote its estimate unlocked, and the engine threads
    # of a process share one: 8 threads x 20,000 writes lost ~30,000 of the 160,000 bytes.
    import threading

    from culm.storage import budget

    monkeypatch.setattr(limits, "MAX_STORED_BYTES", 10**15)
    monkeypatch.setattr(budget, "TOTAL_FRESH_SECONDS", 3600.0)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        total = budget.StoreTotal()
        assert total.after(lambda: 0, 0) == 0  # the read: fresh for the rest of the test

        def write() -> None:
            for _ in range(5_000):
                total.after(lambda: 0, 1)

        threads = [threading.Thread(target=write) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert total.after(lambda: 0, 0) == 40_000


def tree_with_variables(count: int, in_subprocess: int = 0) -> dict:
    from culm.builder import (
        Data,
        EmptyEndEvent,
        EmptyStartEvent,
        ExclusiveGateway,
        SubProcess,
        Var,
        build_tree,
    )

    def variables(n: int, prefix: str) -> Data:
        data = Data()
        for i in range(n):
            data.inputs[f"${{{prefix}{i}}}"] = Var(type=Var.PLAIN, value=i)
        return data

    inner = EmptyStartEvent()
    inner.extend(ExclusiveGateway(conditions={0: "1 == 1"})).connect(EmptyEndEvent())
    start = EmptyStartEvent()
    start.extend(SubProcess(start=inner, data=variables(in_subprocess, "s"))).extend(EmptyEndEvent())
    return build_tree(start, data=variables(count, "v"))


def test_a_tree_over_the_variable_limit_is_refused_before_it_is_validated(monkeypatch):
    """Found probing (session 23): nodes and flows were bounded, the variables (data inputs) of a
    tree not. A tree of 1,000,000 plain variables (50 MB of JSON, stored compressed under the
    payload limit) was taken: run_pipeline held SQLite's write lock for 134 s and the process grew
    to 2 GB. Counted with the nodes and flows, every subprocess's variables included."""
    import culm
    from culm import api
    from culm.validator import tree_problems

    monkeypatch.setattr(limits, "MAX_TREE_VARIABLES", 100)
    assert tree_problems(tree_with_variables(60, in_subprocess=40)) == []
    tree = tree_with_variables(60, in_subprocess=41)
    problems = [str(p) for p in tree_problems(tree)]
    assert problems == [f"{tree['id']}: tree is too large: it has 101 variables, over the 100 a tree may have "
                        "(culm.model.limits.MAX_TREE_VARIABLES, $CULM_MAX_TREE_VARIABLES); split the work into several pipelines"]
    with culm.Runtime("memory://") as runtime:
        refused = api.run_pipeline(runtime, tree)
        assert not refused.result and problems[0] in refused.message
        assert api.list_pipelines(runtime).data["total"] == 0


def test_the_variable_limit_is_read_from_the_environment():
    assert _limit_read_with("MAX_TREE_VARIABLES", "5000") == "5000"


def test_contexts_given_to_run_pipeline_count_against_the_variable_limit(monkeypatch):
    """review23b: each key of root_pipeline_context is a value of the root's context, each of
    subprocess_context one of every subprocess's; a small tree with a wide subprocess_context
    stored past the tree's own variable limit. Refused before anything is stored."""
    import culm
    from culm import api

    monkeypatch.setattr(limits, "MAX_TREE_VARIABLES", 100)
    tree = tree_with_variables(10, in_subprocess=10)  # 20 variables, one subprocess
    with culm.Runtime("memory://") as runtime:
        assert api.run_pipeline(runtime, tree_with_variables(10, in_subprocess=10),
                                root_pipeline_context={f"r{i}": i for i in range(40)},
                                subprocess_context={f"s{i}": i for i in range(40)}).result  # 100: at the limit
        refused = api.run_pipeline(runtime, tree, subprocess_context={f"s{i}": i for i in range(81)})
        assert not refused.result
        assert ("subprocess_context (81 keys, one copy for each of 1 subprocesses) add 81 context values to the "
                "tree's 20 variables: over the 100") in refused.message, refused.message
        refused = api.run_pipeline(runtime, tree, root_pipeline_context={f"r{i}": i for i in range(81)})
        assert not refused.result and "root_pipeline_context (81 keys)" in refused.message
        assert api.list_pipelines(runtime).data["total"] == 1  # only the first run
