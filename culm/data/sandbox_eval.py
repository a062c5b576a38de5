"""The evaluator of the expression sandbox: walks a checked syntax tree under :class:`Limits`.

Every name, attribute, call and operator goes through a check here. Builtins, methods and
formatting whose cost depends on their arguments are bounded in :mod:`culm.data.sandbox_calls`
and :mod:`culm.data.sandbox_format` before they run.
"""

from __future__ import annotations

import ast
import collections
import enum
import inspect
import itertools
import math
import operator
import time
import types
from collections import UserString
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from culm.data.sandbox_calls import BUILTINS, precheck_set_method, precheck_str_method
from culm.data.sandbox_format import format_width, percent_format, safe_format, strftime_width
from culm.data.sandbox_guards import (
    CONTAINERS,
    DICT_VIEWS,
    FORBIDDEN_NAMES,
    NOTHING,
    OTHER_SEQUENCES,
    POINTER_BYTES,
    SAFE_BUILTINS,
    SAFE_METHODS,
    SIZED,
    TABLE_BYTES,
    base_length,
    check_attribute_name,
    check_subscript,
    int_digits,
    is_holder,
    measure,
    method_kind,
    opaque,
    proxied,
    static_attribute,
    user_method,
    without_addresses,
)
from culm.data.sandbox_keys import MAX_HASH_COLLISIONS, chained, check_spread
from culm.data.sandbox_objects import (
    ARITH_DUNDERS,
    COMPARE_DUNDERS,
    HASH_DUNDERS,
    TEXT_DUNDERS,
    TRUTH_DUNDERS,
    ZONED,
    forget_pseudo_member,
    item_of,
    operator_refusal,
    own_operator,
    protocol_refusal,
    python_value_method,
    read_attribute,
    refused_call,
    value_method,
    value_object,
    zone_refusal,
)
from culm.data.sandbox_shared import held_items
from culm.errors import ExpressionError, ExpressionLimitError

if TYPE_CHECKING:
    from culm.data.sandbox import Limits

# The clock of every time limit of rendering and evaluation (the sandbox's, a render's, a node's,
# the engine thread's inline budget): the CPU time of the thread doing the work, which is the
# thread that set the deadline. The wall clock also counts time the thread never got: on a busy
# machine (load 200, or valgrind running one thread at a time) a pool thread can wait over a
# second for a core or the GIL between two fragments, and its node failed with "rendering took
# longer than 1.0 seconds" (a pipeline left RUNNING with a FAILED node, seen by the benchmarks).
render_clock = time.thread_time

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
    ast.BitXor: operator.xor, ast.BitAnd: operator.and_,
}  # fmt: skip
_UNARYOPS: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert,
}  # fmt: skip
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip


# ---------------------------------------------------------------- callables handed to expressions


class Builtin:
    """A safe builtin as the expression sees it; calls go through the evaluator's checks."""

    __slots__ = ("_ev", "_name", "_fn")

    def __init__(self, ev: Evaluator, name: str, fn: Callable[..., Any]) -> None:
        self._ev, self._name, self._fn = ev, name, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._ev.tick()
        self._ev.check_clock()  # every call, so that slow calls cannot run back to back unseen
        dunders = _BUILTIN_OPERATORS.get(self._name)
        if dunders is not None:
            for arg in (*args, *kwargs.values()):
                if self._name in _KEYS_ONLY and issubclass(type(arg), dict):
                    self._ev.plain_members(arg, dunders, f"{self._name}() of")  # what it goes through
                else:
                    self._ev.plain(arg, dunders, f"{self._name}() of")
        return self._ev.built(self._fn(self._ev, *args, **kwargs))

    def __repr__(self) -> str:
        return f"<builtin {self._name}>"


class BoundMethod:
    """A whitelisted method of a str/list/dict/... value; size-sensitive ones are pre-checked."""

    __slots__ = ("_ev", "_obj", "_name")

    def __init__(self, ev: Evaluator, obj: Any, name: str) -> None:
        self._ev, self._obj, self._name = ev, obj, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ev.call_method(self._obj, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<method {type(self._obj).__name__}.{self._name}>"


# ---------------------------------------------------------------- the evaluator

_CHUNK = 256
_DRAIN_CHUNK = 64  # smaller: an item of a zip of many iterables is a tuple of as many


def _no_tick() -> None:
    pass



class Evaluator:
    __slots__ = ("names", "lim", "deadline", "steps", "allocated", "memory", "builtins", "sizes", "checked")

    def __init__(self, names: Mapping[str, Any], lim: Limits, deadline: float | None) -> None:
        self.names = names
        self.lim = lim
        own = render_clock() + lim.time_limit
        self.deadline = own if deadline is None else min(own, deadline)
        self.steps = 0
        self.allocated = 0
        self.memory = 0
        self.builtins: dict[str, Any] = {}
        self.sizes: dict[int, tuple[Any, int, int]] = {}
        self.checked: dict[tuple[str, ...], dict[int, Any]] = {}

    # -- accounting

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.lim.max_steps:
            raise ExpressionLimitError(f"expression took more than {self.lim.max_steps} steps")
        if not self.steps & 31:  # reading the clock costs more than a step
            self.check_clock()

    def check_clock(self) -> None:
        if render_clock() > self.deadline:
            raise ExpressionLimitError(f"expression ran longer than {self.lim.time_limit} seconds")

    def measure(self, value: Any) -> tuple[int, int]:
        """``(approximate len(str(value)), approximate bytes)`` of ``value``."""
        kind = type(value)  # the real type: isinstance() runs a __class__ property
        if not issubclass(kind, CONTAINERS):
            # a scalar returns at once; a holder (a SimpleNamespace, a dataclass, a UserDict) is
            # measured by what it writes, to the limits: measured to 0 it was a few characters,
            # and f'{ns}' of one holding 3 million ints wrote 26 million characters (5-40 s) first
            return measure(value, self.lim.max_value_size, self.lim.max_memory, self.check_clock, self.sizes)
        length = len(value) if kind in _SIZED_TYPES else base_length(kind)(value)
        if length < 64 and kind in _SMALL_HOLDERS:
            # a big value held twice ([rows, rows], {'a': rows, 'b': rows}) is measured once
            for child in value.values() if kind is dict else value:
                # a subclass's length is its built-in type's, never its own __len__
                if issubclass(type(child), CONTAINERS) and base_length(type(child))(child) >= 64:
                    self.measure(child)
        if length >= 64:
            cached = self.sizes.get(id(value))
            if cached is not None and cached[0] is value:
                return cached[1], cached[2]
            size, mem = measure(value, self.lim.max_value_size, self.lim.max_memory, self.check_clock, self.sizes)
            self.sizes[id(value)] = (value, size, mem)  # the reference keeps the id from being reused
            return size, mem
        return measure(value, self.lim.max_value_size, self.lim.max_memory, self.check_clock, self.sizes)

    def size(self, value: Any) -> int:
        return self.measure(value)[0]

    def charge(self, amount: int, memory: int = 0) -> None:
        """Count ``amount`` units of data and ``memory`` bytes built; refuse past the limits.

        Both only grow (nothing is credited back when a value is dropped), so they bound what the
        evaluation holds at any moment from above.
        """
        self.allocated += amount
        self.memory += memory
        if self.allocated > self.lim.max_allocation:
            raise ExpressionLimitError(f"expression built more than {self.lim.max_allocation} units of data")
        if self.memory > self.lim.max_memory:
            raise ExpressionLimitError(f"expression needs more than {self.lim.max_memory} bytes of memory")

    def reserve(self, memory: int, what: str) -> None:
        """Charge the bytes a call is about to build, before it runs."""
        if self.memory + memory > self.lim.max_memory:
            raise ExpressionLimitError(
                f"{what} would need more than {self.lim.max_memory} bytes of memory"
            )
        self.memory += memory

    def ensure_length(self, length: int, what: str) -> None:
        if length > self.lim.max_sequence:
            # a length computed from a 4,000-digit int would write all its digits into ex_data
            told = length if length < 10**15 else f"about 10**{int_digits(length) - 1}"
            raise ExpressionLimitError(f"{what} would be {told} long, over {self.lim.max_sequence}")

    def ensure_size(self, size: int, what: str) -> None:
        if size > self.lim.max_value_size:
            raise ExpressionLimitError(f"{what} would be too large (size {size} > {self.lim.max_value_size})")

    def ensure_int(self, value: int, what: str) -> None:
        if value.bit_length() > self.lim.max_int_bits:
            raise ExpressionLimitError(f"{what} would exceed {self.lim.max_int_digits} digits")

    def ensure_number(self, value: Any, what: str) -> None:
        """Refuse a Decimal or Fraction whose conversion to an int or to fixed-point text would
        build more than max_int_digits digits (int(Decimal('1e999999999')) is a billion-digit
        int; a context holds one whenever a component returns money or a run is given one)."""
        if issubclass(type(value), Decimal):  # the real type: isinstance() runs a __class__ property
            if value.is_finite() and abs(value.adjusted()) > self.lim.max_int_digits:
                raise ExpressionLimitError(
                    f"{what}: a Decimal of exponent {value.adjusted()} would exceed {self.lim.max_int_digits} digits"
                )
        elif issubclass(type(value), Fraction):
            self.ensure_int(value.numerator, f"{what}: the numerator of a Fraction")
            self.ensure_int(value.denominator, f"{what}: the denominator of a Fraction")

    def built(self, value: Any) -> Any:
        """Check and charge a freshly built value."""
        if issubclass(type(value), SIZED):
            self.ensure_length(len(value), f"{type(value).__name__} result")
            size, mem = self.measure(value)
            self.ensure_size(size, f"{type(value).__name__} result")
            self.charge(size, mem)
        elif type(value) is int:
            if value.bit_length() > self.lim.max_int_bits:
                # however it was made (int('f' * 10**6, 16), a | b, ...): no bigger int ever exists
                # here, so // % and str() on one stay cheap
                self.ensure_int(value, "integer result")
        elif type(value) in _RARE_RESULTS:  # exact types: isinstance() of an ABC costs every call
            if type(value) is Fraction:
                self.ensure_number(value, "Fraction result")
            else:
                self.ensure_length(len(value), f"{type(value).__name__} result")
                self.charge(len(value), POINTER_BYTES * len(value))
        elif type(value) not in _PLAIN_VALUES and issubclass(type(value), enum.Flag):
            forget_pseudo_member(value)  # p | 12345 keeps a new member in its class for good
        return value

    def take(self, iterable: Any, what: str, *, returned: bool = False) -> list[Any]:
        """``list(iterable)``, built one item at a time under every limit (a C builtin fed a lazy
        iterable would build the whole result before any check could see it).

        The items' bytes are charged, unless the list is ``returned`` as the call's result
        (:meth:`built` charges it then).
        """
        if issubclass(type(iterable), str | list | tuple | dict | set | frozenset) and len(iterable) < 64:
            self.reach(iterable, "iterating")
            return list(iterable)
        self.reach(iterable, "iterating")
        items: list[Any] = []
        source = iter(iterable)
        size = mem = 0
        room = self.lim.max_memory - self.memory
        # in chunks: islice and the measure of a flat chunk run in C, a per-item loop would not
        while chunk := list(itertools.islice(source, _CHUNK)):
            csize, cmem = measure(chunk, self.lim.max_value_size, room, self.check_clock)
            size += csize
            mem += cmem
            items.extend(chunk)
            self.ensure_length(len(items), what)
            self.ensure_size(size, what)
            if mem > room:
                raise ExpressionLimitError(f"{what} would need more than {self.lim.max_memory} bytes of memory")
            self.check_clock()
        if not returned:
            self.reserve(mem, what)
        return items

    @staticmethod
    def lazy(iterable: Any) -> bool:
        """True for an iterator (zip, enumerate, reversed, a generator): consuming one in C runs
        code the clock cannot see, for as long as the iterator has items (a zip of 900 ranges of
        a million items each is 900 million steps inside one all() or one "in")."""
        kind = type(iterable)
        # read from the class as stored: issubclass(kind, Iterator) reads kind.__mro__, which a
        # metaclass may compute with its own code
        return kind not in _SIZED_TYPES and static_attribute(kind, "__next__") is not NOTHING

    def reach(self, obj: Any, what: str) -> None:
        """Refuse iterating, indexing, measuring or testing membership of an object whose protocol
        is its own code (a file, a client), unless the limits trust the context's objects."""
        if type(obj) in _PROTOCOL_TYPES or self.lim.trust_objects:
            return
        refusal = protocol_refusal(obj, what)
        if refusal is not None:
            raise refusal

    def plain(self, value: Any, dunders: tuple[str, ...], what: str) -> None:
        """Refuse ``what`` ``value`` when it, or a value it holds, would run its class's own
        ``dunders`` (a client's ``__eq__``, a model's ``__str__``), unless the limits trust the
        context's objects. A container is refused too when :meth:`walkable` refuses it."""
        kind = type(value)
        if kind in _PLAIN_VALUES:
            return
        if issubclass(kind, CONTAINERS) or is_holder(kind):  # whatever the trust: a bound on work, not on code
            # a holder (a SimpleNamespace, a dataclass, a UserList) compares and hashes what it holds
            self.walkable(value, what)
        if self.lim.trust_objects:
            return
        # every container walked is remembered for the evaluation: no expression mutates a value
        seen = self.checked.setdefault(dunders, {})
        if seen.get(id(value)) is value:
            return
        refusal = operator_refusal(value, dunders, what, seen, self.check_clock)
        if refusal is not None:
            raise refusal

    def walkable(self, value: Any, what: str) -> None:
        """Refuse ``what`` (comparing, hashing, looking up, sorting...) a container or a holder (a
        SimpleNamespace, a dataclass, a UserDict) sharing its parts, past the limits when measured
        as often as they are held, that a walk would go through in more than ``SHARED_ALLOWANCE``
        times the items it holds plus ``max_value_size // 2``: its operators walk each item as
        often as it is held, in one C call.

        Values a component returns keep their sharing (pickled): a tuple holding one half twice,
        60 levels deep, is 61 small tuples that hash or compare equal in 2**60 steps, and held the
        worker for good. A big value that shares nothing costs a walk of what memory holds; one
        holding a big list under two keys ({'a': rows, 'b': rows}) two such walks.
        """
        kind = type(value)
        if kind in _SMALL_HOLDERS and len(value) < 64:
            items = itertools.chain(dict.keys(value), dict.values(value)) if kind is dict else value
            if set(map(type, items)) <= _PLAIN_VALUES:
                return  # a row of scalars (its types gathered in C): nothing in it is held twice
        seen = self.checked.setdefault(("walkable",), {})
        if seen.get(id(value)) is value:
            return
        shape: list[int] = []
        measure(value, self.lim.max_value_size, self.lim.max_memory, self.check_clock, self.sizes, shape)
        if not shape or shape[0] <= shape[1]:  # within the limits, or a big value sharing nothing
            seen[id(value)] = value
            return
        # each item written takes two characters at least (", "): the limit on a value's text
        spare = self.lim.max_value_size // 2
        walked, held = held_items(value, SHARED_ALLOWANCE, spare, self.check_clock)
        if walked > SHARED_ALLOWANCE * held + spare:
            raise ExpressionLimitError(
                f"{what} a {type(value).__name__} value is refused: it holds its parts more than once, and a "
                f"walk of it (one call) would meet its {held} items over {walked} times")
        seen[id(value)] = value

    def compared(self, left: Any, right: Any) -> None:
        """Refuse comparing values whose comparison would run a class's own operator. A container
        compared to None, a number or a str never calls its items' ``__eq__``, nor does a built-in
        container compared to itself (the items are the same objects: identity answers)."""
        if type(left) in _PLAIN_VALUES and type(right) in _PLAIN_VALUES:
            return
        if left is right and type(left) in _EXACT_HOLDERS:
            return
        # issubclass of the real types: isinstance() runs a __class__ property
        if issubclass(type(left), _KEYED_OR_VIEWS) and issubclass(type(right), _KEYED_OR_VIEWS) and not self.lim.trust_objects:
            # equal sets or dicts (or their keys or items views) look every key up in the other
            self.keyed(_viewed(left), "comparing")
            self.keyed(_viewed(right), "comparing")
        for value, other in ((left, right), (right, left)):
            if type(other) in _PLAIN_VALUES:
                self.operand(value, _COMPARED)
            else:
                self.plain(value, _COMPARED, "comparing")

    def plain_members(self, container: Any, dunders: tuple[str, ...] | None = None, what: str = "comparing") -> None:
        """Refuse ``x in container`` (or ``what`` else goes through a dict's keys: ``d.get(x)``,
        ``sorted(d)``) when it would run a class's own ``dunders`` (``==`` and ``hash``): a dict's
        or a set's keys only (its values are never compared), else every item. Keys need no
        :meth:`walkable`: a key sharing its parts too often never got into a dict (hashing it
        would not have ended)."""
        if type(container) in _PLAIN_VALUES or self.lim.trust_objects:
            return
        dunders = _COMPARED if dunders is None else dunders
        if issubclass(type(container), dict | set | frozenset) and own_operator(type(container), dunders) is None:
            seen = self.checked.setdefault(("keys", *dunders), {})
            if seen.get(id(container)) is not container:
                keys = list(dict.keys(container) if issubclass(type(container), dict) else container)
                self.plain(keys, dunders, what)
                seen[id(container)] = container
            return
        self.plain(container, dunders, what)

    def members_plain(self, chunk: list[Any]) -> bool:
        """True once a chunk drained from a lazy ``in`` operand holds no object with its own ``__eq__``."""
        self.plain(chunk, _COMPARED, "comparing")
        return True

    def operand(self, value: Any, dunders: tuple[str, ...]) -> None:
        """Refuse an operator (``dunders``) of an object whose class wrote it (its own code); the
        values it holds are not walked: the built-in containers' operators never call theirs."""
        if type(value) in _PLAIN_VALUES or self.lim.trust_objects:
            return
        if own_operator(type(value), dunders) is not None:
            raise operator_refusal(value, dunders, "an operator on") or ExpressionError("an operator")
        if issubclass(type(value), ZONED) and not _ZONE_SILENT.issuperset(dunders):
            # an aware date compared, hashed or subtracted asks its zone for the offset
            refusal = zone_refusal(value, "an operator on")
            if refusal is not None:
                raise refusal
        if issubclass(type(value), collections.Counter):
            # Counter's operators (written in Python) add and compare the counts it holds
            refusal = operator_refusal(value, ARITH_DUNDERS + COMPARE_DUNDERS, "an operator on")
            if refusal is not None:
                raise refusal

    def truth(self, value: Any) -> bool:
        """``bool(value)``; refused, as ``len(value)`` is, for an object whose class measures it
        with its own ``__len__`` (a queryset counts its rows) and has no ``__bool__``."""
        kind = type(value)
        if kind in _PROTOCOL_TYPES or self.lim.trust_objects:
            return bool(value)
        if own_operator(kind, ("__bool__",)) is not None:
            self.plain(value, ("__bool__",), "testing the truth of")
        if not hasattr(kind, "__len__") or hasattr(kind, "__bool__"):
            return bool(value)
        refusal = protocol_refusal(value, "testing the truth of")
        if refusal is not None:
            raise refusal
        return bool(value)

    def truths(self, items: Any) -> Any:
        """``items``, after :meth:`truth` of one item of each kind whose truth it refuses: before
        all() or any() tests them in C (one pass over their types, in C too)."""
        if not self.lim.trust_objects and type(items) not in (str, bytes, range):
            for kind in set(map(type, items)) - _PROTOCOL_TYPES:
                if (hasattr(kind, "__len__") and not hasattr(kind, "__bool__")) or own_operator(kind, TRUTH_DUNDERS):
                    self.truth(next(item for item in items if type(item) is kind))
        return items

    def drain(self, iterable: Any) -> Iterator[list[Any]]:
        """The items of ``iterable`` in chunks, the clock read before each (nothing is kept)."""
        self.reach(iterable, "iterating")
        source = iter(iterable)
        self.check_clock()
        while chunk := list(itertools.islice(source, _DRAIN_CHUNK)):
            yield chunk
            self.check_clock()

    def keyed(self, holder: Any, what: str) -> None:
        """Refuse a set's or dict's keys when too many share a hash (see :meth:`hashed`); once per
        holder and evaluation."""
        seen = self.checked.setdefault(("hashed",), {})
        if seen.get(id(holder)) is not holder:
            self.spread([holder], f"{what}: the keys of a {type(holder).__name__}")
            seen[id(holder)] = holder

    def spread(self, holders: list[Any], what: str) -> None:
        """Refuse the keys of ``holders`` (sets or dicts that exist already) when too many share a
        hash, looked at in chunks and counted in C, the clock read after each: a set of 3,000,000
        keys is not copied whole (:func:`culm.data.sandbox_keys.check_spread`)."""
        check_spread(chained(holders, _keys), what, self.hashed, self.check_clock)

    def hashed(self, items: list[Any], what: str) -> list[Any]:
        """Refuse ``items`` as keys of one set or dict when too many unequal ones share a hash.

        CPython compares a new key with every stored key of the same hash, so n keys that collide
        (all multiples of 2**61-1 do) cost n**2/2 comparisons inside one C call.
        """
        self.plain(items, HASH_DUNDERS, f"{what}: hashing")
        if len(items) <= MAX_HASH_COLLISIONS or len(items) - len(set(map(hash, items))) <= MAX_HASH_COLLISIONS:
            return items  # at most that many items share a hash with another one (counted in C)
        groups: dict[int, list[Any]] = {}
        for index, item in enumerate(items):
            group = groups.get(hash(item))
            if group is None:
                groups[hash(item)] = [item, 0]
            elif not (group[0] is item or group[0] == item):
                group[1] += 1
                if group[1] > MAX_HASH_COLLISIONS:
                    raise ExpressionLimitError(
                        f"{what}: more than {MAX_HASH_COLLISIONS} different keys share one hash"
                    )
            if not index & 4095:
                self.check_clock()
        self.reserve(TABLE_BYTES * len(items), what)
        return items

    # -- dispatch

    def eval(self, node: ast.AST, scope: dict[str, Any]) -> Any:
        self.tick()
        return _DISPATCH[type(node)](self, node, scope)

    def e_constant(self, node: ast.Constant, scope: dict[str, Any]) -> Any:
        return node.value

    def e_name(self, node: ast.Name, scope: dict[str, Any]) -> Any:
        name = node.id
        if name in scope:
            return scope[name]
        if name in self.names:
            return self.names[name]
        if name in SAFE_BUILTINS:
            return self.builtin(name)
        if name in FORBIDDEN_NAMES:
            raise ExpressionError(f"name {name!r} is forbidden")
        raise ExpressionError(f"unknown name {name!r}")

    def e_binop(self, node: ast.BinOp, scope: dict[str, Any]) -> Any:
        return self.binop(node.op, self.eval(node.left, scope), self.eval(node.right, scope))

    def e_unaryop(self, node: ast.UnaryOp, scope: dict[str, Any]) -> Any:
        if isinstance(node.op, ast.Not):
            return not self.truth(self.eval(node.operand, scope))
        operand = self.eval(node.operand, scope)
        self.operand(operand, _UNARY_DUNDERS[type(node.op)])
        return self.built(_UNARYOPS[type(node.op)](operand))

    def e_boolop(self, node: ast.BoolOp, scope: dict[str, Any]) -> Any:
        is_and = isinstance(node.op, ast.And)
        value = None
        for sub in node.values:
            value = self.eval(sub, scope)
            if self.truth(value) is not is_and:
                return value
        return value

    def e_compare(self, node: ast.Compare, scope: dict[str, Any]) -> Any:
        left = self.eval(node.left, scope)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.eval(comparator, scope)
            kind = type(op)
            if kind in _MEMBERSHIP:
                self.plain(left, _COMPARED, "comparing")
                self.plain_members(right)
            elif kind not in _IDENTITY:
                self.compared(left, right)
            if kind in _MEMBERSHIP:
                self.reach(right, "testing membership in")
            if kind in _MEMBERSHIP and self.lazy(right) and not hasattr(type(right), "__contains__"):
                found = any(self.members_plain(chunk) and left in chunk for chunk in self.drain(right))
                if found is not (kind is ast.In):
                    return False
            elif not _COMPARE[kind](left, right):
                return False
            left = right
        return True

    def e_ifexp(self, node: ast.IfExp, scope: dict[str, Any]) -> Any:
        return self.eval(node.body if self.truth(self.eval(node.test, scope)) else node.orelse, scope)

    def e_subscript(self, node: ast.Subscript, scope: dict[str, Any]) -> Any:
        obj = self.eval(node.value, scope)
        key = self.eval(node.slice, scope)
        check_subscript(obj, key)
        self.reach(obj, "indexing")
        for part in (key.start, key.stop, key.step) if type(key) is slice else (key,):
            self.plain(part, _KEYED, "indexing by")
        if issubclass(type(key), slice):  # a copy: charged like any other value built
            return self.built(obj[key])
        return item_of(obj, key)  # a defaultdict's missing key never calls its factory

    def e_slice(self, node: ast.Slice, scope: dict[str, Any]) -> Any:
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if part is None else self.eval(part, scope) for part in parts))

    def e_attribute(self, node: ast.Attribute, scope: dict[str, Any]) -> Any:
        return self.attribute(self.eval(node.value, scope), node.attr)

    def e_call(self, node: ast.Call, scope: dict[str, Any]) -> Any:
        func = self.eval(node.func, scope)
        args = [self.eval(arg, scope) for arg in node.args]
        kwargs = {kw.arg: self.eval(kw.value, scope) for kw in node.keywords if kw.arg}
        if issubclass(type(func), Builtin | BoundMethod):
            return func(*args, **kwargs)
        if user_method(func):
            if self.lim.trust_objects or python_value_method(func):
                return func(*args, **kwargs)
            raise refused_call(func)
        raise ExpressionError(f"calling {type(func).__name__} objects is not allowed")

    def e_list(self, node: ast.List, scope: dict[str, Any]) -> Any:
        return self.built([self.eval(elt, scope) for elt in node.elts])

    def e_tuple(self, node: ast.Tuple, scope: dict[str, Any]) -> Any:
        return self.built(tuple(self.eval(elt, scope) for elt in node.elts))

    def e_set(self, node: ast.Set, scope: dict[str, Any]) -> Any:
        return self.built(set(self.hashed([self.eval(elt, scope) for elt in node.elts], "set display")))

    def e_dict(self, node: ast.Dict, scope: dict[str, Any]) -> Any:
        pairs = zip(node.keys, node.values, strict=True)  # no None keys: "**" was refused statically
        items = [(self.eval(k, scope), self.eval(v, scope)) for k, v in pairs if k is not None]
        self.hashed([k for k, _v in items], "dict display")
        return self.built(dict(items))

    def e_joinedstr(self, node: ast.JoinedStr, scope: dict[str, Any]) -> Any:
        pieces = [self.eval(value, scope) for value in node.values]
        self.ensure_length(sum(len(p) for p in pieces), "f-string result")
        return self.built("".join(pieces))

    def e_formattedvalue(self, node: ast.FormattedValue, scope: dict[str, Any]) -> Any:
        value = self.eval(node.value, scope)
        self.plain(value, TEXT_DUNDERS, "formatting")
        if node.conversion != -1:
            self.ensure_length(self.size(value), "converted value")
            value = (
                ascii(value)
                if node.conversion == 97
                else repr(value)
                if node.conversion == 114
                else str(value)
            )
            self.built(value)  # each piece is charged as it is made, not only the joined result
        self.ensure_number(value, "formatted value")
        spec = "" if node.format_spec is None else self.eval(node.format_spec, scope)
        self.ensure_length(self.size(value) + format_width(self.lim, value, spec), "formatted value")
        return self.built(_no_address(format(value, spec)))

    # -- comprehensions

    def loops(
        self, generators: list[ast.comprehension], local: dict[str, Any], index: int = 0
    ) -> Iterator[None]:
        gen = generators[index]
        source = self.eval(gen.iter, local)
        self.reach(source, "iterating")
        for item in source:
            self.tick()
            self.bind(gen.target, item, local)
            if all(self.truth(self.eval(cond, local)) for cond in gen.ifs):
                if index + 1 == len(generators):
                    yield None
                else:
                    yield from self.loops(generators, local, index + 1)

    def bind(self, target: ast.AST, value: Any, local: dict[str, Any]) -> None:
        if isinstance(target, ast.Name):
            local[target.id] = value
            return
        elts = target.elts  # type: ignore[attr-defined]
        self.reach(value, "unpacking")
        values = tuple(itertools.islice(iter(value), len(elts) + 1))
        if len(values) != len(elts):
            raise ExpressionError(f"cannot unpack {len(values)} values into {len(elts)} names")
        for element, item in zip(elts, values, strict=True):
            self.bind(element, item, local)

    def produce(self, node: ast.AST, elts: list[ast.AST], scope: dict[str, Any]) -> Iterator[Any]:
        local = dict(scope)
        count = 0
        for _ in self.loops(node.generators, local):  # type: ignore[attr-defined]
            items = [self.eval(elt, local) for elt in elts]
            count += 1
            self.ensure_length(count, "comprehension")
            for item in items:
                self.charge(*self.measure(item))
            self.charge(0, POINTER_BYTES)
            yield items[0] if len(items) == 1 else items

    def e_listcomp(self, node: ast.ListComp, scope: dict[str, Any]) -> Any:
        return list(self.produce(node, [node.elt], scope))

    def e_setcomp(self, node: ast.SetComp, scope: dict[str, Any]) -> Any:
        return set(self.hashed(list(self.produce(node, [node.elt], scope)), "set comprehension"))

    def e_dictcomp(self, node: ast.DictComp, scope: dict[str, Any]) -> Any:
        pairs = list(self.produce(node, [node.key, node.value], scope))
        self.hashed([pair[0] for pair in pairs], "dict comprehension")
        return dict(pairs)

    def e_generatorexp(self, node: ast.GeneratorExp, scope: dict[str, Any]) -> Any:
        return self.produce(node, [node.elt], scope)

    # -- operators

    def binop(self, op: ast.operator, left: Any, right: Any) -> Any:
        kind = type(op)
        self.check_clock()
        self.operand(left, _BINOP_DUNDERS[kind])
        self.operand(right, _BINOP_DUNDERS[kind])
        if kind in _VIEW_OPERATORS and issubclass(type(left), _KEYED_HOLDERS) and issubclass(type(right), _KEYED_HOLDERS):
            # merging, intersecting or subtracting sets or dicts hashes and compares their keys
            self.plain_members(left)
            self.plain_members(right)
        if kind is ast.Add:
            self.check_add(left, right)
        elif kind in _INT_QUADRATIC and issubclass(type(left), int) and issubclass(type(right), int):
            # ints are capped where they are built; these come from the caller's names
            self.ensure_int(left, "left operand")
            self.ensure_int(right, "right operand")
        elif kind in _VIEW_OPERATORS and issubclass(type(left), _KEYED_HOLDERS) and issubclass(type(right), _KEYED_HOLDERS):
            # a | b, a & b, a - b, a ^ b of sets or dicts look each key of one up among the other's:
            # keys that share a hash (a context's set of multiples of 2**61-1) make that quadratic
            self.keyed(left, "left operand")
            self.keyed(right, "right operand")
            if kind in _MERGES:  # the result holds the keys of both
                self.spread([left, right], f"{type(left).__name__} result")
        elif kind in _VIEW_OPERATORS and (issubclass(type(left), _SET_VIEWS) or issubclass(type(right), _SET_VIEWS)):
            # A keys or items view takes any iterable as the other operand and builds a set of it
            # in C (d.keys() ^ range(0, 20000*(2**61-1), 2**61-1) ran for 15 s): both operands
            # become sets here, item by item under every limit; the result is the same set.
            left, right = self.as_set(left, "left operand"), self.as_set(right, "right operand")
        if kind is ast.Pow:
            self.check_pow(left, right)
        elif kind is ast.Mult:
            self.check_mult(left, right)
        elif kind is ast.LShift and issubclass(type(left), int) and issubclass(type(right), int) and left:
            if left.bit_length() + right > self.lim.max_int_bits:
                raise ExpressionLimitError(
                    f"integer result of << would exceed {self.lim.max_int_digits} digits"
                )
        elif kind is ast.Mod and (issubclass(type(left), _FORMATTED) or type(left) is UserString):
            return self.built(_no_address(percent_format(self, left, right)))
        return self.built(_BINOPS[kind](left, right))

    def as_set(self, operand: Any, what: str) -> set[Any]:
        return set(self.hashed(self.take(operand, f"{what} of a set operator"), f"{what} of a set operator"))

    def check_pow(self, base: Any, exp: Any, mod: Any = None) -> None:
        if mod is not None:
            # any sign: pow(a, -e, m) inverts a modulo m, then raises the inverse to e
            if any(issubclass(type(v), int) and v.bit_length() > 4096 for v in (base, exp, mod)):
                raise ExpressionLimitError("pow() with a modulus takes operands of at most 4096 bits")
            return
        if issubclass(type(exp), Fraction) and exp.denominator == 1 and issubclass(type(base), int | Fraction):
            # an exact power, whatever the sign: int ** Fraction(10**8) is 10 ** 10**8 inside
            # Fraction.__rpow__, Fraction(10) ** Fraction(-10**8) is Fraction(1, 10 ** 10**8)
            exp = exp.numerator
            if issubclass(type(base), int) and abs(base) > 1:
                base = Fraction(base)
        if issubclass(type(base), Fraction) and issubclass(type(exp), int):
            bits = max(base.numerator.bit_length(), base.denominator.bit_length())
            if bits * abs(exp) > self.lim.max_int_bits:
                raise ExpressionLimitError(f"Fraction result of ** would exceed {self.lim.max_int_digits} digits")
            return
        if not (issubclass(type(base), int) and issubclass(type(exp), int)) or exp < 0 or abs(base) <= 1:
            return
        if math.log2(abs(base)) * exp > self.lim.max_int_bits:
            raise ExpressionLimitError(f"integer result of ** would exceed {self.lim.max_int_digits} digits")

    def check_add(self, left: Any, right: Any) -> None:
        if issubclass(type(left), str | list | tuple) and type(left) is type(right):
            self.ensure_length(len(left) + len(right), f"{type(left).__name__} sum")
            if not issubclass(type(left), str):
                self.ensure_size(self.size(left) + self.size(right), f"{type(left).__name__} sum")

    def check_mult(self, left: Any, right: Any) -> None:
        if issubclass(type(left), int) and issubclass(type(right), int):
            if left.bit_length() + right.bit_length() > self.lim.max_int_bits + 1:
                raise ExpressionLimitError(
                    f"integer result of * would exceed {self.lim.max_int_digits} digits"
                )
            return
        seq, times = (left, right) if issubclass(type(right), int) else (right, left)
        if issubclass(type(seq), str | bytes | list | tuple) and issubclass(type(times), int) and times > 1:
            self.ensure_length(len(seq) * times, f"repeated {type(seq).__name__}")
            self.ensure_size(self.size(seq) * times, f"repeated {type(seq).__name__}")
        elif issubclass(type(seq), OTHER_SEQUENCES) and issubclass(type(times), int) and times > 1:
            self.ensure_length(len(seq) * times, f"repeated {type(seq).__name__}")

    # -- attributes and methods

    def attribute(self, obj: Any, attr: str) -> Any:
        check_attribute_name(attr)
        if issubclass(type(obj), enum.Enum) and attr in ("name", "value"):
            return object.__getattribute__(obj, attr)  # an IntEnum member is an int too
        kind = method_kind(obj)
        if kind is not None:
            if attr in SAFE_METHODS[kind]:
                return BoundMethod(self, obj, attr)
            if kind == "tuple" and self.namedtuple_field(obj, attr):
                return object.__getattribute__(obj, attr)
            raise ExpressionError(f"{type(obj).__name__}.{attr} is not an allowed method")
        if opaque(obj):
            raise ExpressionError(f"attribute access on {type(obj).__name__} objects is not allowed")
        if value_object(obj):
            if value_method(obj, attr):
                return BoundMethod(self, obj, attr)
            value = getattr(obj, attr)
        elif self.lim.trust_objects:
            value = getattr(obj, attr)
        else:
            value = read_attribute(obj, attr)
        if issubclass(type(value), type | types.ModuleType):
            raise ExpressionError(
                f"attribute {attr!r} refers to a {type(value).__name__}, which is not allowed"
            )
        return value

    def namedtuple_field(self, obj: tuple[Any, ...], attr: str) -> bool:
        fields = getattr(type(obj), "_fields", ())
        if not (issubclass(type(fields), tuple) and attr in fields):
            return False
        return self.lim.trust_objects or type(inspect.getattr_static(type(obj), attr, None)) is _TUPLE_FIELD

    def call_method(self, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.tick()
        self.check_clock()
        if name in ("format", "format_map") and issubclass(type(obj), str):
            mapping = args[0] if name == "format_map" and len(args) == 1 and not kwargs else None
            if name == "format_map" and mapping is None:
                raise ExpressionError("format_map() takes exactly one mapping")
            if mapping is not None:
                self.reach(mapping, "formatting from")
            for arg in (*args, *kwargs.values()):
                self.plain(arg, TEXT_DUNDERS, "formatting")
            return self.built(_no_address(safe_format(self, obj, args, kwargs, mapping)))
        for arg in (*args, *kwargs.values()):  # list.index's ValueError is the argument's repr
            self.plain(arg, _COMPARED_SHOWN if name == "index" else _METHOD_ARGS, f"{name}() of")
        if args and issubclass(type(obj), dict) and name in _KEY_METHODS:
            self.plain_members(obj)  # the key is looked up: the values are never compared
        elif args and not issubclass(type(obj), str):
            self.plain(obj, _COMPARED, f"{name}() of")
        if issubclass(type(obj), str):
            args = precheck_str_method(self, obj, name, args, kwargs)
        elif issubclass(type(obj), set | frozenset) and args:
            args = precheck_set_method(self, obj, name, args)
        elif name == "strftime" or issubclass(type(obj), Decimal):
            precheck_value_method(self, obj, name, args, kwargs)
        if issubclass(type(obj), ZONED) and not self.lim.trust_objects and name not in _ZONE_FREE:
            for value in (obj, *args, *kwargs.values()):  # astimezone(tz) runs tz.fromutc
                refusal = zone_refusal(value, f"{name}() of")
                if refusal is not None:
                    raise refusal
        # a subclass of str, dict, ... calls the built-in type's own method, never an override
        # (its code is the component's, as a client's methods are)
        if type(obj) not in _METHOD_TYPES:
            base = next((kind for kind in _METHOD_BASES if issubclass(type(obj), kind)), None)
            if base is not None:
                return self.built(getattr(base, name)(obj, *args, **kwargs))
        return self.built(getattr(obj, name)(*args, **kwargs))

    # -- builtins

    def builtin(self, name: str) -> Any:
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        found = self.builtins.get(name)
        if found is None:
            found = self.builtins[name] = Builtin(self, name, BUILTINS[name])
        return found


def _viewed(holder: Any) -> Any:
    """The dict a keys or items view shows (read without calling the dict), or ``holder``."""
    return proxied(holder.mapping) if type(holder) in _SET_VIEWS else holder


def _keys(holder: Any) -> Iterator[Any]:
    """The keys of a set or dict, by the built-in type's own iteration."""
    base: Any = dict if issubclass(type(holder), dict) else set if issubclass(type(holder), set) else frozenset
    return base.__iter__(holder)  # type: ignore[no-any-return]


def _no_address(text: Any) -> Any:
    """Formatted text without the memory addresses CPython writes for a lazy iterator or a function
    (``'%s' % (gen,)``, ``'{}'.format(zip())``, ``f'{gen!r}'``): as ``str()`` does, so a rendered
    value, an output or a gateway's comparison never tells the worker's memory layout."""
    return without_addresses(text) if type(text) is str else text


def precheck_value_method(ev: Evaluator, obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Size a date's strftime from its pattern (``d.strftime('%c' * 5000)``), and refuse a Decimal
    method on an operand whose exponent is over ``max_int_digits`` digits."""
    if name == "strftime":
        pattern: Any = args[0] if args else kwargs.get("format")
        if issubclass(type(pattern), str):
            ev.ensure_length(strftime_width(ev.lim, obj, pattern), "strftime() result")
        return
    for value in (obj, *args, *kwargs.values()):
        ev.ensure_number(value, f"Decimal.{name}()")


# Values "%" formats: str, and those a context may hold (a component's bytes; a bytearray or a
# UserString formatted b'%999999999d' % 1 into gigabytes unchecked).
_FORMATTED = (str, bytes, bytearray)
_RARE_RESULTS = frozenset({Fraction, *OTHER_SEQUENCES})
_MEMBERSHIP = frozenset({ast.In, ast.NotIn})
_IDENTITY = frozenset({ast.Is, ast.IsNot})
_BINOP_DUNDERS: dict[type, tuple[str, ...]] = {
    kind: (f"__{name}__", f"__r{name}__", "__index__")  # 'a' * x takes x's __index__
    for kind, name in zip(_BINOPS, "add sub mul truediv floordiv mod pow lshift rshift or xor and".split(), strict=True)
}
_UNARY_DUNDERS = {ast.UAdd: ("__pos__",), ast.USub: ("__neg__",), ast.Invert: ("__invert__",)}
# Values whose operators are the interpreter's: no object's code runs on them.
_PLAIN_VALUES = frozenset({str, int, float, bool, type(None), bytes, complex, range})  # a slice shows and compares what it holds
_COMPARED = (*COMPARE_DUNDERS, "__hash__")
_EXACT_HOLDERS = frozenset({list, tuple, dict, set, frozenset})
_METHOD_ARGS = (*_COMPARED, "__index__")  # a count or a width ('a'.center(x)) takes x's __index__
_COMPARED_SHOWN = (*_METHOD_ARGS, "__repr__")
_KEYED = ("__hash__", "__eq__", "__index__")
# Operators of a datetime that never ask its time zone anything (adding a timedelta keeps it).
_ZONE_SILENT = frozenset({"__add__", "__radd__", "__index__", "__bool__", "__len__"})
# Methods of a datetime or a time that never ask its time zone anything.
_ZONE_FREE = frozenset({"date", "time", "timetz", "replace", "weekday", "isoweekday", "isocalendar", "toordinal",
                        "ctime"})
# A dict's methods that look up their first argument among its keys, and builtins that go through
# a dict's keys only: the dict's values are neither compared nor hashed.
_KEY_METHODS = frozenset({"get", "pop", "setdefault", "__contains__", "__getitem__"})
_KEYS_ONLY = frozenset({"sorted", "min", "max", "set", "dict"})
# How many times on average a walk of a value sharing its parts may meet each item it holds (past
# max_value_size // 2 items): a big list under two keys of a dict is compared in two walks of it.
SHARED_ALLOWANCE = 4
# The operators each builtin runs on its arguments (and on what they hold).
_BUILTIN_OPERATORS: dict[str, tuple[str, ...]] = {
    "str": TEXT_DUNDERS, "sorted": COMPARE_DUNDERS, "min": COMPARE_DUNDERS, "max": COMPARE_DUNDERS,
    "set": HASH_DUNDERS, "dict": HASH_DUNDERS, "sum": ("__add__", "__radd__"),
    "int": ("__int__", "__index__", "__trunc__"), "float": ("__float__", "__index__"), "abs": ("__abs__",),
    "round": ("__round__", "__index__"), "enumerate": ("__index__",), "pow": ("__pow__", "__rpow__", "__index__"), "range": ("__index__",),
    "slice": ("__index__",),
}  # fmt: skip
# Built-in types whose protocols (iteration, indexing, len, in) an expression always uses directly.
_PROTOCOL_TYPES = frozenset({
    str, bytes, list, tuple, dict, set, frozenset, range, *DICT_VIEWS, enumerate, zip, reversed,
    types.GeneratorType, collections.deque,
})  # fmt: skip
_METHOD_BASES = (str, bool, int, float, list, tuple, dict, frozenset, set)
_METHOD_TYPES = frozenset(_METHOD_BASES)
_TUPLE_FIELD = type(getattr(collections.namedtuple("_T", "f"), "f"))  # noqa: B009 - a namedtuple's field getter
_SMALL_HOLDERS = frozenset({list, tuple, dict})
_SIZED_TYPES = frozenset({str, bytes, list, tuple, dict, set, frozenset, range, *DICT_VIEWS})
_INT_QUADRATIC = frozenset({ast.FloorDiv, ast.Mod, ast.Div, ast.Pow})
_KEYED_HOLDERS = (set, frozenset, dict)
_MERGES = frozenset({ast.BitOr, ast.BitXor})
_VIEW_OPERATORS = frozenset({ast.BitOr, ast.BitXor, ast.BitAnd, ast.Sub})
_SET_VIEWS = DICT_VIEWS[0::2]  # keys and items views are set-like, values views are not
_KEYED_OR_VIEWS: tuple[type, ...] = (*_KEYED_HOLDERS, *_SET_VIEWS)

_DISPATCH: dict[type, Callable[[Evaluator, Any, dict[str, Any]], Any]] = {
    node_type: getattr(Evaluator, f"e_{node_type.__name__.lower()}")
    for node_type in (
        ast.Constant, ast.Name, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
        ast.Subscript, ast.Slice, ast.Attribute, ast.Call, ast.List, ast.Tuple, ast.Set, ast.Dict,
        ast.JoinedStr, ast.FormattedValue, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
    )
}  # fmt: skip

