"""culm.contrib.node_timeout: bamboo-pipeline's ``pipeline.contrib.node_timeout.api`` functions."""

from __future__ import annotations

import copy
import logging

import pytest

from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, SubProcess, build_tree
from culm.contrib import node_timeout
from culm.contrib.node_timeout.api import (
    TimeoutNodeConfig,
    apply_node_timeout_configs,
    apply_node_timout_configs,
    batch_create_node_timeout_config,
)
from culm.errors import TreeInvalidError
from culm.validator import tree_problems

FAIL_5 = {"enable": True, "action": "forced_fail", "seconds": 5}


def two_level_tree():
    """An outer activity and an activity inside a subprocess; returns (tree, outer, inner)."""
    inner_start = EmptyStartEvent()
    inner = ServiceActivity(component_code="example_component")
    inner_start.extend(inner).extend(EmptyEndEvent())
    start = EmptyStartEvent()
    outer = ServiceActivity(component_code="example_component")
    sub = SubProcess(start=inner_start)
    start.extend(outer).extend(sub).extend(EmptyEndEvent())
    return build_tree(start), outer, inner, sub


def config_of(tree, act_id, sub_id=None):
    acts = tree["activities"][sub_id]["pipeline"]["activities"] if sub_id else tree["activities"]
    return acts[act_id].get("timeout_config")


def test_apply_writes_configs_in_place_and_returns_a_copy_that_has_them_too():
    tree, outer, inner, sub = two_level_tree()
    skip_3 = {"enable": True, "action": "forced_fail_and_skip", "seconds": 3}
    returned = apply_node_timout_configs(tree, {outer.id: FAIL_5, inner.id: skip_3})
    for t in (tree, returned):  # bamboo's callers read either one
        assert config_of(t, outer.id) == FAIL_5
        assert config_of(t, inner.id, sub.id) == skip_3
    returned["activities"][outer.id]["timeout_config"]["seconds"] = 9
    assert config_of(tree, outer.id)["seconds"] == 5  # a deep copy
    assert tree_problems(returned) == []
    assert apply_node_timeout_configs is apply_node_timout_configs is node_timeout.apply_node_timout_configs


def test_apply_merges_over_the_current_config():
    tree, outer, _, _ = two_level_tree()
    apply_node_timout_configs(tree, {outer.id: FAIL_5})
    apply_node_timout_configs(tree, {outer.id: {"seconds": 60}})
    assert config_of(tree, outer.id) == {**FAIL_5, "seconds": 60}


def test_apply_refuses_a_bad_config_naming_node_and_field_and_writes_nothing():
    tree, outer, inner, sub = two_level_tree()
    before = copy.deepcopy(tree)
    with pytest.raises(TreeInvalidError) as caught:
        apply_node_timout_configs(tree, {outer.id: FAIL_5, inner.id: {"enable": True, "action": "wait", "seconds": -1}})
    message = str(caught.value)
    assert f"{inner.id}: timeout_config.seconds" in message and f"{inner.id}: timeout_config.action" in message
    assert tree == before
    with pytest.raises(TreeInvalidError, match=f"{outer.id}: timeout_config must be a dict"):
        apply_node_timout_configs(tree, {outer.id: 5})
    with pytest.raises(TreeInvalidError, match="configs: must be a dict"):
        apply_node_timout_configs(tree, [outer.id])


def test_apply_logs_ids_that_are_no_service_activity(caplog):
    tree, outer, _, sub = two_level_tree()
    with caplog.at_level(logging.WARNING, logger="culm.contrib.node_timeout"):
        apply_node_timout_configs(tree, {outer.id: FAIL_5, sub.id: FAIL_5, "nope": FAIL_5})
    assert f"{sub.id}, nope" in caplog.text or f"nope, {sub.id}" in caplog.text
    assert "timeout_config" not in tree["activities"][sub.id]


def test_batch_create_lists_the_enabled_timeouts():
    tree, outer, inner, sub = two_level_tree()
    apply_node_timout_configs(tree, {outer.id: FAIL_5, inner.id: {"enable": False, "seconds": None}})
    res = batch_create_node_timeout_config(tree["id"], tree)
    assert res == {"result": True, "message": "success",
                   "data": [TimeoutNodeConfig(outer.id, tree["id"], "forced_fail", 5)]}
    assert res["data"][0].timeout == 5 and res["data"][0].root_pipeline_id == tree["id"]


def test_batch_create_refuses_a_bad_config_naming_node_and_field():
    tree, outer, inner, sub = two_level_tree()
    tree["activities"][sub.id]["pipeline"]["activities"][inner.id]["timeout_config"] = {
        "enable": True, "action": "forced_fail", "seconds": True}
    res = batch_create_node_timeout_config(tree["id"], tree)
    assert res["result"] is False and res["data"] == []
    assert f"{inner.id}: timeout_config.seconds must be a whole number" in res["message"]
    assert batch_create_node_timeout_config("", tree)["message"] == "root_pipeline_id must be a non-empty string"
    assert "must be a pipeline tree" in batch_create_node_timeout_config(tree["id"], {"id": "x"})["message"]
