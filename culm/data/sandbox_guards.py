"""Parsing and static guards of the expression sandbox, and the size measures its checks use.

Everything here looks at an expression or a value without evaluating anything: which syntax
nodes, names and attributes are allowed, which names an expression loads, and how large a value
would be once rendered.
"""

from __future__ import annotations

import array
import ast
import collections
import enum
import gc
import itertools
import operator
import re
import sys
import types
from collections.abc import Callable, Collection, Iterator, Mapping, Sized
from typing import Any

from culm.data.memo import WeightedMemo
from culm.errors import ExpressionError, ExpressionLimitError, ExpressionRefusedError

PARSE_CACHE_SIZE = 1_024
# Syntax nodes the parsed expressions kept may hold in all (a node takes 180 to 280 bytes): 1,024
# expressions of 2,000 nodes each held 550 MB.
PARSE_CACHE_NODES = 50_000

SAFE_BUILTINS: frozenset[str] = frozenset(
    "True False None bool int float str list tuple dict set abs round pow sum min max len range "
    "slice enumerate zip sorted reversed all any".split()
)

# Never resolvable (only the caller's names and SAFE_BUILTINS are); listed so the error says
# "forbidden" instead of "unknown". A caller's own variable may still use one of these names.
FORBIDDEN_NAMES: frozenset[str] = frozenset(
    "getattr setattr delattr hasattr eval exec compile open globals locals vars type dir help input "
    "breakpoint memoryview object super classmethod staticmethod property print exit quit id hash "
    "iter next callable isinstance issubclass bytearray bytes chr ascii repr format frozenset map "
    "filter divmod".split()
)

# Attribute names that reach interpreter internals or the operating system on some object.
FORBIDDEN_ATTRIBUTES: frozenset[str] = frozenset(
    "mro gi_frame gi_code gi_yieldfrom cr_frame cr_code cr_await ag_frame ag_code f_globals f_locals "
    "f_builtins f_back f_code tb_frame tb_next func_globals func_code func_closure im_func im_self "
    "os sys subprocess shutil ctypes socket builtins modules environ popen popen2 popen3 system fork "
    "forkpty kill spawn spawnl spawnv execv execve execl execvp".split()
)

SAFE_METHODS: dict[str, frozenset[str]] = {
    "str": frozenset(
        "capitalize casefold center count endswith expandtabs find format format_map index isalnum "
        "isalpha isascii isdecimal isdigit isidentifier islower isnumeric isprintable isspace istitle "
        "isupper join ljust lower lstrip partition removeprefix removesuffix replace rfind rindex rjust "
        "rpartition rsplit rstrip split splitlines startswith strip swapcase title upper zfill".split()
    ),
    "int": frozenset({"bit_length", "bit_count", "as_integer_ratio"}),
    "float": frozenset({"is_integer", "as_integer_ratio"}),
    "list": frozenset({"count", "index", "copy"}),
    "tuple": frozenset({"count", "index"}),
    "dict": frozenset({"get", "keys", "values", "items", "copy"}),
    "set": frozenset(
        "union intersection difference symmetric_difference issubset issuperset isdisjoint copy".split()
    ),
}

_ALLOWED_NODES = frozenset(
    {ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.BoolOp}
    | {ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Attribute, ast.Call, ast.keyword}
    | {ast.List, ast.Tuple, ast.Set, ast.Dict, ast.ListComp, ast.SetComp, ast.DictComp}
    | {ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue}
    | {ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift}
    | {ast.BitOr, ast.BitXor, ast.BitAnd, ast.UAdd, ast.USub, ast.Not, ast.Invert, ast.And, ast.Or}
    | {ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn}
)
_NODE_LABELS = {
    ast.Lambda: "lambda",
    ast.NamedExpr: "assignment expression (:=)",
    ast.Starred: "starred expression (*x)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
    ast.MatMult: "the @ operator",
}
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# Dict views are measured like the containers they show: str() of one is as long as its dict's.
DICT_VIEWS: tuple[type[Collection[Any]], ...] = (type({}.keys()), type({}.values()), type({}.items()))
CONTAINERS: tuple[type[Collection[Any]], ...] = (list, tuple, set, frozenset, dict, *DICT_VIEWS)
_CONTAINER_TYPES = frozenset(CONTAINERS)
SIZED = (str, bytes, list, tuple, set, frozenset, dict)
# Other sequences a context may hold (a component's output), which * and + repeat and "%" formats:
# checked by their length only (deque([1]) * 10**9 held 8 GB).
OTHER_SEQUENCES: tuple[type[Sized], ...] = (bytearray, collections.deque, array.array, collections.UserList,
                                     collections.UserString)
_SCALAR_SIZE = 24


PARSED: WeightedMemo[tuple[str, int, int, int], ast.Expression] = WeightedMemo(PARSE_CACHE_SIZE, PARSE_CACHE_NODES)


def parse_cached(expr: str, max_nodes: int, max_depth: int, max_int_digits: int) -> ast.Expression:
    """``expr`` parsed and checked; kept in :data:`PARSED` (bounded by its syntax nodes in all)."""
    key = (expr, max_nodes, max_depth, max_int_digits)
    tree = PARSED.data.get(key)
    if tree is not None:
        return tree
    try:
        tree = ast.parse(expr, mode="eval")
    except (RecursionError, MemoryError):
        raise ExpressionLimitError(f"expression {clip(expr)!r} is nested too deeply") from None
    except (SyntaxError, ValueError) as exc:
        raise ExpressionError(f"invalid expression {clip(expr)!r}: {getattr(exc, 'msg', exc)}") from None
    return PARSED.keep(key, tree, _check_tree(tree, max_nodes, max_depth, max_int_digits))


def _check_tree(tree: ast.Expression, max_nodes: int, max_depth: int, max_int_digits: int) -> int:
    """Refuse a tree too large, too deep or holding a forbidden construct; returns its node count."""
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise ExpressionLimitError(f"expression has more than {max_nodes} syntax nodes")
        if depth > max_depth:
            raise ExpressionLimitError(f"expression is nested more than {max_depth} levels deep")
        _check_node(node, max_int_digits)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return count


def _check_node(node: ast.AST, max_int_digits: int) -> None:
    kind = type(node)
    if kind not in _ALLOWED_NODES:
        raise ExpressionError(f"{_NODE_LABELS.get(kind, kind.__name__)} is not allowed in expressions")
    if kind is ast.Name:
        _check_name(node.id)  # type: ignore[attr-defined]
    elif kind is ast.Attribute:
        check_attribute_name(node.attr)  # type: ignore[attr-defined]
    elif kind is ast.Constant:
        _check_constant(node.value, max_int_digits)  # type: ignore[attr-defined]
    elif kind is ast.keyword and node.arg is None:  # type: ignore[attr-defined]
        raise ExpressionError("**keyword unpacking is not allowed in expressions")
    elif kind is ast.Dict and None in node.keys:  # type: ignore[attr-defined]
        raise ExpressionError("** unpacking is not allowed in dict displays")
    elif kind is ast.comprehension:
        if node.is_async:  # type: ignore[attr-defined]
            raise ExpressionError("async comprehensions are not allowed")
        _check_target(node.target)  # type: ignore[attr-defined]


def _check_name(name: str) -> None:
    # Single-underscore names stay usable because bamboo contexts hold keys like ``_loop``;
    # they resolve only from the caller's names, never from Python itself.
    if name.startswith("__"):
        raise ExpressionError(f"name {name!r} is forbidden (double underscore)")


def check_attribute_name(attr: str) -> None:
    if attr.startswith("_"):
        raise ExpressionError(f"attribute {attr!r} is forbidden (leading underscore)")
    if attr in FORBIDDEN_ATTRIBUTES:
        raise ExpressionError(f"attribute {attr!r} is forbidden")


def check_subscript(obj: Any, key: Any) -> None:
    """Refuse ``obj[key]`` on a callable or a module (a class's ``__class_getitem__`` runs) or with a
    double-underscore text key; the sandbox and a template's nested-object path share this rule."""
    if callable(obj) or issubclass(type(obj), types.ModuleType):
        raise ExpressionError(f"subscripting {type(obj).__name__} objects is not allowed")
    if issubclass(type(key), str) and key.startswith("__"):
        raise ExpressionError(f"subscript key {clip(key)!r} is forbidden (double underscore)")


def _check_constant(value: Any, max_int_digits: int) -> None:
    if value is None or issubclass(type(value), str | bool | float | complex):
        return
    if issubclass(type(value), int):
        if int_digits(value) > max_int_digits:
            raise ExpressionLimitError(f"integer literal longer than {max_int_digits} digits")
        return
    raise ExpressionError(f"{type(value).__name__} literals are not allowed")


def _check_target(target: ast.AST) -> None:
    if isinstance(target, ast.Name):
        return
    if isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            _check_target(element)
        return
    raise ExpressionError(f"a comprehension may only assign to plain names, not {type(target).__name__}")


def collect_free(node: ast.AST, bound: frozenset[str], found: set[str]) -> None:
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load) and node.id not in bound:
            found.add(node.id)
        return
    if not isinstance(node, _COMPREHENSIONS):
        for child in ast.iter_child_nodes(node):
            collect_free(child, bound, found)
        return
    inner = bound
    for index, gen in enumerate(node.generators):
        # The first iterable is evaluated in the enclosing scope, as in Python.
        collect_free(gen.iter, inner if index else bound, found)
        inner = inner | {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
        for cond in gen.ifs:
            collect_free(cond, inner, found)
    results = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    for result in results:
        collect_free(result, inner, found)


# ---------------------------------------------------------------- sizes


def int_digits(value: int) -> int:
    return value.bit_length() * 30103 // 100000 + 1


Measure = tuple[int, int]  # (approximate len(str(value)), approximate bytes)


def size_of(value: Any, limit: int, tick: Callable[[], None]) -> int:
    """Approximate ``len(str(value))``; see :func:`measure`."""
    return measure(value, limit, 1 << 62, tick)[0]


def measure(
    value: Any, limit: int, mem_limit: int, tick: Callable[[], None], known: Mapping[int, tuple[Any, int, int]] | None = None,
    shape: list[int] | None = None,
) -> Measure:
    """Approximate ``len(str(value))`` and the bytes ``value`` holds, counting shared nested
    containers once per occurrence.

    Stops soon after ``limit`` or ``mem_limit`` is passed, so the cost is bounded by the limits;
    ``tick`` is called every few thousand items. ``known`` maps ``id(container)`` to
    ``(container, size, bytes)`` for containers already measured. When a limit is passed, ``shape``
    (if given) is set to ``[containers counted as often as held, distinct containers]`` so far
    (and a value holding itself is not looked for: the caller walks it).

    The value is walked one depth at a time, each depth's items grouped by type and added up in C
    (a Python loop over the 100,000 fields of 50,000 rows took the whole time limit); a
    container's items are read through its built-in base type, never a subclass's own methods.
    """
    kind = type(value)
    if kind in _PLAIN_SCALARS:  # the commonest value measured: no holder to look for
        return _scalar_size(value), scalar_bytes(value)
    if not issubclass(kind, CONTAINERS):  # by the real type: isinstance() runs a __class__ property
        if not is_holder(kind):
            return _scalar_size(value), scalar_bytes(value)
        top, value = value, [value]  # a holder is measured as the one-item list holding it (a little over)
    else:
        top = value
    walk = _Walk(limit, mem_limit)
    alias = walk.alias
    total = mem = 0
    level: list[Any] = [value]
    opened: set[int] = set()  # ids of the containers opened: fewer than opened means some shared
    held: list[list[Any]] = []  # keeps a dict view's (key, value) tuples alive: their ids stay theirs
    count = depth = 0
    while level:
        depth += 1
        count += len(level)
        opened.update([alias.get(key, key) for key in map(id, level)] if alias else map(id, level))
        held.append(level)
        if depth > len(opened):
            # a path deeper than the distinct containers passes one twice: a value holding itself
            _cycle(top, level)
        total += 2 * len(level)
        mem += 64 * len(level)
        below: list[Any] = []
        for kind, group in _by_type(level):
            lengths = sum(map(base_length(kind), group))
            total += 2 * lengths
            mem += (TABLE_BYTES if issubclass(kind, dict | set | frozenset) else POINTER_BYTES) * lengths
            # one list or tuple (a flat result, the commonest value measured) is taken whole, in C
            if len(group) == 1 and (kind is list or kind is tuple):
                chunks: Iterator[Any] = iter(group)
            else:
                children = children_of(kind, group)
                chunks = iter(lambda: list(itertools.islice(children, _CHUNK)), [])  # noqa: B023 - used at once
            for chunk in chunks:
                size, nbytes = _scalars(chunk, below, known, walk, total, mem)
                total += size
                mem += nbytes
                if total > limit or mem > mem_limit:
                    if len(opened) < count and shape is None:  # who asks the shape counts the walk itself
                        _cycle(top, None)
                    if shape is not None:
                        shape[:] = [count, len(opened)]
                    return total, mem
                tick()
        if total > limit or mem > mem_limit:
            if shape is not None:
                shape[:] = [count, len(opened)]
            return total, mem
        level = below
    return total, mem


_CHUNK = 4_096
_BASES: tuple[type, ...] = (dict, list, tuple, set, frozenset)


def _by_type(items: list[Any]) -> list[tuple[type, list[Any]]]:
    """``items`` grouped by exact type, each group gathered in C."""
    distinct = set(map(type, items))
    if len(distinct) == 1:
        return [(distinct.pop(), items)]
    kinds = list(map(type, items))
    if len(distinct) > 16:  # one pass in Python rather than one in C per type
        groups: dict[type, list[Any]] = {}
        for item in items:
            groups.setdefault(type(item), []).append(item)
        return list(groups.items())
    return [(kind, list(itertools.compress(items, map(operator.is_, kinds, itertools.repeat(kind)))))
            for kind in distinct]


def base_length(kind: type) -> Callable[[Any], int]:
    """``len`` of a container type, the built-in base type's (never a subclass's own ``__len__``)."""
    if kind in _CONTAINER_TYPES:
        return len
    base: Any = next(klass for klass in _BASES if issubclass(kind, klass))
    return base.__len__  # type: ignore[no-any-return]


def children_of(kind: type, group: list[Any]) -> Iterator[Any]:
    """The items (a dict's keys and values) of containers of one type, through the built-in type's
    own iteration."""
    if kind in DICT_VIEWS:
        return itertools.chain.from_iterable(group)
    base = next((klass for klass in _BASES if issubclass(kind, klass)), None)
    if base is None:  # a holder: the values it shows (a bare StopIteration here ended a whole f-string)
        return itertools.chain.from_iterable(shown_values(item) or () for item in group)
    if base is dict:
        return itertools.chain(itertools.chain.from_iterable(map(dict.keys, group)),
                               itertools.chain.from_iterable(map(dict.values, group)))
    return itertools.chain.from_iterable(map(base.__iter__, group))  # type: ignore[attr-defined]


class _Walk:
    """What one :func:`measure` keeps about the holders it met: each holder's values are copied
    (and its size counted in bytes) once, however often it is shared."""

    __slots__ = ("alias", "copies", "limit", "mem_limit", "texts")

    def __init__(self, limit: int, mem_limit: int) -> None:
        self.limit = limit
        self.mem_limit = mem_limit
        self.alias: dict[int, int] = {}  # id of the list a holder is measured as -> id of the holder
        self.copies: dict[int, list[Any]] = {}  # id of a holder -> the list of the values it shows
        self.texts: dict[int, int] = {}  # id of a holder -> the text of the holder itself


def _scalars(
    chunk: list[Any], below: list[Any], known: Mapping[int, tuple[Any, int, int]] | None, walk: _Walk,
    before: int, mem_before: int,
) -> Measure:
    """The size and bytes of the scalars of ``chunk``; its containers are added to ``below`` (or
    counted from ``known``). ``before`` and ``mem_before`` were measured already: a holder's copy
    is not made once the limits are passed."""
    total = mem = 0
    for kind, items in _by_type(chunk):
        count = len(items)
        if kind is str:
            chars = sum(map(len, items))
            total += chars + 2 * count
            mem += 49 * count + chars if all(map(str.isascii, items)) else 80 * count + 4 * chars
        elif kind is int or kind is bool:
            bits = sum(map(int.bit_length, items))
            total += bits * 30103 // 100000 + 2 * count
            mem += 28 * count + bits // 8
        elif kind is bytes:
            chars = sum(map(len, items))
            total += chars + 2 * count
            mem += 33 * count + chars
        elif kind in _CONTAINER_TYPES or issubclass(kind, CONTAINERS):
            if known:
                drop: set[int] = set()
                for item in itertools.compress(items, map((63).__lt__, map(base_length(kind), items))):
                    cached = known.get(id(item))
                    if cached is not None and cached[0] is item:
                        total += cached[1]
                        mem += cached[2]
                        drop.add(id(item))
                if drop:
                    items = [item for item in items if id(item) not in drop]
            below.extend(items)
        elif issubclass(kind, str | bytes | int):
            # a subclass (Django's SafeString) writes all its characters, as its base type does
            size = sum(map(_scalar_size, items))
            total += size
            mem += 4 * size + 80 * count
        elif kind in _SHOWN_SCALAR or not is_holder(kind):
            total += _SCALAR_SIZE * count
            mem += _SCALAR_SIZE * count
        else:
            # a holder that writes what it holds (a mappingproxy, a SimpleNamespace, a deque, a
            # dataclass, an enum member): measured as a list of those values, plus its own text;
            # each holder is copied and counted in bytes once, and only while within the limits
            for item in items:
                key = id(item)
                shown = walk.copies.get(key)
                if shown is None:
                    text, nbytes = _holder_extent(item, kind)
                    total += text
                    mem += nbytes
                    if before + total > walk.limit or mem_before + mem > walk.mem_limit:
                        return total, mem
                    shown = walk.copies[key] = shown_values(item) or []
                    walk.texts[key] = text
                    walk.alias[id(shown)] = key  # a holder inside itself is a cycle too
                else:
                    total += walk.texts[key]
                below.append(shown)
    return total, mem


def _holder_extent(item: Any, kind: type) -> Measure:
    """The text and bytes of a holder itself, from its length (read through the built-in type,
    never a subclass's own ``__len__``) before anything it holds is copied."""
    if issubclass(kind, array.array):
        length = array.array.__len__(item)
        return 3 * length + 16, _ITEMSIZE(item) * length + 64  # "array('q', [1, 2])": numbers only
    if issubclass(kind, bytearray):
        length = bytearray.__len__(item)
        return 4 * length + 16, length + 57
    if issubclass(kind, collections.deque):
        length = collections.deque.__len__(item)
        return 2 * length + 9, POINTER_BYTES * length + 64
    return len(_TYPE_NAME(kind)) + 4, _SCALAR_SIZE


_ITEMSIZE = array.array.itemsize.__get__  # type: ignore[attr-defined]
_TYPE_NAME = type.__dict__["__name__"].__get__
TYPE_MODULE = type.__dict__["__module__"].__get__
TYPE_MRO = type.__dict__["__mro__"].__get__
TYPE_DICT = type.__dict__["__dict__"].__get__
_PLAIN_SCALARS = frozenset({str, int, bool, bytes, float, type(None)})


_SHOWN_SCALAR: set[type] = {float, type(None), complex, range}


def shown_values(item: Any) -> list[Any] | None:
    """The values a standard-library holder, a dataclass or an enum member writes into its text
    (read without running the object's own methods or properties), as a list; None for any other
    object (its text is a scalar's: a number, or a name and an address). An array's or a
    bytearray's numbers are not listed (:func:`_holder_extent` counts them).

    ``str([proxy] * 1000)`` of a mappingproxy of a 100,000-key dict was measured as 1,000 scalars
    and took 19 s and 1.4 GB before the length of the text it made was checked.

    Raises:
        ExpressionRefusedError: A field the text shows is computed by the object's class (a
            property): reading it would run the class's own code.
    """
    kind = type(item)
    if not is_holder(kind):
        return None
    if kind is types.MappingProxyType:
        return [proxied(item)]
    if kind is slice:
        return [item.start, item.stop, item.step]
    if issubclass(kind, array.array | bytearray):
        return []
    if issubclass(kind, collections.deque):
        return list(collections.deque.__iter__(item))
    if issubclass(kind, collections.UserDict | collections.UserList | collections.UserString):
        return [value] if (value := stored_field(item, kind, "data")) is not NOTHING else []
    if issubclass(kind, collections.ChainMap):
        return [value] if (value := stored_field(item, kind, "maps")) is not NOTHING else []
    if issubclass(kind, enum.Enum):
        return [value] if (value := stored_field(item, kind, "_value_")) is not NOTHING else []
    own = _own_dict(item, kind)
    if kind is types.SimpleNamespace:
        return list(own.values()) if own is not None else []
    fields = static_attribute(kind, "__dataclass_fields__")
    held = list(own.values()) if own is not None else []
    for name in fields if type(fields) is dict else ():
        if own is None or name not in own:
            value = stored_field(item, kind, name)
            if value is not NOTHING:
                held.append(value)
    return held


_holder_kinds: dict[type, bool] = {}


def is_holder(kind: type) -> bool:
    """Whether objects of ``kind`` write the values they hold (:func:`shown_values`), told from the
    type alone without running any of its code (nor its metaclass's)."""
    known = _holder_kinds.get(kind)
    if known is None:
        known = (kind is types.MappingProxyType or kind is types.SimpleNamespace or kind is slice
                 or issubclass(kind, _LIBRARY_HOLDERS)
                 or static_attribute(kind, "__dataclass_fields__") is not NOTHING)
        if len(_holder_kinds) > 4096:
            _holder_kinds.clear()
        _holder_kinds[kind] = known
    return known


_LIBRARY_HOLDERS = (collections.deque, array.array, collections.UserDict, collections.UserList,
                    collections.UserString, collections.ChainMap, enum.Enum, bytearray)


def static_attribute(kind: type, name: str) -> Any:
    """``name`` as ``kind`` or a base class stores it (a descriptor is returned, never run; the
    class's ``__mro__`` and ``__dict__`` are read through ``type``'s own, never a metaclass's)."""
    for klass in TYPE_MRO(kind):
        found = TYPE_DICT(klass).get(name, NOTHING)
        if found is not NOTHING:
            return found
    return NOTHING


def _own_dict(item: Any, kind: type) -> dict[str, Any] | None:
    """The instance's ``__dict__`` through the interpreter's own slot; refused when the class
    computes ``__dict__`` itself."""
    slot = static_attribute(kind, "__dict__")
    if slot is NOTHING:
        return None
    if type(slot) is not types.GetSetDescriptorType and type(slot) is not types.MemberDescriptorType:
        raise _computed(kind, "__dict__", slot)
    own = slot.__get__(item, kind)
    return own if issubclass(type(own), dict) else None


def stored_field(item: Any, kind: type, name: str) -> Any:
    """Field ``name`` of ``item`` as stored (its slot, its ``__dict__`` entry, its class's
    default), or NOTHING; refused when the class computes it (a property)."""
    found = static_attribute(kind, name)
    if found is not NOTHING and (
        static_attribute(type(found), "__set__") is not NOTHING
        or static_attribute(type(found), "__delete__") is not NOTHING
    ):
        if type(found) is not types.MemberDescriptorType:
            raise _computed(kind, name, found)
        try:
            return found.__get__(item, kind)
        except AttributeError:
            return NOTHING
    own = _own_dict(item, kind)
    if own is not None and name in own:
        return dict.__getitem__(own, name)
    return found


def _computed(kind: type, name: str, found: Any) -> ExpressionRefusedError:
    return ExpressionRefusedError(
        f"a {_TYPE_NAME(kind)} object is refused: its {name!r}, which its text shows, is computed by "
        f"its class (a {_TYPE_NAME(type(found))}), whose code a template does not run")


NOTHING = object()


def proxied(proxy: types.MappingProxyType[Any, Any]) -> Any:
    """The mapping a mappingproxy shows, reached without calling any of its methods (each of the
    proxy's operations calls the mapping's own: a user's mapping class runs its code)."""
    inner = gc.get_referents(proxy)
    return inner[0] if len(inner) == 1 else {}


def _cycle(value: Any, level: list[Any] | None) -> None:
    """Raise for a value that holds itself (``level`` already proves it), or return."""
    if level is None:
        _refuse_cycle(value, lambda: None)
        return
    raise ExpressionLimitError(
        f"a {type(value).__name__} value holds itself: it has no end to measure or write out")


_CYCLE_CHECK_MAX = 100_000  # items looked at: a cycle past them is measured to the limits, as before


def _refuse_cycle(value: Any, tick: Callable[[], None]) -> None:
    """Raise when ``value`` holds itself: a depth-first walk of its distinct containers (each once,
    however often it is shared), until it has looked at ``_CYCLE_CHECK_MAX`` items."""
    done: set[int] = set()
    path: set[int] = set()
    looked = 0
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, leaving = stack.pop()
        key = id(item)
        if leaving:
            path.discard(key)
            done.add(key)
            continue
        if key in path:
            raise ExpressionLimitError(
                f"a {type(value).__name__} value holds itself (a {type(item).__name__} inside itself): it has "
                "no end to measure or write out")
        if key in done:
            continue
        path.add(key)
        stack.append((item, True))
        kind = type(item)  # read through the built-in base type, never a subclass's own methods
        children: Any
        if not issubclass(kind, CONTAINERS):  # a holder (a SimpleNamespace, a dataclass): what it shows
            children = shown_values(item) or []
            looked += len(children)
        else:
            children = children_of(kind, [item])
            if (kind is list or kind is tuple) and not any(map(_CONTAINER_TYPES.__contains__, map(type, item))):
                children = ()  # no container in it, seen in C
            looked += base_length(kind)(item)
        stack.extend((child, False) for child in children if issubclass(type(child), CONTAINERS))
        if looked > _CYCLE_CHECK_MAX:
            return  # measured to the limits as before
        if not len(done) & 1023:
            tick()


POINTER_BYTES = 8
# A set or dict slot costs more than a list slot (hash, key, value, and a table kept sparse).
TABLE_BYTES = 64


def _scalar_size(value: Any) -> int:
    kind = type(value)
    if kind is str or kind is bytes:
        return len(value) + 2
    if kind is int or kind is bool:
        return int_digits(value) + 1
    # a subclass writes all its characters or digits too, read through the built-in type
    if issubclass(kind, str):
        return str.__len__(value) + 2
    if issubclass(kind, bytes):
        return bytes.__len__(value) + 2
    if issubclass(kind, int):
        return int.bit_length(value) * 30103 // 100000 + 2
    return _SCALAR_SIZE


def scalar_bytes(value: Any) -> int:
    """Bytes a scalar object takes (an upper estimate of ``sys.getsizeof``)."""
    kind = type(value)
    if kind is str:
        return 49 + len(value) if value.isascii() else 80 + 4 * len(value)
    if kind is int:
        return 28 + value.bit_length() // 8
    if kind is bytes:
        return 33 + len(value)
    if issubclass(kind, str | bytes | int):  # a subclass, read through the built-in type
        return 80 + 4 * _scalar_size(value)
    return _SCALAR_SIZE


def describe(exc: BaseException) -> str:
    # str(exc) can repr an arbitrarily large argument, so each argument is clipped first.
    parts = [clip(arg if issubclass(type(arg), str) else _short_repr(arg), 160) for arg in exc.args[:3]]
    return f"{type(exc).__name__}: {', '.join(parts)}" if parts else type(exc).__name__


def _short_repr(value: Any) -> str:
    if not _reprable(value):
        return f"<{type(value).__name__}>"
    try:
        too_long = size_of(value, 400, lambda: None) > 400
    except ExpressionLimitError:
        too_long = True  # a list holding itself
    if too_long:
        return f"<{type(value).__name__}>"
    return repr(value)


_REPRABLE = frozenset({str, int, float, bool, type(None), bytes, complex, range})
_REPR_HOLDERS = frozenset({list, tuple, set, frozenset, dict})


def _reprable(value: Any) -> bool:
    """Whether ``repr(value)`` runs only the interpreter's and the value types' code: an error
    message (``KeyError(key)``) must not run an object's own ``__repr__`` (nor write the text it
    makes, or a memory address, into a node's ``ex_data``)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is slice or kind is types.SimpleNamespace or kind is types.MappingProxyType:
            # they write the values they hold, whatever those run (a proxy's mapping is walked
            # as itself: a user's mapping class is not reprable)
            stack.extend(shown_values(item) or ())
            continue
        if kind in _REPRABLE or kind.__module__.partition(".")[0] in VALUE_MODULES:
            continue
        if kind not in _REPR_HOLDERS:
            return False
        seen += len(item)
        if seen > 1_000:
            return False  # clipped to 160 characters anyway
        stack.extend(itertools.chain.from_iterable(item.items()) if kind is dict else item)
    return True


def clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def opaque(obj: Any) -> bool:
    """True for objects whose attributes must stay out of reach (modules, types, callables, objects
    of the standard library but its value types, ...)."""
    # the real type's module, read through type's own __module__ (never a __class__ property or a
    # metaclass's __module__ property)
    module = TYPE_MODULE(type(obj))
    return (callable(obj) or issubclass(type(obj), types.ModuleType) or module == "builtins"
            or _system_module(module))


# Standard-library modules whose objects are plain values (a date, a decimal, a UUID, a
# SimpleNamespace): their attributes and methods only compute. Other standard-library objects
# reach the system: a pathlib.Path in a context (a component's output, pickled) offered
# read_text(), write_text() and unlink() on any path to every template; a logging.Logger its
# manager and every handler.
VALUE_MODULES = frozenset({"datetime", "decimal", "fractions", "uuid", "ipaddress", "zoneinfo", "types"})
_system_modules: dict[str, bool] = {}


def _system_module(module: str | None) -> bool:
    known = _system_modules.get(module or "")
    if known is None:
        top = (module or "").partition(".")[0]
        known = _system_modules[module or ""] = top in sys.stdlib_module_names and top not in VALUE_MODULES
    return known


def method_kind(obj: Any) -> str | None:
    # by the object's real type: isinstance() believes a __class__ an object claims (a Mock(spec=str)
    # would have its own count() run for a str method's size check)
    kind = type(obj)
    for kinds, name in ((str, "str"), (int, "int"), (float, "float"), (list, "list"), (tuple, "tuple")):
        if issubclass(kind, kinds):
            return name
    if issubclass(kind, dict):
        return "dict"
    if issubclass(kind, set | frozenset):
        return "set"
    return None


def user_method(func: Any) -> bool:
    """A method, written in Python, of a plain object; not one a standard-library class gives a
    subclass (a user's subclass of pathlib.Path still has no read_text() here)."""
    return (
        issubclass(type(func), types.MethodType)
        and issubclass(type(func.__func__), types.FunctionType)
        and not issubclass(type(func.__self__), type | types.ModuleType)
        and not _system_module(func.__func__.__module__)
    )



# render_limited's short cut: the exact types whose text is at most _SHORT_TEXT characters (an int
# under _SHORT_INT in size: 31 with its sign; a float's repr: 24 at most), as is size_of's measure
# of them (int_digits + 1 is 32 at most for such an int, a float counts as _SCALAR_SIZE).
_SHORT_SCALARS = frozenset({int, float, bool, type(None)})
_SHORT_TEXT = 32
_SHORT_INT = 10**30


def render_limited(value: Any, limit: int, check: Callable[[Any], None] | None = None) -> str:
    """``str(value)``, refused when the text would be longer than ``limit`` characters.

    Raises:
        ExpressionLimitError: The value is too big to turn into text.
        ExpressionError: Turning it into text raised.
    """
    kind = type(value)
    if issubclass(kind, str):  # not isinstance(): that runs a __class__ property
        return value
    if kind in _SHORT_SCALARS and limit >= _SHORT_TEXT and (kind is not int or -_SHORT_INT < value < _SHORT_INT):
        # A number, a bool or None of a few characters: nothing to walk (its measured size is
        # under the limit), no text of its class's own (nothing to refuse) and no address.
        return str(value)
    if size_of(value, limit, lambda: None) > limit:
        raise ExpressionLimitError(f"{type(value).__name__} value too large to render (over {limit} characters)")
    if check is not None:
        check(value)  # after the size: a walk of a value too large to render would be wasted
    try:
        text = str(value)
    except Exception as exc:  # noqa: BLE001 - an object's own __str__ (a lazy variable's value), an int
        # of more than 4,300 digits: a value that cannot become text fails like an expression does
        raise ExpressionError(f"{type(value).__name__} value cannot be turned into text "
                              f"({type(exc).__name__}: {exc})") from None
    return without_addresses(text)


# CPython writes a memory address into the text of an object that has no text of its own: a lazy
# iterator (generator, zip, enumerate, reversed, map, filter), a function, a plain object
# ("<generator object <genexpr> at 0x7f3a...>"), alone or inside a list or dict. The address
# changes from run to run and tells the layout of the worker's memory: rendered text keeps the kind
# of object ("<generator object>", "<function f>") and never the address. A range, a slice or a
# dict view has a text of its own ("range(0, 3)") and keeps it.
_OBJECT_AT = re.compile(r"<(\w+) object(?: \S+?)? at 0x[0-9a-fA-F]+>")
_AT = re.compile(r" at 0x[0-9a-fA-F]+>")


def without_addresses(text: str) -> str:
    """``text`` (an object's ``str()``) with CPython's memory addresses taken out."""
    if " at 0x" not in text:
        return text
    return _AT.sub(">", _OBJECT_AT.sub(r"<\1 object>", text))
