"""Values from untrusted input are stored as data: one that looks like culm's pickle envelope is
never unpickled (it would run code of the sender's choosing in every process that reads it)."""

from __future__ import annotations

import base64
import os
import pickle

import pytest
from engine_fixtures import inputs, outputs, run, wait_state, wait_until

from culm import api
from culm.builder import Data, EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.storage import codec

pytestmark = pytest.mark.timeout(60)


class _MakesDir:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def envelope_lookalike(marker: str) -> dict:
    """What an attacker would send: the envelope key with a pickle that creates ``marker``."""
    return {"__culm_pickle__": base64.b64encode(pickle.dumps(_MakesDir(marker))).decode("ascii")}


def test_codec_round_trips_an_envelope_lookalike_as_plain_data(tmp_path):
    marker = str(tmp_path / "pwned")
    value = envelope_lookalike(marker)
    assert codec.loads(codec.dumps(value)) == value
    assert codec.loads(codec.dumps({"outer": value})) == {"outer": value}
    assert not os.path.exists(marker)


def test_values_culm_pickles_itself_still_round_trip():
    value = {"when": {1, 2}, "nested": [frozenset({3})]}
    assert codec.loads(codec.dumps(value)) == value


def test_engine_never_unpickles_payloads_from_trees_data_or_callbacks(runtime, tmp_path):
    marker = str(tmp_path / "pwned")
    start, echo, cb, end = EmptyStartEvent(), ServiceActivity(component_code="t_echo"), \
        ServiceActivity(component_code="t_callback"), EmptyEndEvent()
    echo.component.inputs.x = Var(type=Var.PLAIN, value=envelope_lookalike(marker))
    echo.component.inputs.y = Var(type=Var.SPLICE, value="${d}")
    start.extend(echo).extend(cb).extend(end)
    tree = build_tree(start, data=Data(inputs={"${d}": Var(type=Var.PLAIN, value=envelope_lookalike(marker))}))
    run(runtime, tree, root_pipeline_data=envelope_lookalike(marker))
    st = wait_state(runtime, cb.id, "RUNNING")
    wait_until(lambda: outputs(runtime, cb.id).get("waiting"), what="the callback node to wait")
    assert api.callback(runtime, cb.id, st["version"], envelope_lookalike(marker)).result
    wait_state(runtime, tree["id"], "FINISHED")
    got = inputs(runtime, echo.id)
    assert got["x"] == envelope_lookalike(marker) and got["y"] == envelope_lookalike(marker)
    assert outputs(runtime, cb.id)["callback_data"] == envelope_lookalike(marker)
    assert not os.path.exists(marker)
