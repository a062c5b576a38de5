"""Assertions shared by the bamboo-suite tests (``test_bamboo_suite*.py``), through ``culm.api`` only."""

from __future__ import annotations

from support import wait_until

from culm import api


def exec_data(runtime, node_id):
    """``get_execution_data(node_id).data``, asserting the call succeeded."""
    res = api.get_execution_data(runtime, node_id)
    assert res.result, res.message
    return res.data


def assert_exec_data(runtime, expected):
    """Each node's execution data equals ``expected[node_id]`` (bamboo's assert_exec_data_equal)."""
    for node_id, want in expected.items():
        assert exec_data(runtime, node_id) == want, node_id


def states_of(runtime, root_id, node_ids):
    """``{node_id: state}`` of those of ``node_ids`` that have been reached."""
    children = api.get_pipeline_states(runtime, root_id).data[root_id]["children"]
    return {n: children[n]["state"] for n in node_ids if n in children}


def wait_all(runtime, root_id, node_ids, state, timeout=20):
    """Poll ``get_pipeline_states`` until every one of ``node_ids`` (the root included) is ``state``."""
    ids = list(node_ids)

    def check():
        root = api.get_pipeline_states(runtime, root_id).data.get(root_id)
        if not root:
            return None
        found = {root_id: root, **root["children"]}
        return all(n in found and found[n]["state"] == state for n in ids)

    wait_until(check, timeout, what=f"{ids} to be {state}")


def histories(runtime, node_id):
    """``get_node_histories(node_id).data``, asserting the call succeeded."""
    res = api.get_node_histories(runtime, node_id)
    assert res.result, res.message
    return res.data


def polled_once(runtime, node_id):
    """The node ran once with no inputs of its own and succeeded (a debug_node after one poll)."""
    return exec_data(runtime, node_id) == {"inputs": {"_loop": 1, "_inner_loop": 1},
                                           "outputs": {"_loop": 1, "_inner_loop": 1, "_result": True}}
