"""Context keys that no reference can reach are refused (culm.model.tree_shape).

Found probing (session 17): a ``${...}`` reference is read as a Python name, and Python reads
names in Unicode's NFKC form. So a tree's variables ``${é}`` (one character) and ``${é}`` (``e``
plus a combining accent) were both kept, looked the same in the console, and every reference
(however written) read the first: the second could never be reached, and a reviewer reading the
tree could not tell which value a node would get. Now a context key not in NFKC form is refused,
naming it and the form to write.
"""

from __future__ import annotations

import unicodedata

import pytest

from culm import builder as bd
from culm.model.validator import validate_tree

pytestmark = pytest.mark.timeout(60)

COMPOSED = unicodedata.normalize("NFC", "\u00e9")
DECOMPOSED = unicodedata.normalize("NFD", "\u00e9")


def _tree(inputs: dict, params: dict | None = None) -> dict:
    start, act = bd.EmptyStartEvent(), bd.ServiceActivity(component_code="example_component")
    act.component.inputs.x = bd.Var(type=bd.Var.SPLICE, value="${" + COMPOSED + "}")
    start.extend(act).extend(bd.EmptyEndEvent())
    return bd.build_tree(start, data=bd.Data(inputs=inputs))


@pytest.mark.parametrize("key", ["${" + DECOMPOSED + "}", "${\uff45}", "${\ufb01le}"])  # e + accent, fullwidth e, fi ligature
def test_a_context_key_no_reference_can_reach_is_refused_naming_it(key: str) -> None:
    tree = _tree({"${" + COMPOSED + "}": bd.Var(type=bd.Var.PLAIN, value="one"),
                  key: bd.Var(type=bd.Var.PLAIN, value="two")})
    problems = validate_tree(tree)
    assert [p.where for p in problems] == ["data.inputs"], problems
    normal = unicodedata.normalize("NFKC", key)
    assert f"data input key {key!r} is not in Unicode's NFKC form" in problems[0].message, problems
    assert repr(normal) in problems[0].message and "reference" in problems[0].message, problems


def test_context_keys_in_nfkc_form_are_kept() -> None:
    tree = _tree({"${" + COMPOSED + "}": bd.Var(type=bd.Var.PLAIN, value="one"),
                  "${\u4e2d\u6587}": bd.Var(type=bd.Var.PLAIN, value="two")})
    assert validate_tree(tree) == []
