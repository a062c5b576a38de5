"""Node data on the engine side: building contexts, rendering inputs, mapping outputs.

The pure evaluation rules (templates, the sandbox, hydration) live in :mod:`culm.data`; this module
decides which variables a node needs, where they are read from and where outputs go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from culm.core.records import ContextValue
from culm.data import context as dctx
from culm.data import template
from culm.data.sandbox_guards import describe
from culm.errors import ExpressionError, ExpressionLimitError, HydrationError, InvalidOperationError
from culm.model import limits
from culm.model.compiled import Graph, Node, PipelineSpec

PLAIN, SPLICE, LAZY = "plain", "splice", "lazy"

# fetch(keys) -> the stored context values among ``keys`` (missing keys simply absent)
Fetch = Callable[[Iterable[str]], Mapping[str, ContextValue]]
# resolve(var, rendered) -> the value of lazy variable ``var`` whose rendered value is ``rendered``
LazyResolver = Callable[[dctx.ContextVar, Any], Any]


def context_values_for(
    spec: PipelineSpec, extra_plain: Mapping[str, Any] | None = None, nodes: Iterable[Node] = ()
) -> list[ContextValue]:
    """The variables a (sub)pipeline context starts with, with transitive references.

    ``nodes``: the pipeline's own nodes; each lazy input or param of theirs becomes a variable of
    its own (:func:`lazy_inputs`), as bamboo makes them.
    """
    vars_: dict[str, dctx.ContextVar] = {}
    for key, var in spec.inputs.items():
        if not isinstance(var, dict):
            continue
        if var.get("source_act") and not var.get("need_initialization"):
            continue
        vtype = var.get("type", PLAIN)
        vars_[key] = dctx.ContextVar(key, vtype, var.get("value"), var.get("custom_type"))
    for node in nodes:
        for var in lazy_inputs(node).values():
            vars_[var.key] = var
    for key, value in (extra_plain or {}).items():
        vars_[key] = dctx.ContextVar(key, PLAIN, value)
    return with_references(vars_)


# References all the variables of one context may hold in all, counting those through other
# variables: n splices that each refer to the one before hold n**2/2, which would take minutes
# to work out (in the transaction that stores the run) and be stored with the context.
MAX_CONTEXT_REFERENCES = 250_000


def with_references(vars_: Mapping[str, dctx.ContextVar]) -> list[ContextValue]:
    """Attach to each variable the transitive closure of the keys it references.

    Raises:
        InvalidOperationError: The closures hold more than MAX_CONTEXT_REFERENCES keys in all.
    """
    direct_of: dict[str, frozenset[str]] = {}  # each variable's own references, parsed once

    def direct(key: str) -> frozenset[str]:
        found = direct_of.get(key)
        if found is None:
            found = direct_of[key] = dctx.var_references(vars_[key])
        return found

    out = []
    budget = MAX_CONTEXT_REFERENCES
    for key, var in vars_.items():
        refs: set[str] = set()
        pending = list(direct(key))
        # Keys no variable declares yet stay in: a node output creates them at run time (a
        # splice reading a loop counter), and they must be fetched when it is rendered.
        while pending:
            ref = pending.pop()
            if ref in refs:
                continue
            refs.add(ref)
            if len(refs) > budget:
                raise InvalidOperationError(
                    f"context variable {key} brings the references between the variables of one context "
                    f"over {MAX_CONTEXT_REFERENCES} in all (counting those through other variables, as in a "
                    "long chain of splices that each use the one before)"
                )
            if ref in vars_:
                pending.extend(direct(ref))
        refs.discard(key)
        if (size := limits.json_text_over(sorted(refs))) is not None:
            raise InvalidOperationError(
                f"context variable {key} refers to {len(refs)} keys (counting those through other variables), "
                f"{size:,} bytes once stored: at most {limits.TEXT_BYTES:,} fit (a MySQL TEXT column)"
            )
        budget -= len(refs)
        out.append(ContextValue(key, var.type, var.value, var.code, frozenset(refs)))
    return out


def fetch_needed(fetch: Fetch, keys: Iterable[str]) -> dict[str, Any]:
    """Read ``keys`` and everything they reference, in at most two round trips.

    The values are the stored :class:`ContextValue` records: they carry every attribute of a
    :class:`~culm.data.context.ContextVar` that hydration reads, so they are not copied into one.
    """
    keys = set(keys)
    if not keys:
        return {}
    found = dict(fetch(keys))
    more: set[str] = set()
    for cv in found.values():
        if cv.references:
            more.update(cv.references)
    if more:
        more -= found.keys()
        if more:
            found.update(fetch(more))
    return found


def node_inputs(node: Node) -> dict[str, Any]:
    """The raw inputs of an activity (its component inputs) or a subprocess (its params)."""
    if node.type == "SubProcess":
        return node.raw.get("params") or {}
    if node.type == "ServiceActivity":
        return (node.raw.get("component") or {}).get("inputs") or {}
    return {}


def lazy_inputs(node: Node) -> dict[str, dctx.ContextVar]:
    """``{input key: variable}``: the context variable ``${<input key>_<node id>}`` each lazy input
    (or param) of ``node`` is kept in, in the context of the pipeline that holds the node."""
    found = {}
    for key, var in node_inputs(node).items():
        if isinstance(var, dict) and var.get("type") == LAZY:
            found[key] = dctx.ContextVar(dctx.lazy_input_key(key, node.id), LAZY, var.get("value"),
                                         var.get("custom_type"))
    return found


def refer_lazy_inputs(node: Node, raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with each lazy input marked with the context key of its variable (``context_key``),
    which rendering reads when the context has it (runs stored before culm kept lazy inputs in the
    context have not: their inputs are resolved in place, as then)."""
    out = dict(raw)
    for key, var in raw.items():
        if isinstance(var, dict) and var.get("type") == LAZY:
            out[key] = {**var, "context_key": dctx.lazy_input_key(key, node.id)}
    return out


def split_inputs(raw: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Separate inputs that are rendered from those used verbatim (plain or need_render=False)."""
    render: dict[str, dict[str, Any]] = {}
    escape: dict[str, Any] = {}
    for key, var in raw.items():
        if not isinstance(var, dict):
            escape[key] = var
        elif var.get("need_render") is False or var.get("type", PLAIN) == PLAIN:
            escape[key] = var.get("value")
        else:
            render[key] = var
    return render, escape


@dataclass(frozen=True, slots=True)
class GatheredInputs:
    """A node's inputs with the stored variables they need, read in the transaction; rendering
    them (:func:`finish_inputs`) runs user expressions and lazy variables, so it may run elsewhere."""

    render: dict[str, dict[str, Any]]
    escape: dict[str, Any]
    refs: frozenset[str]
    needed: dict[str, Any]
    problem: str | None = None  # why rendering must fail without starting (too many fragments)

    @property
    def lazy(self) -> bool:
        """True when rendering calls a lazy variable's ``get_value`` (user code)."""
        for var in self.render.values():
            if var.get("type") == LAZY:
                return True
        for cv in self.needed.values():  # loops, not any(): this runs for every rendered node
            if getattr(cv, "type", PLAIN) == LAZY:
                return True
        return False


def gather_inputs(raw: Mapping[str, Any], fetch: Fetch) -> GatheredInputs:
    """Split a node's raw inputs and read every stored variable their templates refer to."""
    render, escape = split_inputs(raw)
    count = 0
    for var in render.values():
        value = var.get("value")
        count += value.count("${") if value.__class__ is str else template.fragment_count(value)
    if count > template.MAX_NODE_FRAGMENTS and (problem := template.too_many_fragments(count, "the templates of its inputs")):
        return GatheredInputs(render, escape, frozenset(), {}, problem)  # parsing them would take seconds
    refs: set[str] = set()
    for var in render.values():
        refs |= template.references(var.get("value"))
        if "context_key" in var:
            refs.add(var["context_key"])
    needed = fetch_needed(fetch, refs)
    problem = None
    if needed and (count := count + _needed_fragments(needed)) > template.MAX_NODE_FRAGMENTS:
        problem = template.too_many_fragments(count, "the templates of its inputs and the variables they need")
    return GatheredInputs(render, escape, frozenset(refs), needed, problem)


def _needed_fragments(needed: Mapping[str, Any]) -> int:
    """``${`` in the values of the rendered variables among ``needed``."""
    count = 0
    for cv in needed.values():
        if getattr(cv, "type", PLAIN) != PLAIN:
            value = cv.value
            count += value.count("${") if value.__class__ is str else template.fragment_count(value)
    return count


def finish_inputs(
    gathered: GatheredInputs, lazy: LazyResolver, extra: Mapping[str, Any] | None = None,
    nested_objects: bool = False,
) -> dict[str, Any]:
    """Render gathered inputs; no storage access. ``nested_objects``: a sole ``${name['key'][0]}``
    fragment gives the object it points at (``Settings.render_nested_objects``, bamboo's
    ``ENABLE_RENDER_OBJ_BY_MAKO_STRING``).

    Raises:
        HydrationError: a needed variable could not be resolved.
        ExpressionLimitError: a template went over a bound.
    """
    if gathered.problem is not None:
        raise ExpressionLimitError(gathered.problem)
    needed = dict(gathered.needed)
    for key, value in (extra or {}).items():
        needed[key] = dctx.ContextVar(key, PLAIN, value)
    refs = gathered.refs
    rendered: dict[str, Any] = {}
    with template.output_bound(template.MAX_NODE_RENDER_OUTPUT):
        try:
            namespace = dctx.hydrate(needed, refs, lazy_resolver=lazy, nested_objects=nested_objects) if refs else {}
        except HydrationError as exc:
            raise HydrationError(_name_inputs(str(exc), gathered.render)) from exc
        for key, var in gathered.render.items():
            context_key = var.get("context_key")
            if context_key is not None and (name := dctx.deformat(context_key)) in namespace:
                rendered[key] = namespace[name]
                continue
            try:
                value = template.render(var.get("value"), namespace, nested_objects)
            except ExpressionError as exc:  # the node's ex_data says which of its inputs failed
                kind = "param" if key.startswith("${") else "input"  # a subprocess's params are ${keys}
                raise type(exc)(f"{kind} {key!r}: {exc}") from exc
            if var.get("type") == LAZY:
                lazy_var = dctx.ContextVar(dctx.format_key(dctx.deformat(key)), LAZY, value, var.get("custom_type"))
                value = _resolve_lazy(lazy, lazy_var, value)
            rendered[key] = value
    rendered.update(gathered.escape)
    return rendered


def _name_inputs(message: str, render: Mapping[str, dict[str, Any]]) -> str:
    """``message`` with the input behind each generated lazy-input key it mentions."""
    for key, var in render.items():
        context_key = var.get("context_key")
        if context_key and context_key in message:
            message = message.replace(context_key, f"{context_key} (input {key})")
    return message


def render_inputs(
    raw: Mapping[str, Any],
    fetch: Fetch,
    lazy: LazyResolver,
    extra: Mapping[str, Any] | None = None,
    nested_objects: bool = False,
) -> dict[str, Any]:
    """Render a node's raw inputs against its pipeline context (:func:`gather_inputs`, then
    :func:`finish_inputs`).

    Raises:
        HydrationError: a needed variable could not be resolved.
        ExpressionLimitError: a template went over a bound.
    """
    return finish_inputs(gather_inputs(raw, fetch), lazy, extra, nested_objects)


def _resolve_lazy(lazy: LazyResolver, var: dctx.ContextVar, rendered: Any) -> Any:
    """A lazy input's value; ``get_value`` is user code, so whatever it raises fails the node."""
    try:
        return lazy(var, rendered)
    except Exception as exc:  # noqa: BLE001 - user code may raise anything; the node reports it
        raise HydrationError(f"lazy variable {var.key} (code {var.code!r}) failed: {describe(exc)}") from exc


def gather_keys(keys: Iterable[str], fetch: Fetch) -> GatheredInputs:
    """Read context keys (``${x}`` form) and everything they reference, for :func:`resolved_keys`."""
    keys = frozenset(keys)
    needed = fetch_needed(fetch, keys)
    problem = template.too_many_fragments(_needed_fragments(needed), "the variables it resolves")
    return GatheredInputs({}, {}, keys, needed, problem)


def resolved_keys(gathered: GatheredInputs, lazy: LazyResolver, nested_objects: bool = False) -> dict[str, Any]:
    """``{key: value}`` of the gathered keys that resolve; no storage access."""
    namespace = condition_namespace(gathered, lazy, nested_objects)
    return {k: namespace[dctx.deformat(k)] for k in gathered.refs if dctx.deformat(k) in namespace}


def resolve_keys(
    keys: Iterable[str], fetch: Fetch, lazy: LazyResolver
) -> dict[str, Any]:
    """Resolve context keys (``${x}`` form); returns ``{key: value}`` for those that resolve."""
    return resolved_keys(gather_keys(keys, fetch), lazy)


def gather_conditions(exprs: Iterable[str], fetch: Fetch) -> GatheredInputs:
    """Read every stored variable the conditions ``exprs`` refer to (see :func:`condition_namespace`)."""
    exprs = list(exprs)
    count = sum(map(template.fragment_count, exprs))
    if problem := template.too_many_fragments(count, "the templates of its conditions"):
        return GatheredInputs({}, {}, frozenset(), {}, problem)
    refs: set[str] = set()
    for expr in exprs:
        refs |= template.references(expr)
    needed = fetch_needed(fetch, refs) if refs else {}
    problem = template.too_many_fragments(count + _needed_fragments(needed),
                                          "the templates of its conditions and the variables they need")
    return GatheredInputs({}, {}, frozenset(refs), needed, problem)


def condition_namespace(gathered: GatheredInputs, lazy: LazyResolver, nested_objects: bool = False) -> dict[str, Any]:
    """Bare-name namespace with every variable the gathered conditions refer to; no storage access."""
    if gathered.problem is not None:
        raise ExpressionLimitError(gathered.problem)
    if not gathered.refs:
        return {}
    with template.output_bound(template.MAX_NODE_RENDER_OUTPUT):
        return dctx.hydrate(gathered.needed, gathered.refs, lazy_resolver=lazy, nested_objects=nested_objects)


# Context keys of this form hold the loop count update_node_loop_times gave a node; they are not
# ``${...}`` keys, so no template can refer to them.
LOOP_TIMES_PREFIX = "_loop_times:"


def loop_times_key(node_id: str) -> str:
    """The context key (in the context of the pipeline holding the node) of a node loop's count
    as :func:`culm.api.update_node_loop_times` last set it."""
    return LOOP_TIMES_PREFIX + node_id


def output_mapping(graph: Graph, node: Node) -> tuple[tuple[str, str], ...]:
    """(source_key, context_key) pairs of ``node``, looked up in the pipeline that holds it."""
    return graph.pipelines[node.pipeline_id].output_map.get(node.id, ())


def mapped_outputs(graph: Graph, node: Node, outputs: Mapping[str, Any]) -> list[ContextValue]:
    """Context values produced by ``node``'s outputs (only keys present in ``outputs``)."""
    return [
        ContextValue(ctx_key, PLAIN, outputs[src_key])
        for src_key, ctx_key in output_mapping(graph, node)
        if src_key in outputs
    ]
