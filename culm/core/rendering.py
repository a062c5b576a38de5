"""Where a node's inputs are rendered: inline when quick, else on the user-code pool.

Activities (:mod:`~culm.core.handlers.activity`), subprocesses
(:mod:`~culm.core.handlers.subprocess`), gateways with conditions
(:mod:`~culm.core.handlers.gateways`) and start and end events resolving context keys
(:mod:`~culm.core.handlers.events`) follow this rule.

Rendering runs user code: expressions (bounded by :mod:`culm.data.sandbox`) and lazy variables'
``get_value`` (not bounded at all). Neither may hold the engine thread and its write transaction,
so a handler first tries :func:`render_inline` — only without lazy variables, and only for
INLINE_RENDER_SECONDS — and otherwise hands :func:`render_later` out as (part of) an
:class:`~culm.core.outcomes.Invoke`, whose result it takes in the next transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from culm.core import data as cdata
from culm.core.outcomes import Invoke, Outcome
from culm.core.run import Run
from culm.data import template
from culm.errors import CulmError

# What rendering may take on the engine thread before it moves to the user-code pool: templates
# are almost always a few lookups or a remembered expression, which a pool round trip would slow
# (the engine thread and the pool share one interpreter lock), while a slow or hostile one must
# not hold the engine and its transaction for longer than this.
INLINE_RENDER_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class RenderFailed:
    """What rendering outside the transaction ended with when it failed."""

    error: str
    raw_inputs: dict[str, Any]


def raw_values(raw: dict[str, Any]) -> dict[str, Any]:
    """The configured values of raw inputs, as a failed node records them."""
    return {k: var.get("value") if isinstance(var, dict) else var for k, var in raw.items()}


def nested_objects(run: Run) -> bool:
    """Whether a sole ``${name['key'][0]}`` fragment gives the object it points at (the engine's
    ``Settings.render_nested_objects``)."""
    return run.engine.settings.render_nested_objects


def render_inline(run: Run, gathered: cdata.GatheredInputs) -> dict[str, Any] | None:
    """Render on the engine thread if that is quick; None when it must go to the pool.

    Raises:
        CulmError: Rendering failed (not for lack of time).
    """
    if gathered.lazy:
        return None
    with template.time_bound(INLINE_RENDER_SECONDS) as deadline:
        try:
            return cdata.finish_inputs(gathered, run.lazy_resolver(), nested_objects=nested_objects(run))
        except CulmError:
            if template.render_clock() < deadline:  # a real failure, not the inline time running out
                raise
    return None


def render_later(
    run: Run, gathered: cdata.GatheredInputs, raw: dict[str, Any], root_data: dict[str, Any] | None = None
) -> Callable[[], dict[str, Any] | RenderFailed]:
    """A call that renders ``gathered`` with nothing from the transaction (for the pool)."""
    lazy = run.detached_lazy_resolver(run.root_data() if root_data is None else root_data)
    nested = nested_objects(run)

    def render() -> dict[str, Any] | RenderFailed:
        try:
            return cdata.finish_inputs(gathered, lazy, nested_objects=nested)
        except CulmError as exc:
            return RenderFailed(str(exc), raw_values(raw))

    return render


def resolve_then(
    run: Run,
    gathered: cdata.GatheredInputs,
    compute: Callable[[Any], Any],
    resume: Callable[[Run, Any], Outcome],
) -> Outcome:
    """``resume(run, compute(lazy))`` here when that is quick, else ``compute`` on the user-code
    pool and ``resume`` in the next transaction. ``resume`` gets a :class:`RenderFailed` when
    ``compute`` raised a :class:`CulmError`, or whatever else escaped it."""
    if not gathered.lazy:
        with template.time_bound(INLINE_RENDER_SECONDS) as deadline:
            try:
                value = compute(run.lazy_resolver())
            except CulmError as exc:
                if template.render_clock() < deadline:  # a real failure, not the inline time running out
                    return resume(run, RenderFailed(str(exc), {}))
            else:
                return resume(run, value)
    lazy = run.detached_lazy_resolver(run.root_data())

    def call() -> Any:
        try:
            return compute(lazy)
        except CulmError as exc:
            return RenderFailed(str(exc), {})

    return Invoke(call, resume)
