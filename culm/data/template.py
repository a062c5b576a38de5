"""``${...}`` templates inside pipeline data (bamboo's SPLICE semantics).

A fragment is ``${body}`` where the body holds no ``$``, ``{``, ``}`` or ``#``. Templates are
looked for in strings and, recursively, in list/tuple items and dict values (never dict keys).
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Mapping
from typing import Any

from culm.data import sandbox
from culm.data.memo import WeightedMemo
from culm.data.sandbox_eval import render_clock
from culm.data.sandbox_guards import CONTAINERS, check_subscript, measure, without_addresses
from culm.data.sandbox_objects import item_of, protocol_refusal
from culm.errors import ExpressionError, ExpressionLimitError, ExpressionRefusedError

FRAGMENT = re.compile(r"\$\{([^${}#]+)\}")
# (literal text before, fragment body or None, bare name or None, the fragment as written)
_Piece = tuple[str, "str | None", "str | None", str]
MAX_RENDER_OUTPUT = 1_000_000
RENDER_TIME_LIMIT = 1.0
MAX_RENDER_DEPTH = 100
# Text all the templates of one node (its inputs and the variables they need) may render in all.
MAX_NODE_RENDER_OUTPUT = 4 * MAX_RENDER_OUTPUT
# Seconds all the templates of one node may take to render in all (each render has
# RENDER_TIME_LIMIT of its own): 10,000 inputs of 0.3 s each would hold a thread for an hour.
NODE_RENDER_TIME_LIMIT = 10.0
# Only texts up to this length are remembered by the per-text caches, so that many large distinct
# templates cannot fill memory: 4,096 entries each, and at most CACHE_WEIGHT pieces (fragments and
# the text between them) or names in all (4,096 texts of 4 KB with 590 fragments each held 800 MB
# when only entries were counted).
MAX_CACHED_TEXT = 4096
CACHE_WEIGHT = 50_000
COMPILED: WeightedMemo[str, tuple[tuple[_Piece, ...], str | None]] = WeightedMemo(4096, CACHE_WEIGHT)
REFERENCES: WeightedMemo[str, frozenset[str]] = WeightedMemo(4096, CACHE_WEIGHT)
_known_compiled = COMPILED.data.get  # the memos keep their dicts when emptied
_known_references = REFERENCES.data.get

# "${" the templates of one node may hold: its inputs or params (or a gateway's conditions) and
# the variables they need. Each fragment is parsed on its own, tens of microseconds, before any
# clock can stop it: six inputs of 100,000 fragments each held the engine thread for 17 s.
MAX_NODE_FRAGMENTS = 10_000
# "${" the variables (data inputs) of one tree, every subprocess included, may hold: checking a
# tree parses each of them (600,000 took 16 s of the call that submitted the tree).
MAX_TREE_VARIABLE_FRAGMENTS = 50_000

_NESTED = re.compile(r"\s*([A-Za-z_]\w*)((?:\[(?:'\w+'|\"\w+\"|-?\d+)\])+)\s*")
_INDEX = re.compile(r"\[(?:'(\w+)'|\"(\w+)\"|(-?\d+))\]")


_bound = threading.local()


class time_bound:  # noqa: N801 - used as a function: ``with time_bound(seconds) as deadline``
    """Every rendering on this thread inside the block must end within ``seconds`` of the thread's
    CPU time (as well as within its own limit); ``as`` gives the ``render_clock()`` instant they share.

    A class rather than a generator context manager: the engine enters one per rendered node.
    """

    __slots__ = ("seconds", "outer")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.outer: float | None = None

    def __enter__(self) -> float:
        outer = self.outer = getattr(_bound, "deadline", None)
        at = render_clock() + self.seconds
        _bound.deadline = at = at if outer is None else min(at, outer)
        return at

    def __exit__(self, *exc: object) -> None:
        _bound.deadline = self.outer


class output_bound:  # noqa: N801 - used as a function: ``with output_bound(chars)``
    """All renderings on this thread inside the block together produce at most ``chars``
    characters of text (each one also stays under MAX_RENDER_OUTPUT), and end within
    NODE_RENDER_TIME_LIMIT seconds: many variables or inputs of one node, each just under the
    limits, would otherwise add up to gigabytes, or to hours (10,000 inputs of 0.3 s each)."""

    __slots__ = ("chars", "outer", "outer_deadline")

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.outer: list[int] | None = None
        self.outer_deadline: float | None = None

    def __enter__(self) -> None:
        outer = self.outer = getattr(_bound, "output", None)
        self.outer_deadline = getattr(_bound, "node_deadline", None)
        if outer is None:
            _bound.output = [self.chars]
            _bound.node_deadline = render_clock() + NODE_RENDER_TIME_LIMIT

    def __exit__(self, *exc: object) -> None:
        _bound.output = self.outer
        _bound.node_deadline = self.outer_deadline


def fragment_count(value: Any) -> int:
    """How many ``${`` the strings of ``value`` where templates are looked for hold in all (an
    upper bound of their fragments, counted in C without parsing any)."""
    if issubclass(type(value), str):
        return value.count("${")
    return sum(text.count("${") for text in _strings(value))


def too_many_fragments(count: int, what: str) -> str | None:
    """Why ``count`` fragments are too many for ``what`` (one node's templates), or None."""
    if count <= MAX_NODE_FRAGMENTS:
        return None
    return f"{what} hold {count:,} ${{...}} fragments, over the {MAX_NODE_FRAGMENTS:,} one node's templates may hold"


def references(value: Any) -> set[str]:
    """Return every context key (``${name}`` form) the templates in ``value`` load.

    Comprehension locals and safe builtins are not references; unparsable or forbidden
    fragments contribute nothing.
    """
    found: set[str] = set()
    for text in _strings(value):
        if "${" not in text:
            continue
        if len(text) > MAX_CACHED_TEXT:
            found.update(_references_of(text))
        else:
            found.update(_known_references(text) or _text_references(text))
    return found


def _text_references(text: str) -> frozenset[str]:
    # Templates repeat across nodes and runs: derive each string's references once.
    found = REFERENCES.data.get(text)
    if found is None:
        found = _references_of(text)
        REFERENCES.keep(text, found, len(found) + 1)
    return found


def _references_of(text: str) -> frozenset[str]:
    found: set[str] = set()
    for body in FRAGMENT.findall(text):
        try:
            names = sandbox.free_names(body)
        except ExpressionError:
            continue
        found.update(f"${{{name}}}" for name in names)
    return frozenset(found)


def render(value: Any, namespace: Mapping[str, Any], nested_objects: bool = False) -> Any:
    """Render the templates in ``value`` against ``namespace`` (keys are bare names).

    A string that is exactly one fragment naming a namespace key renders to that raw object.
    Other fragments are evaluated in the sandbox and their text substituted; a fragment that
    fails with an ordinary error is left as it was, as bamboo does.

    Args:
        value: A string, or a list/tuple/dict holding strings; anything else is returned as is.
        namespace: The values fragments may refer to.
        nested_objects: Also return raw objects for a sole ``name['key'][0]`` fragment
            (bamboo's ``ENABLE_RENDER_OBJ_BY_MAKO_STRING``).

    Raises:
        ExpressionLimitError: A fragment or the whole output went over a bound.
    """
    state = _RenderState(namespace, nested_objects)
    return state.render(value, 0)


def render_parts(
    text: str, namespace: Mapping[str, Any], nested_objects: bool = False,
) -> tuple[Any, list[tuple[str, str, str]]]:
    """:func:`render` of one string, with (literal before, fragment, the text it became) of each
    fragment substituted: for a caller that must know what each value added (a gateway condition).
    The parts are empty when ``text`` is one fragment naming a raw object (returned as it is)."""
    parts: list[tuple[str, str, str]] = []
    return _RenderState(namespace, nested_objects).render_str(text, parts), parts


class _RenderState:
    __slots__ = ("namespace", "nested_objects", "deadline", "output", "node_late")

    def __init__(self, namespace: Mapping[str, Any], nested_objects: bool) -> None:
        self.namespace = namespace
        self.nested_objects = nested_objects
        # One budget for the whole value, so many fragments cannot each use a full time slice.
        self.deadline = render_clock() + RENDER_TIME_LIMIT
        bound = getattr(_bound, "deadline", None)
        if bound is not None and bound < self.deadline:
            self.deadline = bound
        node = getattr(_bound, "node_deadline", None)
        self.node_late = False  # whether the node's time runs out first
        if node is not None and node < self.deadline:
            self.deadline, self.node_late = node, True
        self.output = 0

    def render(self, value: Any, depth: int) -> Any:
        if issubclass(type(value), str):
            return self.render_str(value)
        if not issubclass(type(value), list | tuple | dict):
            return value
        if depth >= MAX_RENDER_DEPTH:
            if any("${" in text for text in _strings(value)):
                raise ExpressionLimitError(f"templates nested more than {MAX_RENDER_DEPTH} levels deep")
            return value
        if issubclass(type(value), dict):
            return {key: self.item(item, depth + 1) for key, item in value.items()}
        items = [self.item(item, depth + 1) for item in value]
        return items if issubclass(type(value), list) else tuple(items)

    def item(self, value: Any, depth: int) -> Any:
        """An item of a list, tuple or dict being rendered. A container it names (a sole ``${x}``)
        is shared, not copied, so its size written out counts like text: 40 list variables each
        holding the one before twice held 2**40 items, and writing them out froze the engine."""
        rendered = self.render(value, depth)
        if issubclass(type(value), str) and issubclass(type(rendered), CONTAINERS):
            room = MAX_RENDER_OUTPUT - self.output
            self.count(measure(rendered, room, 1 << 62, self.check_clock)[0])
        return rendered

    def check_clock(self) -> None:
        if render_clock() > self.deadline:
            raise ExpressionLimitError(self.too_late())

    def too_late(self) -> str:
        if self.node_late:
            return f"the templates of one node took longer than {NODE_RENDER_TIME_LIMIT} seconds to render in all"
        return f"rendering took longer than {RENDER_TIME_LIMIT} seconds"

    def render_str(self, text: str, parts: list[tuple[str, str, str]] | None = None) -> Any:
        """``text`` rendered; ``parts`` (when given) gets (literal before, fragment, its text) of
        each fragment substituted (none when ``text`` is one fragment naming a raw object)."""
        if "${" not in text:
            return text
        if len(text) > MAX_CACHED_TEXT:
            pieces, sole = _compile(text)
        else:
            pieces, sole = _known_compiled(text) or _compiled(text)
        if sole is not None:
            found, raw = self.raw_object(sole)
            if found:
                return raw
        out: list[str] = []
        for literal, body, name, whole in pieces:
            out.append(literal)
            if body is not None:
                out.append(self.substitute(body, name, whole))
                if parts is not None:
                    parts.append((literal, whole, out[-1]))
        return "".join(out)

    def raw_object(self, body: str) -> tuple[bool, Any]:
        name = body.strip()
        if name in self.namespace:
            return True, self.namespace[name]
        match = _NESTED.fullmatch(body) if self.nested_objects else None
        if match is None or match.group(1) not in self.namespace:
            return False, None
        obj = self.namespace[match.group(1)]
        try:
            for word, dq_word, number in _INDEX.findall(match.group(2)):
                key = int(number) if number else word or dq_word
                check_subscript(obj, key)  # the sandbox's rule: the expression would be refused
                if protocol_refusal(obj, "indexing") is not None and not sandbox.Limits.current().trust_objects:
                    return False, None  # evaluated as an expression, which fails the node naming it
                obj = item_of(obj, key)  # a defaultdict's missing key never calls its factory
        except (LookupError, TypeError, ExpressionError):
            return False, None
        except ValueError:
            # an index of more digits than int() reads: evaluated as an expression, whose parser
            # refuses it (an ExpressionError), as it would without nested_objects; a bare ValueError
            # failed the node before this one, the pipeline left RUNNING (session 22)
            return False, None
        return True, obj

    def substitute(self, body: str, name: str | None, whole: str) -> str:
        if render_clock() > self.deadline:  # check_clock, inlined: every fragment pays for it
            raise ExpressionLimitError(self.too_late())
        try:
            if name is not None and name in self.namespace:
                value = self.namespace[name]  # what the sandbox would return for a bare name
                text = sandbox.safe_str(value, MAX_RENDER_OUTPUT - self.output)
            else:
                value = sandbox.evaluate(body, self.namespace, deadline=self.deadline)
                # text an expression made ('%r' % (gen,)) holds no memory address either
                text = without_addresses(sandbox.safe_str(value, MAX_RENDER_OUTPUT - self.output))
        except ExpressionRefusedError:
            raise  # the node fails naming the expression: a refused capability is not a typo
        except ExpressionLimitError:
            if self.node_late and render_clock() > self.deadline:
                raise ExpressionLimitError(self.too_late()) from None
            raise
        except ExpressionError:
            text = whole
        self.count(len(text))
        return text

    def count(self, chars: int) -> None:
        """Count ``chars`` characters of output, against this render's and the node's budgets."""
        self.output += chars
        shared = getattr(_bound, "output", None)
        if shared is not None:
            shared[0] -= chars
            if shared[0] < 0:
                raise ExpressionLimitError("the templates of one node render more text than allowed in all")
        if self.output > MAX_RENDER_OUTPUT:
            raise ExpressionLimitError(f"rendered text is longer than {MAX_RENDER_OUTPUT} characters")


def _compiled(text: str) -> tuple[tuple[_Piece, ...], str | None]:
    """:func:`_compile`, once per text (templates repeat across nodes and runs)."""
    found = COMPILED.data.get(text)
    if found is None:
        found = _compile(text)
        COMPILED.keep(text, found, len(found[0]))
    return found


def _compile(text: str) -> tuple[tuple[_Piece, ...], str | None]:
    """``text`` cut into literal runs and fragments.

    Returns the pieces and, when the whole text is one fragment, that fragment's body. A fragment
    that is a bare name the sandbox accepts carries that name, so rendering can look it up directly.
    """
    pieces: list[_Piece] = []
    pos = 0
    for m in FRAGMENT.finditer(text):
        body = m.group(1)
        pieces.append((text[pos : m.start()], body, _bare_name(body), m.group(0)))
        pos = m.end()
    pieces.append((text[pos:], None, None, ""))
    sole = FRAGMENT.fullmatch(text)
    return tuple(pieces), (sole.group(1) if sole is not None else None)


def _bare_name(body: str) -> str | None:
    try:
        tree = sandbox.parse(body)
    except ExpressionError:
        return None
    return tree.body.id if isinstance(tree.body, ast.Name) else None


def strings_in(value: Any) -> list[str]:
    """Every string of ``value`` where templates are looked for (list/tuple items, dict values)."""
    return _strings(value)


def _strings(value: Any) -> list[str]:
    """All strings in ``value`` where templates may live, found without recursion."""
    found: list[str] = []
    seen: set[int] = set()  # a container holding itself must not loop for ever
    stack = [value]
    while stack:
        item = stack.pop()
        if issubclass(type(item), str):
            found.append(item)
        elif issubclass(type(item), list | tuple | dict) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if issubclass(type(item), dict) else item)
    return found
