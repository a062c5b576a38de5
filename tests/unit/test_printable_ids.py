"""Pipeline and node ids take printable characters only.

Found probing (session 14): an id is written into the worker's log lines about its node ("node %s
timed out ..."), into URLs and into command lines; a tree whose activity id held a newline forged
whole log lines, one holding ``ESC [2J`` cleared the terminal of whoever read that log, one holding
U+202E showed the id reversed. The validator refused only NUL and lone surrogates.
"""

from __future__ import annotations

import pytest

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.errors import TreeInvalidError
from culm.validator import tree_problems

BAD = ["a\nERROR culm.core forged line", "a\rb", "a\x1b[2Jb", "a\x9b31mb", "a\u202eb", "a\u200bb", "a\x7fb",
       "a\u2028b"]


def tree_with_activity_id(ident: str) -> dict:
    start, act = EmptyStartEvent(), ServiceActivity(component_code="example_component")
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    node = tree["activities"].pop(act.id)
    tree["activities"][ident] = {**node, "id": ident}
    for flow in tree["flows"].values():
        for end in ("source", "target"):
            if flow[end] == act.id:
                flow[end] = ident
    return tree


@pytest.mark.parametrize("ident", BAD)
def test_an_id_that_cannot_be_printed_is_refused_naming_the_character(ident: str) -> None:
    problems = [str(p) for p in tree_problems(tree_with_activity_id(ident))]
    bad = next(char for char in ident[1:] if not char.isprintable())
    assert problems == [f"{ident!r}: id holds the character {bad!r}, which cannot be printed "
                        "(ids take printable characters only)"]


@pytest.mark.parametrize("ident", ["a\nforged", "p\x1b]0;title\x07"])
def test_run_pipeline_refuses_it_and_the_runtime_goes_on(ident: str) -> None:
    bad_node = tree_with_activity_id(ident)
    bad_root = tree_with_activity_id("node_1")
    bad_root["id"] = ident
    with culm.Runtime("memory://") as rt:
        for tree in (bad_node, bad_root):
            refused = api.run_pipeline(rt, tree)
            assert refused.result is False and isinstance(refused.exc, TreeInvalidError)
            assert f"{ident!r}: id holds the character" in refused.message
        healthy = tree_with_activity_id("node 1 (spaces and é are printable)")
        api.run_pipeline(rt, healthy)
        assert rt.wait(healthy["id"], timeout=30) == "FINISHED"


@pytest.mark.parametrize(
    ("ident", "problem"),
    [
        ("\u0430pprove", "mixes Cyrillic and Latin letters ('\u0430' and 'p')"),  # a Cyrillic а, then Latin
        ("\u0394t_check", "mixes Greek and Latin letters ('\u0394' and 't')"),
        ("\uff4e1", "is not in Unicode's NFKC form ('\\uff4e1'): it looks like 'n1' ('n1')"),  # a fullwidth n
        (
            "cafe\u0301",
            "is not in Unicode's NFKC form ('cafe\\u0301'): it looks like 'caf\u00e9' ('caf\\xe9')",
        ),
        ("x\u00b2", "is not in Unicode's NFKC form ('x\\xb2'): it looks like 'x2' ('x2')"),
    ],
)
def test_an_id_that_can_look_like_another_is_refused_naming_it(ident: str, problem: str) -> None:
    """Found probing (session 16): `approve` and `аpprove` (a Cyrillic а), `n1` and `ｎ1`, or `café`
    written with a composed é and with e + an accent were two ids that read as one; an operator
    who retried "the" node retried whichever their copy held. Such an id is refused, so that two
    ids that look the same are never both in a tree (or in the store)."""
    problems = [str(p) for p in tree_problems(tree_with_activity_id(ident))]
    assert len(problems) == 1 and problems[0].startswith(f"{ident}: id {problem}"), problems
    with culm.Runtime("memory://") as rt:
        refused = api.run_pipeline(rt, tree_with_activity_id(ident))
        assert (
            refused.result is False
            and isinstance(refused.exc, TreeInvalidError)
            and problem in refused.message
        )


@pytest.mark.parametrize(
    "ident",
    [
        "caf\u00e9",
        "\u041f\u0440\u0438\u0432\u0435\u0442",
        "\u03b1\u03b2\u03b3",
        "\u627f\u8a8dstep1",
        "node 1 (spaces and \u00e9 are printable)",
    ],
)
def test_ids_in_one_script_or_with_ideographs_are_taken(ident: str) -> None:
    assert tree_problems(tree_with_activity_id(ident)) == []


@pytest.mark.parametrize(
    ("ident", "problem"),
    [
        ("a/b", "id holds a '/', which the REST API and the console cannot address"),
        ("x/retry", "id holds a '/', which the REST API and the console cannot address"),
        ("..", "id is '..', which URLs take for a step in their path"),
        (".", "id is '.', which URLs take for a step in their path"),
    ],
)
def test_an_id_no_url_can_address_is_refused_naming_it(ident: str, problem: str) -> None:
    """Found probing (session 16): a node id holding a '/' ran and failed, and then the REST API
    and the console answered 404 for it, escaped or not: nobody there could retry or skip it."""
    assert [str(p) for p in tree_problems(tree_with_activity_id(ident))] == [f"{ident}: {problem}" + (
        " (a node is /api/v1/nodes/ID): write it without one" if "/" in ident else
        " (the REST API and the console could not address it)")]
    bad_root = tree_with_activity_id("node_1")
    bad_root["id"] = ident
    with culm.Runtime("memory://") as rt:
        refused = api.run_pipeline(rt, bad_root)
        assert refused.result is False and isinstance(refused.exc, TreeInvalidError) and problem in refused.message
    assert tree_problems(tree_with_activity_id("a\\b?c#d...")) == []  # an escaped URL carries these
