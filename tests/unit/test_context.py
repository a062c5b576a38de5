"""Context variables: references, transitive closure and hydration."""

from __future__ import annotations

import pytest

from culm.data.context import (
    ContextVar,
    deformat,
    format_key,
    hydrate,
    transitive_references,
    var_references,
)
from culm.errors import HydrationError

pytestmark = pytest.mark.timeout(30)


def plain(name: str, value: object) -> ContextVar:
    return ContextVar(format_key(name), "plain", value)


def splice(name: str, value: object) -> ContextVar:
    return ContextVar(format_key(name), "splice", value)


def lazy(name: str, value: object, code: str = "upper") -> ContextVar:
    return ContextVar(format_key(name), "lazy", value, code)


def ctx(*variables: ContextVar) -> dict[str, ContextVar]:
    return {var.key: var for var in variables}


def test_key_helpers() -> None:
    assert deformat("${a}") == "a"
    assert deformat("a") == "a"
    assert format_key("a") == "${a}"


def test_var_references() -> None:
    assert var_references(plain("p", "${a}")) == frozenset()
    assert var_references(splice("s", ["${a}", {"k": "${b + c}"}])) == {"${a}", "${b}", "${c}"}
    assert var_references(lazy("l", "${x}")) == {"${x}"}


def test_transitive_references() -> None:
    variables = ctx(splice("a", "${b}"), splice("b", "${c} ${gone}"), plain("c", 1), plain("other", 2))
    assert transitive_references(variables, ["${a}", "${nope}"]) == {"${a}", "${b}", "${c}"}


def test_hydrate_resolves_each_kind() -> None:
    seen: list[tuple[str, object]] = []

    def resolver(var: ContextVar, rendered: object) -> object:
        seen.append((var.key, rendered))
        return str(rendered).upper()

    variables = ctx(
        plain("n", 2),
        plain("raw", "${n}"),  # plain values are never rendered
        splice("list", ["${n}", "${n * 3}"]),
        splice("text", "n=${n}"),
        lazy("shout", "${text}!"),
        plain("unused", 9),
    )
    values = hydrate(variables, ["${list}", "${shout}", "${raw}"], lazy_resolver=resolver)
    assert values == {"n": 2, "raw": "${n}", "list": [2, "6"], "text": "n=2", "shout": "N=2!"}
    assert seen == [("${shout}", "n=2!")]


def test_sole_reference_keeps_type_through_a_chain() -> None:
    variables = ctx(plain("obj", {"k": [1]}), splice("alias", "${obj}"), splice("alias2", "${alias}"))
    assert hydrate(variables, ["${alias2}"])["alias2"] == {"k": [1]}


def test_unknown_references_are_left_in_the_text() -> None:
    values = hydrate(ctx(splice("s", "${missing}-${missing.upper()}")), ["${s}", "${absent}"])
    assert values == {"s": "${missing}-${missing.upper()}"}


def test_lazy_without_resolver_gives_the_rendered_value() -> None:
    assert hydrate(ctx(plain("a", 1), lazy("l", "${a + 1}")), ["${l}"]) == {"a": 1, "l": "2"}


def test_each_variable_is_resolved_once() -> None:
    calls: list[str] = []

    def resolver(var: ContextVar, rendered: object) -> object:
        calls.append(var.key)
        return rendered

    variables = ctx(
        lazy("base", "b"), splice("x", "${base}1"), splice("y", "${base}2"), splice("z", "${x}${y}")
    )
    assert hydrate(variables, ["${z}", "${x}"], lazy_resolver=resolver)["z"] == "b1b2"
    assert calls == ["${base}"]


@pytest.mark.parametrize(
    "variables",
    [
        ctx(splice("a", "${a}")),
        ctx(splice("a", "${b}"), splice("b", "${c}x"), splice("c", "${a}")),
    ],
)
def test_cycles_raise_and_name_the_variables(variables: dict[str, ContextVar]) -> None:
    with pytest.raises(HydrationError) as info:
        hydrate(variables, ["${a}"])
    for key in variables:
        assert key in str(info.value)


def test_cycle_not_reachable_from_keys_is_ignored() -> None:
    variables = ctx(plain("ok", 1), splice("a", "${b}"), splice("b", "${a}"))
    assert hydrate(variables, ["${ok}"]) == {"ok": 1}


def test_failing_lazy_resolver_raises_hydration_error() -> None:
    def resolver(var: ContextVar, rendered: object) -> object:
        raise ValueError("backend down")

    with pytest.raises(HydrationError) as info:
        hydrate(ctx(lazy("ip", "x", code="ip_selector")), ["${ip}"], lazy_resolver=resolver)
    assert "${ip}" in str(info.value)
    assert "backend down" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_hostile_template_fails_hydration() -> None:
    with pytest.raises(HydrationError, match=r"\$\{bomb\}"):
        hydrate(ctx(splice("bomb", "${9**9**9**9}")), ["${bomb}"])


def test_unknown_type_fails() -> None:
    with pytest.raises(HydrationError, match="unknown type"):
        hydrate({"${a}": ContextVar("${a}", "compute?", 1)}, ["${a}"])


def test_long_chain_does_not_recurse() -> None:
    count = 5000
    variables = {format_key("v0"): plain("v0", "start")}
    for i in range(1, count):
        variables[format_key(f"v{i}")] = splice(f"v{i}", f"${{v{i - 1}}}")
    values = hydrate(variables, [format_key(f"v{count - 1}")])
    assert len(values) == count
    assert values[f"v{count - 1}"] == "start"


def chain(count: int) -> dict[str, ContextVar]:
    variables = {format_key("v0"): plain("v0", "start")}
    for i in range(1, count):
        variables[format_key(f"v{i}")] = splice(f"v{i}", f"${{v{i - 1}}}")
    return variables


def test_references_are_closed_over_other_variables_and_keys_made_at_run_time() -> None:
    from culm.core.data import with_references

    refs = {cv.key: cv.references for cv in with_references(
        ctx(splice("a", "${b} ${later}"), splice("b", "${c}"), plain("c", 1), splice("d", "${d}")))}
    assert refs == {"${a}": {"${b}", "${c}", "${later}"}, "${b}": {"${c}"}, "${c}": frozenset(), "${d}": frozenset()}
    assert len({cv.key: cv for cv in with_references(chain(400))}["${v399}"].references) == 399


@pytest.mark.timeout(10)
def test_a_long_chain_of_splices_is_refused_before_anything_is_stored() -> None:
    """5,000 splices that each use the one before hold 12.5 million references: working them out
    took minutes inside the transaction that stores the run (holding SQLite's write lock)."""
    import culm
    from culm import api
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    tree = build_tree(start)
    tree["data"]["inputs"] = {key: {"type": var.type, "value": var.value} for key, var in chain(5000).items()}
    with culm.Runtime("memory://", workers=0) as rt:
        result = api.run_pipeline(rt, tree)
        assert not result.result
        assert "over 250000 in all" in result.message and "context variable ${v" in result.message
        assert not api.get_pipeline_states(rt, tree["id"]).data
