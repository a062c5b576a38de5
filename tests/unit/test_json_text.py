"""culm._json writes and reads exactly what the json module does, and the places that use it keep
their fallbacks: values JSON cannot hold (a cycle among them) are still stored and copied."""

from __future__ import annotations

import json
import math

import pytest

from culm import _json
from culm.model.validator import prepare_tree
from culm.storage import codec

VALUES = [
    {}, [], "", 0, -0.0, 1.5, 1e300, 10**40, -(10**25), True, None, "plain", "é ünïcode ✓", "\ud800 lone",
    "quote \" backslash \\ control \x01 newline \n", {"nested": [{"a": [1, 2, {"b": None}]}, (3, 4)]},
    {1: "int key", 2.5: "float key", None: "none key", False: "bool key"},
    float("inf"), float("-inf"),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_text_is_what_json_writes(value):
    assert _json.dumps(value) == json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_read_back_as_json_reads_them(value):
    text = json.dumps(value, separators=(",", ":"))
    assert repr(_json.loads(text)) == repr(json.loads(text))


def test_nan_survives_both_ways():
    assert math.isnan(_json.loads(_json.dumps(float("nan"))))


@pytest.mark.parametrize("text", [" [1]", "[1] ", "\n{}\n"])
def test_surrounding_whitespace_is_read_like_json_does(text):
    assert _json.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "[1,", "[1] x", "{'a': 1}", "nul"])
def test_bad_text_raises_what_json_raises(text):
    with pytest.raises(json.JSONDecodeError):
        _json.loads(text)


def test_values_json_cannot_hold_are_refused():
    with pytest.raises(TypeError):
        _json.dumps({"s": {1, 2}})
    with pytest.raises(TypeError):
        _json.dumps({("tuple", "key"): 1})
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(RecursionError):
        _json.dumps(cyclic)


def test_codec_stores_a_value_that_holds_itself():
    cyclic: dict = {"name": "loop"}
    cyclic["self"] = cyclic
    back = codec.loads(codec.dumps({"v": cyclic}))
    assert back["v"]["name"] == "loop" and back["v"]["self"] is back["v"]


def test_a_tree_with_a_cyclic_value_is_copied_not_refused():
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

    act = ServiceActivity(component_code="anything")
    act.component.inputs.x = Var(type=Var.PLAIN, value="placeholder")
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    cyclic: list = [1]
    cyclic.append(cyclic)
    tree["activities"][act.id]["component"]["inputs"]["x"]["value"] = cyclic
    prepared = prepare_tree(tree)
    assert prepared.text is None  # not JSON: stored through the codec instead
    copied = prepared.tree["activities"][act.id]["component"]["inputs"]["x"]["value"]
    assert copied is not cyclic and copied[1] is copied


def test_viewable_values_are_written_by_any_json_encoder():
    from culm._json import VIEW_DEPTH, VIEW_VALUES, viewable

    itself: list = [1]
    itself.append(itself)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    shared: list = [1]
    for _ in range(40):  # 2**40 values written out
        shared = [shared, shared]
    value = {"nan": float("nan"), "inf": float("-inf"), "long": -(10**5000), (1, 2): {3}, 1.5: (1,),
             "itself": itself, "deep": deep, "shared": shared}
    shown = json.loads(json.dumps(viewable(value), allow_nan=False))
    assert shown["nan"] == "NaN" and shown["inf"] == "-Infinity" and shown["(1, 2)"] == [3] and shown["1.5"] == [1]
    assert shown["long"] == "<an integer of 16,610 bits, too long to show>" and shown["itself"] == [1, "<cycle>"]
    cut = f"<cut: nested more than {VIEW_DEPTH} levels deep or more than {VIEW_VALUES:,} values in all>"
    assert json.dumps(shown["deep"]).count("[") == VIEW_DEPTH - 1 and cut in json.dumps(shown["deep"])
    assert cut in json.dumps(shown["shared"])
    assert viewable(value["nan"]) == "NaN" and viewable([2**80]) == [2**80]  # what JSON writes is kept


@pytest.mark.parametrize("ids", [[], ["p1", "n2"], ("a",), ["é\u2028", 'q"\\', "\ud800", "${x}"]])
def test_ids_are_written_as_the_codec_writes_any_value(ids):
    assert codec.dumps_ids(ids) == codec.dumps(ids)
    assert codec.loads(codec.dumps_ids(ids)) == list(ids)
