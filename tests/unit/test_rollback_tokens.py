"""``generate_pipeline_token``: bamboo's rollback token map (spec sections 2.3 and 9.3)."""

import copy

import pytest

from culm import builder as bd


def act(name):
    return bd.ServiceActivity(component_code="example_component", id=name)


def groups(tokens):
    """The nodes sharing each token, as a set of sets of ids (tokens themselves are random)."""
    shared = {}
    for node_id, token in tokens.items():
        shared.setdefault(token, set()).add(node_id)
    return {frozenset(ids) for ids in shared.values()}


def test_a_line_shares_one_token_of_bamboos_shape():
    start, end = bd.EmptyStartEvent(id="s"), bd.EmptyEndEvent(id="e")
    start.extend(act("a")).extend(act("b")).extend(end)
    tokens = bd.builder.generate_pipeline_token(bd.build_tree(start))
    assert groups(tokens) == {frozenset({"s", "a", "b", "e"})}
    token = tokens["s"]
    assert len(token) == 33 and token.startswith("t")


@pytest.mark.parametrize("gateway", [bd.ParallelGateway, bd.ConditionalParallelGateway])
def test_each_forked_branch_gets_its_own_token_and_the_converge_the_outer_one(gateway):
    start, fork, join = bd.EmptyStartEvent(id="s"), gateway(id="g"), bd.ConvergeGateway(id="c")
    if gateway is bd.ConditionalParallelGateway:
        fork = gateway(id="g", conditions={0: "1 == 1", 1: "1 == 1"})
    c = act("c1")
    start.extend(act("a")).extend(fork).connect(act("b"), c)
    c.extend(act("d"))
    fork.converge(join).extend(act("f")).extend(bd.EmptyEndEvent(id="e"))
    tokens = bd.generate_pipeline_token(bd.build_tree(start))
    assert groups(tokens) == {frozenset({"s", "a", "g", "c", "f", "e"}), frozenset({"b"}),
                              frozenset({"c1", "d"})}


def test_exclusive_branches_keep_the_token_in_force():
    start, choose, join = bd.EmptyStartEvent(id="s"), bd.ExclusiveGateway(id="x", conditions={0: "1 == 1", 1: "1 == 0"}), \
        bd.ConvergeGateway(id="c")
    start.extend(choose).connect(act("b"), act("c1"))
    choose.converge(join).extend(bd.EmptyEndEvent(id="e"))
    assert groups(bd.generate_pipeline_token(bd.build_tree(start))) == {frozenset({"s", "x", "b", "c1", "c", "e"})}


def test_a_subprocess_interior_gets_a_fresh_token_and_the_line_goes_on_with_the_outer_one():
    inner_start = bd.EmptyStartEvent(id="is")
    inner_start.extend(act("x")).extend(bd.EmptyEndEvent(id="ie"))
    sub = bd.SubProcess(start=inner_start, id="sp")
    start = bd.EmptyStartEvent(id="s")
    start.extend(act("a")).extend(sub).extend(act("b")).extend(bd.EmptyEndEvent(id="e"))
    assert groups(bd.generate_pipeline_token(bd.build_tree(start))) == {
        frozenset({"s", "a", "sp", "b", "e"}), frozenset({"is", "x", "ie"})}


def test_gateways_inside_branches_and_subprocesses():
    # a parallel block inside a subprocess that sits on a parallel branch, next to a branch holding
    # an exclusive block
    inner_start, inner_fork, inner_join = bd.EmptyStartEvent(id="is"), bd.ParallelGateway(id="ig"), bd.ConvergeGateway(id="ic")
    inner_start.extend(inner_fork).connect(act("p"), act("q"))
    inner_fork.converge(inner_join).extend(bd.EmptyEndEvent(id="ie"))
    sub = bd.SubProcess(start=inner_start, id="sp")
    choose, choose_join = bd.ExclusiveGateway(id="x", conditions={0: "1 == 1", 1: "1 == 0"}), bd.ConvergeGateway(id="xc")
    start, fork, join = bd.EmptyStartEvent(id="s"), bd.ParallelGateway(id="g"), bd.ConvergeGateway(id="c")
    start.extend(fork).connect(sub, choose)
    choose.connect(act("y"), act("z"))
    choose.converge(choose_join).extend(act("w"))
    fork.converge(join).extend(bd.EmptyEndEvent(id="e"))
    assert groups(bd.generate_pipeline_token(bd.build_tree(start))) == {
        frozenset({"s", "g", "c", "e"}), frozenset({"sp"}), frozenset({"x", "y", "z", "xc", "w"}),
        frozenset({"is", "ig", "ic", "ie"}), frozenset({"p"}), frozenset({"q"})}


def test_after_a_fork_whose_every_branch_forks_again_the_line_goes_on_with_the_outer_token():
    # bamboo's walk drops the nodes after "c" here (no token); section 9.3 says they take the outer one
    start, fork, join = bd.EmptyStartEvent(id="s"), bd.ParallelGateway(id="g"), bd.ConvergeGateway(id="c")
    left, left_join = bd.ParallelGateway(id="lg"), bd.ConvergeGateway(id="lc")
    right, right_join = bd.ParallelGateway(id="rg"), bd.ConvergeGateway(id="rc")
    start.extend(fork).connect(left, right)
    left.connect(act("l1"), act("l2"))
    left.converge(left_join)
    right.connect(act("r1"), act("r2"))
    right.converge(right_join)
    fork.converge(join).extend(act("after")).extend(bd.EmptyEndEvent(id="e"))
    tokens = bd.generate_pipeline_token(bd.build_tree(start))
    assert groups(tokens) == {
        frozenset({"s", "g", "c", "after", "e"}), frozenset({"lg", "lc"}), frozenset({"rg", "rc"}),
        frozenset({"l1"}), frozenset({"l2"}), frozenset({"r1"}), frozenset({"r2"})}


def test_a_loop_back_is_cut_and_the_tree_left_as_it_was():
    start, check, join = bd.EmptyStartEvent(id="s"), bd.ExclusiveGateway(id="x", conditions={0: "1 == 1", 1: "1 == 0"}), \
        bd.ConvergeGateway(id="c")
    a = act("a")
    start.extend(a).extend(act("b")).extend(check).connect(act("done"), act("again"))
    check.converge(join).extend(bd.EmptyEndEvent(id="e"))
    tree = bd.build_tree(start)
    again = tree["activities"]["again"]
    back = tree["flows"][again["outgoing"]]
    back["target"] = "a"  # "again" loops back to "a" instead of converging
    tree["activities"]["a"]["incoming"].append(again["outgoing"])
    tree["gateways"]["c"]["incoming"].remove(again["outgoing"])
    before = copy.deepcopy(tree)
    tokens = bd.generate_pipeline_token(tree)
    assert tree == before
    assert groups(tokens) == {frozenset({"s", "a", "b", "x", "done", "again", "c", "e"})}


def test_a_hand_written_tree_and_a_chosen_token_maker():
    tree = {
        "id": "p", "data": {"inputs": {}, "outputs": []},
        "start_event": {"id": "s", "type": "EmptyStartEvent", "incoming": "", "outgoing": "f1"},
        "end_event": {"id": "e", "type": "EmptyEndEvent", "incoming": ["f4", "f5"], "outgoing": ""},
        "activities": {"a": {"id": "a", "type": "ServiceActivity", "incoming": ["f2"], "outgoing": "f4",
                             "component": {"code": "example_component", "inputs": {}}},
                       "b": {"id": "b", "type": "ServiceActivity", "incoming": ["f3"], "outgoing": ["f5"],
                             "component": {"code": "example_component", "inputs": {}}}},
        "gateways": {"g": {"id": "g", "type": "ExclusiveGateway", "incoming": ["f1"], "outgoing": ["f2", "f3"],
                           "conditions": {"f2": {"evaluate": "1 == 1"}, "f3": {"evaluate": "1 == 0"}}}},
        "flows": {f"f{i}": {"id": f"f{i}", "source": s, "target": t, "is_default": False}
                  for i, (s, t) in enumerate([("s", "g"), ("g", "a"), ("g", "b"), ("a", "e"), ("b", "e")], 1)},
    }
    made = iter(["first", "second"])
    assert bd.generate_pipeline_token(tree, new_token=lambda: next(made)) == {
        "s": "first", "g": "first", "a": "first", "b": "first", "e": "first"}


@pytest.mark.timeout(30)
def test_exclusive_branches_rejoining_at_an_activity_walk_each_node_once(monkeypatch):
    """40 exclusive gateways whose two branches rejoin at an ordinary activity: each branch's walk
    used to go on to the end of the tree (2**40 walks); the rest is walked once per token."""
    from culm.model import rollback_tokens

    visits = []
    follow = rollback_tokens._next_nodes

    def counted(tree, node):
        visits.append(node["id"])
        return follow(tree, node)

    monkeypatch.setattr(rollback_tokens, "_next_nodes", counted)
    start = bd.EmptyStartEvent(id="s")
    tail = start
    for i in range(40):
        gateway = bd.ExclusiveGateway(id=f"x{i}", conditions={0: "1 == 1", 1: "1 == 0"})
        left, right, join = act(f"l{i}"), act(f"r{i}"), act(f"j{i}")
        tail.extend(gateway).connect(left, right)
        left.connect(join)
        right.connect(join)
        tail = join
    tail.extend(bd.EmptyEndEvent(id="e"))
    tree = bd.build_tree(start)
    tokens = bd.generate_pipeline_token(tree)
    ids = {"s", "e"} | {f"{kind}{i}" for kind in "xlrj" for i in range(40)}
    assert groups(tokens) == {frozenset(ids)}
    assert len(visits) <= len(ids)  # each node's way on looked up at most once
