"""An id that cannot be printed is refused on every runtime before anything is stored, and the
runtime (its ``culm worker`` processes on PostgreSQL + Redis and MariaDB + RabbitMQ) goes on.

Found probing (session 14): the worker writes node ids into its log lines, so a tree whose
activity id held a newline forged whole lines of a worker's log (tests/unit/test_printable_ids.py
checks the validator's text).
"""

from __future__ import annotations

import pytest
from engine_fixtures import finish, outputs

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.errors import TreeInvalidError

pytestmark = pytest.mark.timeout(120)


def echo_tree(act_id: str | None = None) -> tuple[dict, str]:
    start, act = EmptyStartEvent(), ServiceActivity(component_code="t_echo")
    act.component.inputs.x = Var(type=Var.PLAIN, value="fine")
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    if act_id is None:
        return tree, act.id
    node = tree["activities"].pop(act.id)
    tree["activities"][act_id] = {**node, "id": act_id}
    for flow in tree["flows"].values():
        for end in ("source", "target"):
            if flow[end] == act.id:
                flow[end] = act_id
    return tree, act_id


@pytest.mark.parametrize("ident", ["n\n2026-12-06 ERROR culm.core forged", "n\x1b[2J\x1b]0;title\x07"])
def test_an_unprintable_id_is_refused_and_a_healthy_pipeline_runs_beside(runtime, ident):
    bad, _ = echo_tree(ident)
    refused = api.run_pipeline(runtime, bad)
    assert refused.result is False and isinstance(refused.exc, TreeInvalidError)
    assert f"{ident!r}: id holds the character" in refused.message
    assert not api.get_pipeline_states(runtime, bad["id"]).data  # nothing was stored
    ok, act_id = echo_tree()
    finish(runtime, ok, timeout=60)
    assert outputs(runtime, act_id)["out"] == "fine!"
