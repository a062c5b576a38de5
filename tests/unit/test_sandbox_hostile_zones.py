"""Dates whose time zone is a component's own class (found probing, session 21; refused in session 22).

A ``datetime`` or ``time`` is a value type, but an aware one asks its ``tzinfo`` for the offset,
the name, the daylight saving time or the conversion from UTC whenever it is written, compared,
hashed, subtracted or converted: ``${when}``, ``str(when)``, ``when == other``, ``{when}``,
``when.isoformat()`` ran ``utcoffset`` of whatever class the component put there. The standard
library's zones (``datetime.timezone``, ``zoneinfo``) and those of the time zone libraries (pytz,
dateutil, ...) only compute; any other class's own methods are refused, as an object's own
``__str__`` is.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import pytest

from culm.data import sandbox, template
from culm.data.boolrule import evaluate_gateway_condition
from culm.errors import ExpressionRefusedError

RAN: list[str] = []


class OwnZone(dt.tzinfo):
    """A component's zone: each method it wrote records that it ran."""

    def utcoffset(self, when: Any) -> dt.timedelta:
        RAN.append("utcoffset")
        return dt.timedelta(hours=1)

    def tzname(self, when: Any) -> str:
        RAN.append("tzname")
        return "OWN"

    def dst(self, when: Any) -> dt.timedelta:
        RAN.append("dst")
        return dt.timedelta(0)

    def fromutc(self, when: Any) -> Any:
        RAN.append("fromutc")
        return when + dt.timedelta(hours=1)


class ReprZone(dt.tzinfo):
    """A zone that only writes its own repr: the repr of a date holding it calls it."""

    def __repr__(self) -> str:
        RAN.append("__repr__")
        return "ReprZone()"


ZONE = OwnZone()
NAMES = {
    "when": dt.datetime(2024, 1, 1, tzinfo=ZONE), "at": dt.time(1, tzinfo=ZONE), "zone": ZONE,
    "other": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "naive": dt.datetime(2024, 1, 1), "utc": dt.UTC,
    "rows": [{"id": 1, "at": dt.datetime(2024, 1, 1, tzinfo=ZONE)}],
}
REFUSED = [
    "str(when)", "f'{when}'", "f'{when:%Z}'", "'{}'.format(when)", "'%s' % when", "str([when])", "str(rows)",
    "when.strftime('%z')", "when.isoformat()", "when.utcoffset()", "when.tzname()", "when.dst()", "when.timestamp()",
    "when.astimezone(utc)", "other.astimezone(zone)", "naive.astimezone(zone)", "when == other", "when < other",
    "[when] == [other]", "rows == [dict(rows[0])]", "{when}", "{when: 1}", "when - other", "sorted([when, other])",
    "max(when, other)", "when in [other]", "str(at)", "at.isoformat()", "at.utcoffset()", "{at}",
    "at.strftime('%Z')",
]  # fmt: skip


@pytest.mark.parametrize("expr", REFUSED)
def test_a_date_whose_zone_is_a_components_class_is_refused_without_running_it(expr: str) -> None:
    RAN.clear()
    with pytest.raises(ExpressionRefusedError, match="OwnZone") as refused:
        sandbox.evaluate(expr, NAMES)
    assert RAN == []
    assert "time zone" in str(refused.value) and expr in str(refused.value)


@pytest.mark.parametrize(("expr", "answer"), [
    ("when.year", 2024), ("when.date()", dt.date(2024, 1, 1)), ("when.time()", dt.time(0)),
    ("when.weekday()", 0), ("when.ctime()", "Mon Jan  1 00:00:00 2024"), ("when is other", False),
    ("bool(when)", True), ("str(when.replace(tzinfo=None))", "2024-01-01 00:00:00"),
    ("str(when.replace(tzinfo=utc))", "2024-01-01 00:00:00+00:00"), ("str(zone)", "<...OwnZone object>"),
    ("(when + (other - other)).year", 2024),
])  # fmt: skip
def test_what_never_asks_the_zone_still_works(expr: str, answer: Any) -> None:
    RAN.clear()
    got = sandbox.evaluate(expr, NAMES)
    assert got == answer or str(got).endswith(".OwnZone object>")
    assert RAN == []


def test_a_zones_own_repr_is_refused_where_a_date_is_written_with_it() -> None:
    RAN.clear()
    with pytest.raises(ExpressionRefusedError, match="__repr__"):
        sandbox.evaluate("str([when])", {"when": dt.datetime(2024, 1, 1, tzinfo=ReprZone())})
    assert RAN == []


def test_a_zone_method_put_on_the_zone_object_itself_is_refused() -> None:
    holder = type("Zone", (dt.tzinfo,), {"__module__": "zoneinfo"})()  # a class that looks standard
    holder.utcoffset = lambda when: RAN.append("instance utcoffset") or dt.timedelta(0)
    RAN.clear()
    with pytest.raises(ExpressionRefusedError, match="utcoffset"):
        sandbox.evaluate("str(when)", {"when": dt.datetime(2024, 1, 1, tzinfo=holder)})
    assert RAN == []


def test_templates_and_conditions_refuse_it_naming_the_expression() -> None:
    RAN.clear()
    assert template.render("${when}", NAMES) is NAMES["when"]  # the raw object, written by no one
    with pytest.raises(ExpressionRefusedError, match="OwnZone"):
        template.render("at ${when}", NAMES)
    with pytest.raises(ExpressionRefusedError, match="OwnZone"):
        template.render("${when.isoformat()}", NAMES)
    with pytest.raises(ExpressionRefusedError, match="OwnZone"):
        evaluate_gateway_condition("${when} == '2024'", NAMES)
    assert RAN == []


def test_trusted_objects_get_the_zones_code_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "TRUST_CONTEXT_OBJECTS", True)
    RAN.clear()
    assert sandbox.evaluate("str(when)", NAMES) == "2024-01-01 00:00:00+01:00"
    assert RAN == ["utcoffset"]


def test_standard_library_zones_are_values() -> None:
    names = {"a": dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")), "b": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
             "c": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=9), "JST"))}
    assert sandbox.evaluate("[str(x) for x in (a, b, c)]", names) == [
        "2024-01-01 00:00:00+00:00", "2024-01-01 00:00:00+00:00", "2024-01-01 00:00:00+09:00"]
    assert sandbox.evaluate("a == b and len({a, b, c}) == 2 and f'{c:%Z %z}' == 'JST +0900'", names) is True
    assert sandbox.evaluate("(a - c).total_seconds()", names) == 32400.0
    assert sandbox.evaluate("c.astimezone(a.tzinfo).isoformat()", names) == "2023-12-31T15:00:00+00:00"


def test_the_zones_of_pytz_and_dateutil_are_values() -> None:
    pytz = pytest.importorskip("pytz")
    dateutil_tz = pytest.importorskip("dateutil.tz")
    names = {"a": pytz.timezone("Europe/Paris").localize(dt.datetime(2024, 1, 1)),
             "b": dt.datetime(2024, 1, 1, tzinfo=dateutil_tz.gettz("Asia/Tokyo")),
             "c": dt.datetime(2024, 1, 1, tzinfo=pytz.utc), "d": dt.datetime(2024, 1, 1, tzinfo=dateutil_tz.tzoffset("X", 3600)),
             "e": dt.datetime(2024, 1, 1, tzinfo=dateutil_tz.tzlocal())}
    assert sandbox.evaluate("[str(x) for x in (a, b, c, d)]", names) == [
        "2024-01-01 00:00:00+01:00", "2024-01-01 00:00:00+09:00", "2024-01-01 00:00:00+00:00", "2024-01-01 00:00:00+01:00"]
    assert sandbox.evaluate("f'{b:%Z %z}' == 'JST +0900' and (a - b).total_seconds() == 28800", names) is True
    assert sandbox.evaluate("len({a, b, c, d, e}) >= 3 and sorted([a, b, c, d])[0] == b", names) is True
    assert template.render("${a} / ${e.isoformat()[:10]}", names) == "2024-01-01 00:00:00+01:00 / 2024-01-01"
