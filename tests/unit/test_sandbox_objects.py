"""What a template may do with objects a component or a lazy variable put in its names
(culm.data.sandbox_objects; docs/data-and-variables.md, "Objects in the context")."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import io

import pytest

from culm.data import sandbox
from culm.data.sandbox import evaluate
from culm.data.template import render
from culm.errors import ExpressionLimitError, ExpressionRefusedError

RAN: list[str] = []


class Client:
    kind = "http"

    def __init__(self) -> None:
        self.url = "http://svc"

    def get(self, path: str) -> str:
        RAN.append(path)
        return path

    @property
    def token(self) -> str:
        RAN.append("token")
        return "t"

    def __iter__(self):
        RAN.append("iter")
        return iter(())

    def __getitem__(self, key: str) -> str:
        RAN.append(key)
        return key

    def __len__(self) -> int:
        RAN.append("len")
        return 0


@dataclasses.dataclass
class Row:
    id: int
    tags: list[str]


class Slotted:
    __slots__ = ("x",)

    def __init__(self) -> None:
        self.x = 3


Point = collections.namedtuple("Point", "x y")


class Color(enum.Enum):
    RED = "r"


class Level(enum.IntEnum):
    HIGH = 3


class Overriding(dict):
    def get(self, key, default=None):  # a component's own code: a template gets dict.get
        RAN.append("override")
        return "overridden"


WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
NAMES = {
    "client": Client(), "row": Row(7, ["a"]), "slotted": Slotted(), "point": Point(1, 2), "color": Color.RED,
    "level": Level.HIGH, "over": Overriding(k="v"), "when": WHEN, "delta": datetime.timedelta(minutes=90),
    "price": decimal.Decimal("12.345"), "cent": decimal.Decimal("0.01"), "file": io.StringIO("secret\n"),
    "day": datetime.date(2024, 5, 6),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _nothing_ran():
    RAN.clear()
    yield


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("client.url.upper()", "HTTP://SVC"),
        ("client.kind", "http"),
        ("row.id + len(row.tags)", 8),
        ("slotted.x", 3),
        ("point.x + point.y", 3),
        ("color.value + color.name", "rRED"),
        ("level.value + level", 6),
        ("over.get('k')", "v"),
        ("when.strftime('%Y-%m-%d')", "2024-05-06"),
        ("when.isoformat()", "2024-05-06T07:08:09+00:00"),
        ("when.date().weekday()", 0),
        ("day.isoformat()", "2024-05-06"),
        ("delta.total_seconds()", 5400.0),
        ("str(price.quantize(cent))", "12.34"),  # half to even
        ("f'{client.url}/{row.id}'", "http://svc/7"),
    ],
)
def test_data_of_objects_and_methods_of_values_are_used(expr: str, expected: object) -> None:
    assert evaluate(expr, NAMES) == expected
    assert RAN == []


@pytest.mark.parametrize(
    ("expr", "refusal"),
    [
        ("client.get('/admin')", "method 'get'"),
        ("client.get", "method 'get'"),
        ("client.token", "property 'token'"),
        ("[x for x in client]", "iterating"),
        ("list(client)", "iterating"),
        ("zip(client)", "iterating"),
        ("client['k']", "indexing"),
        ("'k' in client", "testing membership"),
        ("len(client)", "measuring"),
        # its truth is its __len__ (a queryset counts its rows): refused as len() is
        ("client or 1", "testing the truth of"),
        ("client and 1", "testing the truth of"),
        ("1 if client else 2", "testing the truth of"),
        ("[x for x in [1] if client]", "testing the truth of"),
        ("not client", "testing the truth of"),
        ("bool(client)", "testing the truth of"),
        ("any([0, client])", "testing the truth of"),
        ("all(x for x in [1, client])", "testing the truth of"),
        ("'%(k)s' % client", "formatting from"),
        ("'{k}'.format_map(client)", "formatting from"),
        ("dict(client)", "iterating"),
        ("row.__class__", None),  # forbidden as before: a plain ExpressionError
        ("[line for line in file]", "iterating a _io.StringIO"),
    ],
)
def test_what_an_object_can_do_is_refused_naming_the_expression(expr: str, refusal: str | None) -> None:
    if refusal is None:
        with pytest.raises(Exception) as info:
            evaluate(expr, NAMES)
        assert not isinstance(info.value, ExpressionRefusedError)
        return
    with pytest.raises(ExpressionRefusedError, match=refusal) as info:
        evaluate(expr, NAMES)
    assert repr(expr)[1:-1] in str(info.value) and "TRUST_CONTEXT_OBJECTS" in str(info.value)
    assert RAN == []


def test_a_refused_fragment_fails_the_render_instead_of_staying_text() -> None:
    assert render("${missing} ${client.url}", NAMES) == "${missing} http://svc"
    with pytest.raises(ExpressionRefusedError):
        render("x ${client.get('/admin')}", NAMES)
    with pytest.raises(ExpressionRefusedError, match="indexing"):
        render("${client['k']}", NAMES, nested_objects=True)
    assert RAN == []


def test_a_strftime_pattern_is_sized_before_it_formats() -> None:
    with pytest.raises(ExpressionLimitError, match=r"strftime\(\) result"):
        evaluate("when.strftime('%c' * 40000)", NAMES)


def test_a_trusted_deployment_lets_templates_use_the_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "TRUST_CONTEXT_OBJECTS", True)
    assert evaluate("client.get('/x') + client.token + str(len(client))", NAMES) == "/xt0"
    assert RAN == ["/x", "token", "len"]
    assert evaluate("bool(client) or 'empty'", NAMES) == "empty"
    assert RAN == ["/x", "token", "len", "len"]


def test_the_truth_of_an_object_without_its_own_len_is_tested() -> None:
    """An object whose class has no __len__ (or a __bool__ of its own) is true as before, and so
    are the values and containers that measure themselves without running the object's code."""
    assert evaluate("[1 if row else 2, not row, bool(row), row and 3, [x for x in [5] if slotted]]", NAMES) == [
        1, False, True, 3, [5]]
    assert evaluate("[not point, bool({}), [] or 'e', 'x' if over == 0 else 'y', color and 1]", NAMES) == [
        False, False, "e", "y", 1]
    assert evaluate("[any([0, row, point]), all([row, 1, 'a', over == 1]), any(x for x in [0, slotted])]", NAMES) == [
        True, False, True]


def test_an_objects_own_getattribute_does_not_run_for_a_data_read() -> None:
    class Watching:
        __slots__ = ("x",)
        label = "w"

        def __init__(self) -> None:
            self.x = 1

        def __getattribute__(self, name: str):
            RAN.append(name)
            return object.__getattribute__(self, name)

    watching = Watching()
    RAN.clear()
    assert evaluate("watching.x + len(watching.label)", {"watching": watching}) == 2
    assert "x" not in RAN and "label" not in RAN  # (isinstance() asks it for __class__, as Python does)


def test_a_strftime_width_counts_before_it_formats() -> None:
    # glibc pads "%_999d" to 999 characters: 2,000 of them wrote 1,998,000 characters before the
    # result's length was checked (found probing, session 18)
    with pytest.raises(ExpressionLimitError, match=r"strftime\(\) result would be"):
        evaluate("when.strftime('%_999d' * 2000)", NAMES)
    with pytest.raises(ExpressionLimitError, match=r"strftime\(\) width"):
        evaluate("when.strftime('%_9999999d')", NAMES)
    assert evaluate("when.strftime('report-2024-%m-%_3d')", NAMES) == "report-2024-05-  6"


def test_an_object_claiming_another_class_gets_nothing_of_it() -> None:
    class Claiming:
        """Claims to be a str and an enum member (as a Mock(spec=str) does)."""

        @property
        def __class__(self):
            return str

        def count(self, *args):
            RAN.append("count")
            return 0

        @property
        def name(self):
            RAN.append("name")
            return "n"

    for expr in ("obj.replace('a', 'b')", "obj.name", "obj.count('a')", "[x for x in obj]"):
        with pytest.raises(Exception):  # noqa: B017, PT011 - refused or a TypeError, either way nothing of it ran
            evaluate(expr, {"obj": Claiming()})
    assert RAN == []
