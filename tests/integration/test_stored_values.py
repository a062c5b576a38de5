"""How values are stored (docs/data-and-variables.md, "How values are stored").

Values from untrusted input are stored as data: one that looks like culm's pickle envelope is
never unpickled (it would run code of the sender's choosing in every process that reads it).
JSON is used where it keeps the value (a tuple may come back as a list, a non-str key as its
text); a value JSON would lose data of comes back exact, on every backend.
"""

from __future__ import annotations

import base64
import os
import pickle

import pytest
from components import stored_values
from engine_fixtures import inputs, outputs, run, wait_state
from support import wait_until

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
)
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


SAME = object()  # comes back equal to what was stored, with the same types
# name (see components.stored_values) -> what reading it back gives
ROUND_TRIPS: dict[str, object] = {
    "tuple": [1, 2],  # JSON: a tuple becomes a list (bamboo's rule)
    "nested tuple": {"a": [1, [2, 3]]},
    "int keys": {"1": "a", "2": "b"},  # JSON: a key becomes its text when no two keys collide
    "float, bool and None keys": {"1.5": "x", "true": 1, "null": 2},
    "int and str keys that collide": SAME,  # JSON would lose a key: pickled
    "bool and str keys that collide": SAME,
    "collision deep inside": SAME,
    "tuple key": SAME,  # JSON cannot hold the key: pickled
    "set": SAME,
    "datetime": SAME,
    "decimal": SAME,
    "big int": SAME,
    "text with NUL": SAME,
    "text with a lone surrogate": SAME,
    "unicode": SAME,
    "envelope lookalike": SAME,
    "none": SAME,
}


def _exact(got: object, want: object) -> bool:
    """Equal, and of the same types all the way down (1 == 1.0 == True would hide a change)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        return list(map(type, got)) == list(map(type, want)) and got == want and all(  # type: ignore[arg-type]
            _exact(got[k], want[k]) for k in want)  # type: ignore[index]
    if isinstance(want, list | tuple):
        return len(got) == len(want) and all(_exact(a, b) for a, b in zip(got, want, strict=True))  # type: ignore[arg-type]
    return got == want


def _expected(name: str) -> object:
    want = ROUND_TRIPS[name]
    return stored_values()[name] if want is SAME else want


def test_round_trip_table_covers_every_value():
    assert set(ROUND_TRIPS) == set(stored_values())


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_codec_round_trip(name):
    assert _exact(codec.loads(codec.dumps(stored_values()[name])), _expected(name))


def test_values_round_trip_through_the_store(runtime):
    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    acts = {}
    for name in ROUND_TRIPS:
        acts[name] = act = ServiceActivity(component_code="t_value")
        act.component.inputs.name = Var(type=Var.PLAIN, value=name)
    start.extend(pg).connect(*acts.values()).to(pg).converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, tree["id"], "FINISHED", timeout=30)
    wrong = {name: outputs(runtime, act.id)["value"] for name, act in acts.items()
             if not _exact(outputs(runtime, act.id)["value"], _expected(name))}
    assert not wrong


def test_a_tree_value_whose_keys_json_would_merge_keeps_them(runtime):
    start, echo, end = EmptyStartEvent(), ServiceActivity(component_code="t_echo"), EmptyEndEvent()
    echo.component.inputs.x = Var(type=Var.PLAIN, value={1: "a", "1": "b"})
    echo.component.inputs.y = Var(type=Var.PLAIN, value={1: "a"})
    start.extend(echo).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, tree["id"], "FINISHED")
    got = outputs(runtime, echo.id)
    # The whole tree takes the exact copy: both keys stay, and the other value keeps its int key.
    assert _exact(got["x"], {1: "a", "1": "b"}) and _exact(got["y"], {1: "a"})
