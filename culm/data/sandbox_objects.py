"""What an expression may do with an object a component or a lazy variable put in the context.

A context may hold any object a component returned (pickled in the store and read back) or a lazy
variable's ``get_value`` built (never stored): a ``requests.Session``, a client holding a
connection, a file. Their methods and properties are code that reaches the network, the disk or a
database, and the template that calls them is untrusted: ``${sess.get("http://169.254.169.254/")}``
is a request from the worker. So, unless a deployment trusts its templates
(``culm.data.sandbox.TRUST_CONTEXT_OBJECTS``, ``$CULM_TRUST_CONTEXT_OBJECTS``), an expression:

* calls methods of ``str``, ``int``, ``float``, ``list``, ``tuple``, ``dict`` and ``set`` (those in
  ``SAFE_METHODS``; on a subclass, the built-in type's own method, never an override), of the
  standard library's value types (the methods of :data:`VALUE_METHODS` and those ``fractions``,
  ``ipaddress`` and ``uuid`` write in Python), and nothing else;
* reads attributes of other objects only where they hold data: an instance's own attribute (a
  dataclass field, ``self.x = ...``), a slot, a plain class attribute, a namedtuple's field, an
  enum member's ``name`` and ``value``; never a method, a property or what ``__getattr__`` makes;
* iterates, indexes, measures (``len``) and tests membership (``in``) only of built-in values,
  the standard library's value and container types (``collections``, ``array``) and subclasses of
  built-in containers that keep their protocol methods: a file iterated is a file read, a client's
  ``__getitem__`` a query.

A refusal raises :class:`~culm.errors.ExpressionRefusedError`: the node fails naming the
expression (a fragment the sandbox cannot evaluate otherwise stays text, as bamboo does).
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import itertools
import operator
import types
from collections.abc import Callable, Iterator
from typing import Any

from culm.data.sandbox_guards import (
    DICT_VIEWS,
    NOTHING,
    TYPE_DICT,
    TYPE_MODULE,
    TYPE_MRO,
    VALUE_MODULES,
    proxied,
    static_attribute,
    stored_field,
)
from culm.errors import ExpressionRefusedError

_DATE = frozenset("isoformat strftime weekday isoweekday isocalendar toordinal replace ctime".split())
_TIME_OF_DAY = frozenset("utcoffset tzname dst".split())
# Methods written in C of the standard library's value types that an expression may call: each
# only computes a value from the object (strftime is sized first, like a format spec).
VALUE_METHODS: dict[type, frozenset[str]] = {
    datetime.datetime: _DATE | _TIME_OF_DAY | {"date", "time", "timetz", "timestamp", "astimezone"},
    datetime.date: _DATE,
    datetime.time: frozenset({"isoformat", "strftime", "replace"}) | _TIME_OF_DAY,
    datetime.timedelta: frozenset({"total_seconds"}),
    datetime.tzinfo: _TIME_OF_DAY,
    decimal.Decimal: frozenset(
        "quantize normalize to_integral_value adjusted is_finite is_infinite is_nan is_zero is_signed "
        "copy_abs copy_negate".split()
    ),
}

# Modules whose types iterate, index and measure what they hold, and nothing else.
_PROTOCOL_MODULES = VALUE_MODULES | {"builtins", "collections", "array"}
# The protocol methods a subclass of a built-in container must not override to stay a value.
_PROTOCOL_METHODS = ("__iter__", "__getitem__", "__contains__", "__len__", "__missing__", "__reversed__",
                     "keys", "items", "values", "get")
_BUILTIN_CONTAINERS = (list, tuple, dict, set, frozenset, str, bytes, bytearray)
_ABSENT = object()
_HINT = ("templates may call methods of str, int, float, list, tuple, dict, set and of the standard "
         "library's value types only, and read data attributes of other objects "
         "(culm.data.sandbox.TRUST_CONTEXT_OBJECTS, $CULM_TRUST_CONTEXT_OBJECTS=1, lifts this for "
         "trusted templates)")


def _top(module: str | None) -> str:
    return (module or "").partition(".")[0]


def kind_name(obj: Any) -> str:
    kind = type(obj)
    module = TYPE_MODULE(kind)  # type's own: a metaclass's __module__ property is its code
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def value_object(obj: Any) -> bool:
    """An object of a standard-library value type (a date, a Decimal, a UUID, a SimpleNamespace)."""
    return _top(TYPE_MODULE(type(obj))) in VALUE_MODULES


def value_method(obj: Any, attr: str) -> bool:
    """Whether ``attr`` is a C method of a value type an expression may call on ``obj``."""
    for klass in type(obj).__mro__:
        allowed = VALUE_METHODS.get(klass)
        if allowed is not None:
            return attr in allowed
    return False


def python_value_method(func: Any) -> bool:
    """A method written in Python by a value module (``Fraction.limit_denominator``,
    ``IPv4Network.subnet_of``): it only computes."""
    return _top(func.__func__.__module__) in VALUE_MODULES


def read_attribute(obj: Any, attr: str) -> Any:
    """``obj.attr`` for an object outside the sandbox's values, when the attribute holds data.

    Raises:
        ExpressionRefusedError: the attribute is a method, a property, or not stored at all.
    """
    if issubclass(type(obj), enum.Enum) and attr in ("name", "value"):
        return object.__getattribute__(obj, attr)
    owner, found = _class_attribute(type(obj), attr)
    data_descriptor = found is not _ABSENT and (
        hasattr(type(found), "__set__") or hasattr(type(found), "__delete__")
    )
    if not data_descriptor:
        own = _instance_dict(obj)
        if own is not None and attr in own:
            return own[attr]
    if found is _ABSENT:
        raise ExpressionRefusedError(
            f"attribute {attr!r} of a {kind_name(obj)} object is refused: it is not stored on the "
            f"object (its class computes it); {_HINT}"
        )
    # object.__getattribute__, not getattr: a class's own __getattribute__ is its code too
    if issubclass(type(found), types.MemberDescriptorType) or not hasattr(type(found), "__get__"):
        return object.__getattribute__(obj, attr)  # a slot, or plain data kept on the class
    if owner is not None and _top(owner.__module__) in VALUE_MODULES and not callable(found):
        return object.__getattribute__(obj, attr)  # a value type's field on a subclass (a datetime's year)
    what = "method" if callable(found) or issubclass(type(found), classmethod | staticmethod) else "property"
    raise ExpressionRefusedError(
        f"{what} {attr!r} of a {kind_name(obj)} object is refused: it runs the object's code; {_HINT}"
    )


def _class_attribute(kind: type, attr: str) -> tuple[type | None, Any]:
    for klass in TYPE_MRO(kind):  # type's own __mro__ and __dict__, never a metaclass's properties
        found = TYPE_DICT(klass).get(attr, _ABSENT)
        if found is not _ABSENT:
            return klass, found
    return None, _ABSENT


def _instance_dict(obj: Any) -> dict[str, Any] | None:
    if type(_class_attribute(type(obj), "__dict__")[1]) is not types.GetSetDescriptorType:
        return None  # no instance dict, or a class that made __dict__ a property of its own
    own = object.__getattribute__(obj, "__dict__")
    return own if type(own) is dict else None


def refused_call(func: Any) -> ExpressionRefusedError:
    owner = getattr(func, "__self__", None)
    name = getattr(func, "__name__", type(func).__name__)
    where = f" of a {kind_name(owner)} object" if owner is not None else ""
    return ExpressionRefusedError(f"calling {name}{where} is refused: {_HINT}")


def _own_protocol(kind: type) -> bool:
    """Whether ``kind`` (a subclass of a built-in container) iterates, indexes or measures itself
    with its own code."""
    return any(
        _top(TYPE_MODULE(owner)) not in _PROTOCOL_MODULES
        for owner in TYPE_MRO(kind)
        for name in _PROTOCOL_METHODS
        if name in TYPE_DICT(owner)
    )


def protocol_refusal(obj: Any, what: str) -> ExpressionRefusedError | None:
    """Why ``what`` (iterating, indexing, ``len``, ``in``) of ``obj`` is refused, or None."""
    kind = type(obj)
    if kind is types.MappingProxyType:
        return protocol_refusal(proxied(obj), what)  # indexing or iterating the proxy is the mapping's
    module = _top(TYPE_MODULE(kind))
    if module in _PROTOCOL_MODULES:
        # a ChainMap, UserDict or UserList indexes, iterates and compares the mappings it wraps
        # through their own protocol: a user's mapping class inside one runs its code
        if issubclass(kind, collections.ChainMap) and any(map(_defaulting, _wrapped(obj))):
            return ExpressionRefusedError(
                f"{what} a {kind_name(obj)} object holding a defaultdict with a default_factory is refused: "
                f"a key one of its maps lacks calls the factory (code a template does not run) and adds the key; {_HINT}"
            )
        for inner in _wrapped(obj):
            refusal = protocol_refusal(inner, what)
            if refusal is not None:
                return refusal
        return None
    if issubclass(kind, _BUILTIN_CONTAINERS) and not _own_protocol(kind):
        return None  # a namedtuple, a subclass of dict that keeps dict's own protocol
    return ExpressionRefusedError(
        f"{what} a {kind_name(obj)} object is refused: it runs the object's code (a file iterated "
        f"is read, a client indexed is queried); {_HINT}"
    )


# ---------------------------------------------------------------- a defaultdict's missing keys

# Factories whose value a template may be given for a key a defaultdict does not hold: the built-in
# types, which only make an empty value.
_PLAIN_FACTORIES = (int, float, complex, str, bytes, bool, list, tuple, dict, set, frozenset)
_DEFAULT_FACTORY: Any = vars(collections.defaultdict)["default_factory"]  # the C member


def _factory(obj: Any) -> Any:
    """The ``default_factory`` of a defaultdict as stored (the C member, never a subclass's property)."""
    return _DEFAULT_FACTORY.__get__(obj, type(obj))


def _defaulting(mapping: Any) -> bool:
    """A defaultdict with a ``default_factory``: indexed by a key it lacks, it calls the factory."""
    return issubclass(type(mapping), collections.defaultdict) and _factory(mapping) is not None


def item_of(obj: Any, key: Any) -> Any:
    """``obj[key]``, except for a key a defaultdict does not hold: ``obj[key]`` calls its
    ``default_factory`` (a component's function or class, its code) and adds the key to the
    context's value. The empty value a built-in type makes is given, the key not added; another
    factory is refused; no factory is a ``KeyError``, as Python's."""
    if type(obj) is types.MappingProxyType:
        obj = proxied(obj)  # indexing the proxy indexes its mapping
    if not issubclass(type(obj), collections.defaultdict) or dict.__contains__(obj, key):
        return obj[key]
    factory = _factory(obj)
    if factory is None:
        raise KeyError(key)
    if any(factory is plain for plain in _PLAIN_FACTORIES):
        return factory()
    raise ExpressionRefusedError(
        f"indexing a {kind_name(obj)} object by a key it does not hold is refused: it calls its "
        f"default_factory, a {kind_name(factory)} object (code a template does not run), and adds the key "
        f"to the value; read it with .get(key, default); {_HINT}"
    )


def without_default(mapping: Any) -> Any:
    """``mapping``, or a plain dict of what a defaultdict with a ``default_factory`` holds:
    formatting from it (``'%(k)s' % d``, ``'{k}'.format_map(d)``) looks keys up in C, and a missing
    one would call the factory and add the key (it fails as for a dict, the fragment left as text)."""
    inner = proxied(mapping) if type(mapping) is types.MappingProxyType else mapping
    if _defaulting(inner):
        return dict(dict.items(inner))
    return mapping


# ---------------------------------------------------------------- combined members of a Flag

# Combined members (``Perm.R | 8``) an enum.Flag class keeps past its own: Python keeps each
# combination it makes in the class for good (``_value2member_map_``), so ``[p | i for i in
# range(...)]`` grew a worker by ~1 MB per evaluation that no evaluation ever gave back.
MAX_FLAG_MEMBERS = 4_096


def forget_pseudo_member(member: Any) -> None:
    """Drop ``member`` (a combination an operator just made) from its Flag class's members once
    the class keeps more than :data:`MAX_FLAG_MEMBERS` combinations: the value is still returned,
    equal to the next one made alike (not the same object)."""
    kind = type(member)
    kept = TYPE_DICT(kind).get("_value2member_map_")
    named = TYPE_DICT(kind).get("_member_map_")
    if type(kept) is not dict or type(named) is not dict or len(kept) <= MAX_FLAG_MEMBERS + len(named):
        return
    value = _stored(member, "_value_")
    if value is not _ABSENT and kept.get(value) is member and all(known is not member for known in named.values()):
        kept.pop(value, None)


# ---------------------------------------------------------------- operators of objects

# What Python calls on an object to splice, compare, hash, add or test it: each is the object's
# own code when its class (not the standard library) wrote it. A requests.Session compared, a
# client's __str__ that logs in, a model's __eq__ that queries: a template that splices or
# compares an object must not run it (docs/data-and-variables.md, "Objects in the context").
TEXT_DUNDERS = ("__str__", "__repr__", "__format__")
COMPARE_DUNDERS = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__")
HASH_DUNDERS = ("__hash__", "__eq__")
TRUTH_DUNDERS = ("__bool__", "__len__")
# What a number, a count or a width taken from an object runs ('a' * x, '%d' % x, s.center(x)).
NUMBER_DUNDERS = ("__index__", "__int__", "__float__")
# What formatting an object with "%" runs: its text, or its number for %d, %x, %f...
PERCENT_DUNDERS = TEXT_DUNDERS + NUMBER_DUNDERS
ARITH_DUNDERS = tuple(
    f"__{prefix}{name}__"
    for name in "add sub mul truediv floordiv mod pow lshift rshift and or xor matmul divmod".split()
    for prefix in ("", "r")
) + ("__neg__", "__pos__", "__invert__", "__abs__", "__int__", "__float__", "__index__", "__round__",
     "__trunc__", "__floor__", "__ceil__", "__complex__")
# Modules whose classes' operators only compute on the values they hold.
_TRUSTED_CODE = _PROTOCOL_MODULES | {"enum", "dataclasses", "numbers", "abc", "typing"}
_MIXIN_MODULES = frozenset({"collections.abc", "_collections_abc", "numbers", "abc"})
_SANDBOX_MODULE = "culm.data.sandbox_eval"  # the builtins and methods it hands an expression
_PLAIN = frozenset({str, int, float, bool, type(None), bytes, complex})
_HOLDERS = (list, tuple, set, frozenset, dict, collections.deque)
_VIEWS = frozenset(DICT_VIEWS)
_verdicts: dict[tuple[type, tuple[str, ...]], str | None] = {}


def own_operator(kind: type, dunders: tuple[str, ...]) -> str | None:
    """The first of ``dunders`` that ``kind`` runs as its own code (its class or a non-standard
    base wrote it), or None: a built-in, a value type's, an enum's, a namedtuple's and a
    dataclass's generated operators only compute on the values they hold."""
    key = (kind, dunders)
    known = _verdicts.get(key, _ABSENT)
    if known is not _ABSENT:
        return known  # type: ignore[return-value]
    verdict = None
    for name in dunders:
        owner, found = _class_attribute(kind, name)
        if found is _ABSENT or found is None or _computes(kind, owner, found):
            continue
        verdict = name
        break
    if len(_verdicts) > 4096:
        _verdicts.clear()
    _verdicts[key] = verdict
    return verdict


def _computes(kind: type, owner: type | None, found: Any) -> bool:
    func = found.__func__ if issubclass(type(found), classmethod | staticmethod) else found
    if issubclass(type(func), types.FunctionType):
        if func.__module__ in _MIXIN_MODULES:
            # An abstract base's ready-made method (Mapping.__eq__, Set.__le__, Complex.__bool__)
            # calls the class's own __iter__, __getitem__, __len__, __ne__...: a standard
            # library class's only (UserDict's); a user's Mapping runs its own code through it.
            return _top(TYPE_MODULE(kind)) in _TRUSTED_CODE
        if func.__module__ == "functools":
            # functools.total_ordering's methods call the class's own __lt__ (or __le__...):
            # judged by the class that holds them (ipaddress's, or a user's).
            return owner is not None and _top(TYPE_MODULE(owner)) in _TRUSTED_CODE
        if _top(func.__module__) in _TRUSTED_CODE or func.__module__ == _SANDBOX_MODULE:
            return True  # a namedtuple's __repr__, an Enum's __str__
        # the repr, eq and order methods dataclasses wrote from the fields (their values are walked)
        code = getattr(getattr(func, "__wrapped__", func), "__code__", None)
        return "__dataclass_fields__" in TYPE_DICT(kind) and code is not None and code.co_filename == "<string>"
    if issubclass(type(func), types.WrapperDescriptorType | types.MethodDescriptorType):
        # a built-in type's slot copied into the class (an IntEnum's int.__format__ on 3.11)
        return _top(getattr(func.__objclass__, "__module__", "")) in _TRUSTED_CODE
    module = TYPE_MODULE(owner) if owner is not None else None
    return module is not None and (_top(module) in _TRUSTED_CODE or module == _SANDBOX_MODULE)


# Libraries whose time zones (a datetime's tzinfo) only compute an offset and a name from tables
# or the system's settings: pytz's and dateutil's zones are classes written in Python, as are those
# of the libraries built on them; the standard library's (datetime.timezone, zoneinfo) are trusted
# as its other value types are.
ZONE_LIBRARIES = frozenset({"pytz", "pytz_deprecation_shim", "dateutil", "pendulum", "tzlocal", "backports",
                            "arrow", "isodate", "iso8601", "psycopg2", "django", "babel"})
# What a date with a time zone calls on it: its offset, its name, its daylight saving time, the
# conversion from UTC (astimezone), and its repr (written inside the date's).
_ZONE_METHODS = ("utcoffset", "tzname", "dst", "fromutc", "__repr__", "__getattribute__", "__getattr__")
ZONED = (datetime.datetime, datetime.time)
_zone_verdicts: dict[type, str | None] = {}


def zone_refusal(value: Any, what: str) -> ExpressionRefusedError | None:
    """Why ``what`` a datetime or time (or a time zone) is refused: its time zone's class wrote its
    own ``utcoffset``, ``tzname``, ``dst``, ``fromutc`` or ``__repr__`` (a component's class), which
    turning the date into text, comparing, hashing or subtracting it runs; or None. A standard
    library zone, and those of :data:`ZONE_LIBRARIES`, only compute."""
    kind = type(value)
    if issubclass(kind, datetime.tzinfo):
        zone = value
    elif issubclass(kind, ZONED):
        # the C type's own field, never a subclass's property
        zone = (datetime.datetime if issubclass(kind, datetime.datetime) else datetime.time).tzinfo.__get__(value)
    else:
        return None
    if zone is None or type(zone) is datetime.timezone:
        return None
    zone_kind = type(zone)
    verdict = _zone_verdicts.get(zone_kind, _ABSENT)
    if verdict is _ABSENT:
        verdict = _own_zone_method(zone_kind)
        if len(_zone_verdicts) > 1024:
            _zone_verdicts.clear()
        _zone_verdicts[zone_kind] = verdict
    if verdict is None:
        own = _instance_dict(zone)
        verdict = next((name for name in _ZONE_METHODS if own is not None and name in own), None)
    if verdict is None:
        return None
    whose = "" if zone is value else f"a {kind_name(value)} object whose time zone is "
    return ExpressionRefusedError(
        f"{what} {whose}a {kind_name(zone)} object is refused: the time zone's class's {verdict} is its "
        f"own code (not the standard library's, nor that of {', '.join(sorted(ZONE_LIBRARIES))}), which a "
        f"template does not run; {_HINT}"
    )


def _own_zone_method(zone_kind: type) -> str | None:
    for name in _ZONE_METHODS:
        owner, found = _class_attribute(zone_kind, name)
        if found is _ABSENT or found is None or owner is None:
            continue
        func = found.__func__ if issubclass(type(found), classmethod | staticmethod) else found
        if issubclass(type(func), types.FunctionType):
            module = func.__module__
        elif issubclass(type(func), types.WrapperDescriptorType | types.MethodDescriptorType):
            module = getattr(func.__objclass__, "__module__", "")
        else:
            module = TYPE_MODULE(owner)
        if _top(module) not in _TRUSTED_CODE and _top(module) not in ZONE_LIBRARIES:
            return name
    return None


def operator_refusal(
    value: Any, dunders: tuple[str, ...], what: str,
    seen: dict[int, Any] | None = None, tick: Callable[[], None] | None = None,
) -> ExpressionRefusedError | None:
    """Why ``what`` (splicing, comparing, ...) ``value`` is refused: it, or a value it holds (a
    list's item, a dict's key, a dataclass's field), runs its class's own ``dunders``; or None.
    ``seen`` maps the id of each container already walked (in this evaluation, for these
    ``dunders``) to it, the reference keeping the id from being reused; ``tick`` is the clock."""
    stack = [value]
    known = {} if seen is None else seen
    walked: dict[int, Any] = {}  # joins ``seen`` only when the whole walk passes
    visited = 0
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PLAIN:
            continue
        visited += 1  # every item that is not a scalar: a list of a million datetimes is timed too
        if tick is not None and not visited % 512:
            tick()
        # issubclass of the real type: isinstance() would run a __class__ property
        if issubclass(kind, _HOLDERS) or kind in _VIEWS or kind in _LIBRARY_HOLDERS or dataclass_like(item):
            if known.get(id(item)) is item or walked.get(id(item)) is item:
                continue
            walked[id(item)] = item
        found = own_operator(kind, dunders)
        if found is None and kind is not collections.deque and issubclass(kind, collections.deque) and _own_protocol(kind):
            found = "__iter__ or __len__"  # a deque's text and comparisons iterate it through its class
        if found is not None:
            return ExpressionRefusedError(
                f"{what} a {kind_name(item)} object is refused: its class's {found} is its own code, "
                f"which a template does not run; {_HINT}"
            )
        if issubclass(kind, dict):  # the built-in type's own iteration, never a subclass's override
            held: Any = [*dict.keys(item), *dict.values(item)]
            if issubclass(kind, collections.defaultdict | collections.Counter) and not _SHOWN_BY_ENUM.isdisjoint(dunders):
                refusal = _library_text_refusal(item, what)
                if refusal is not None:
                    return refusal
                if issubclass(kind, collections.defaultdict):
                    held.append(_factory(item))  # its text writes the factory's repr
        elif issubclass(kind, _HOLDERS):
            if kind in _HOLDERS:
                held = item
            else:  # the built-in type's own iteration, never a subclass's override
                base: Any = next(klass for klass in _HOLDERS if issubclass(kind, klass))
                held = list(base.__iter__(item))
        elif kind in _VIEWS:  # a dict's keys, values or items: what the dict holds
            held = list(item)
        elif issubclass(kind, enum.Enum):
            # an enum member compares and hashes by identity and name, but writes its value's
            # repr (a user object's own __repr__ ran for str([member]))
            held = [_stored(item, "_value_")] if set(dunders) & _SHOWN_BY_ENUM else []
        elif (inner := library_held(item)) is not None:
            refusal = protocol_refusal(item, what) if _wrapped(item) else None
            if refusal is not None:
                return refusal
            held = inner
        elif dataclass_like(item):
            try:  # as stored: a field its class computes (a property) is refused, never read
                fields = [stored_field(item, kind, name) for name in static_attribute(kind, "__dataclass_fields__")]
            except ExpressionRefusedError as exc:
                return exc
            held = [field for field in fields if field is not NOTHING]
        else:
            if issubclass(kind, ZONED) and (refusal := zone_refusal(item, what)) is not None:
                return refusal
            continue
        if not set(map(type, held)) <= _PLAIN:  # scalars only are checked in C
            stack.extend(_below_plain_containers(held, known, walked, tick))
    known.update(walked)
    return None


def _library_text_refusal(item: Any, what: str) -> ExpressionRefusedError | None:
    """Why the text of a Counter is refused: its repr sorts its counts (a count that is a user's
    object runs its own ``__lt__``); None for a defaultdict (its factory is checked as a value)."""
    if not issubclass(type(item), collections.Counter):
        return None
    return operator_refusal(list(dict.values(item)), COMPARE_DUNDERS, what)


_FLAT_HOLDERS = frozenset({dict, list, tuple})
_SHOWN_BY_ENUM = frozenset(TEXT_DUNDERS)
_FLAT_CHUNK = 4_096


def _below_plain_containers(
    held: Any, known: dict[int, Any], walked: dict[int, Any], tick: Callable[[], None] | None,
) -> list[Any]:
    """The values among ``held`` and below it that are neither scalars nor plain containers (of
    the exact type dict, list or tuple, whose operators are the built-in's), to be checked one by
    one; the plain containers met are walked a depth at a time, their items' types read in C, and
    added to ``walked``. A table of rows whose fields hold lists ({'tags': [...]}) was walked
    a container at a time in Python: ``out == out2`` of 40,000 such rows held twice took 0.4 s
    of the 0.5 s limit, for a comparison of 10 ms."""
    others: list[Any] = []
    level: Any = held
    while True:
        flat, rest = _split(level)
        others.extend(rest)
        fresh = dict(zip(map(id, flat), flat, strict=True))  # in C; a container met twice is walked once
        new = fresh.keys() - known.keys() - walked.keys()  # ids held in known or walked are not reused
        if len(new) < len(fresh):
            fresh = {key: fresh[key] for key in new}
        if not fresh:
            return others
        walked.update(fresh)
        found: list[Any] = []
        values = list(fresh.values())
        for start in range(0, len(values), _FLAT_CHUNK):
            chunk = values[start:start + _FLAT_CHUNK]
            kinds = list(map(type, chunk))
            dicts = list(itertools.compress(chunk, map(operator.is_, kinds, itertools.repeat(dict))))
            sequences = list(itertools.compress(chunk, map(operator.is_not, kinds, itertools.repeat(dict))))
            children = itertools.chain(itertools.chain.from_iterable(map(dict.keys, dicts)),
                                       itertools.chain.from_iterable(map(dict.values, dicts)),
                                       itertools.chain.from_iterable(sequences))
            found.extend(_not_plain(children))
            if tick is not None:
                tick()
        level = found


def _not_plain(values: Any) -> Iterator[Any]:
    """The items of ``values`` (an iterable, read once) that are not scalars, picked in C."""
    items, typed = itertools.tee(values)
    return itertools.compress(items, map(operator.not_, map(_PLAIN.__contains__, map(type, typed))))


def _split(values: Any) -> tuple[list[Any], list[Any]]:
    """The plain containers (exact dict, list, tuple) and the other non-scalars among ``values``."""
    found = list(_not_plain(values))
    if set(map(type, found)) <= _FLAT_HOLDERS:
        return found, []
    flags = list(map(_FLAT_HOLDERS.__contains__, map(type, found)))
    return (list(itertools.compress(found, flags)),
            list(itertools.compress(found, map(operator.not_, flags))))


_LIBRARY_HOLDERS = frozenset({types.SimpleNamespace, types.MappingProxyType, collections.UserDict,
                              collections.UserList, collections.ChainMap, slice})


def library_held(item: Any) -> list[Any] | None:
    """The values a standard-library holder (a SimpleNamespace, a UserDict, a ChainMap, a slice)
    shows in its text and compares, read without running its own methods; None for others."""
    kind = type(item)
    if kind is slice:
        return [item.start, item.stop, item.step]
    if kind is types.SimpleNamespace:
        return list(_stored(item, "__dict__").values())
    if kind is types.MappingProxyType:
        # the mapping itself, walked as any value: the proxy's operations are its mapping's own
        # (a user's mapping class's __eq__, __getitem__, __iter__, items())
        return [proxied(item)]
    if issubclass(kind, collections.UserDict | collections.UserList):
        data = _stored(item, "data")
        return [] if data is _ABSENT else [data]
    if issubclass(kind, collections.ChainMap):
        return [_stored(item, "maps")]
    return None


def _wrapped(obj: Any) -> list[Any]:
    """The mappings or lists a ChainMap, UserDict or UserList works through (read as stored)."""
    if issubclass(type(obj), collections.ChainMap):
        maps = _stored(obj, "maps")
        return list(maps) if type(maps) is list else []
    if issubclass(type(obj), collections.UserDict | collections.UserList):
        data = _stored(obj, "data")
        return [] if data is _ABSENT or type(data) in _PLAIN_HELD else [data]
    return []


_PLAIN_HELD = frozenset({dict, list})


def dataclass_like(obj: Any) -> bool:
    return static_attribute(type(obj), "__dataclass_fields__") is not NOTHING


def _stored(obj: Any, name: str) -> Any:
    """Field ``name`` of ``obj`` as stored, or _ABSENT; refused when its class computes it."""
    found = stored_field(obj, type(obj), name)
    return _ABSENT if found is NOTHING else found
