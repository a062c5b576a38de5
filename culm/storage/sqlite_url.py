"""What a ``sqlite:///`` URL names: its file, and its query parameters, checked.

``sqlite:///culm.db?timeout=5`` is the file ``culm.db`` with a 5 s busy timeout, and
``sqlite:///file:culm.db?mode=ro&uri=true`` the file ``culm.db`` opened read-only through a SQLite
URI; neither is a file named after the whole text. A parameter that neither the driver nor (with
``uri=true``) SQLite takes is refused by name: SQLAlchemy would only warn and ignore it.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import parse_qs, unquote

# What pysqlite (through SQLAlchemy) takes from the query string.
DRIVER_PARAMETERS = ("timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements", "uri")
# What SQLite takes in a URI filename (``uri=true``).
URI_PARAMETERS = ("mode", "cache", "vfs", "immutable", "nolock", "psow", "modeof")
_TRUE = ("true", "yes", "on", "y", "t", "1")


# The longest busy timeout SQLite takes, in seconds (sqlite3_busy_timeout's int milliseconds).
MAX_TIMEOUT = 2_147_483


class SqliteUrl(NamedTuple):
    path: str | None  # None: in memory
    query: dict[str, str]
    read_only: bool  # mode=ro or immutable=1


def parse_sqlite_url(url: str) -> SqliteUrl:
    """The file (or None: in memory) and the query of a ``sqlite`` URL.

    Raises:
        ValueError: a parameter neither the driver nor SQLite takes, one given twice, a
            ``timeout`` that is not a number of seconds from 0 to MAX_TIMEOUT, SQLite URI
            parameters without ``uri=true`` or without ``file:``, or a ``file:`` name holding
            ``#`` or ``%`` (which SQLite would read otherwise than culm).
    """
    rest = url.split("://", 1)[1] if "://" in url else ""
    database, _, query_text = (rest[1:] if rest.startswith("/") else rest).partition("?")
    pairs = parse_qs(query_text, keep_blank_values=True)
    twice = sorted(k for k, v in pairs.items() if len(v) > 1)
    if twice:
        raise ValueError(f"the parameter {', '.join(twice)} is given more than once")
    query = {k: v[0] for k, v in pairs.items()}
    uri = query.get("uri", "").lower() in _TRUE
    unknown = [k for k in query if k not in DRIVER_PARAMETERS and not (uri and k in URI_PARAMETERS)]
    if unknown:
        needs_uri = not uri and all(k in URI_PARAMETERS for k in unknown)
        raise ValueError(
            f"unknown parameter {', '.join(unknown)}" + (
                " (a SQLite URI parameter: add uri=true and write the file as file:PATH, e.g. "
                "sqlite:///file:culm.db?mode=ro&uri=true)" if needs_uri else
                f" (a sqlite URL takes {', '.join(DRIVER_PARAMETERS)}; with uri=true also "
                f"{', '.join(URI_PARAMETERS)})"))
    if "timeout" in query:
        _check_timeout(query["timeout"])
    if uri and not database.startswith("file:"):
        # SQLite opens a name without "file:" as a plain path, and ignores the URI parameters then.
        ignored = [k for k in query if k in URI_PARAMETERS]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} needs a SQLite URI: write the file as file:{database or 'PATH'} "
                             f"(sqlite:///file:{database or 'culm.db'}?{'&'.join(f'{k}={query[k]}' for k in ignored)}"
                             "&uri=true)")
        uri = False
    if uri:
        database = database[len("file:"):]
        odd = sorted({c for c in database if c in "#%"})
        if odd:
            # SQLite reads "#" as the start of a fragment and decodes "%XX" itself: the file it
            # opened would not be the one culm checks, locks and calls read-only.
            raise ValueError(f"the file name {database!r} of a SQLite URI (uri=true) holds {' and '.join(odd)}, which "
                             "SQLite reads its own way (# starts a fragment, % an escape): rename the file, or "
                             "name it without uri=true")
        if database.startswith("//"):  # file://HOST/path: the host is empty or localhost
            database = "/" + database[2:].partition("/")[2]
    database = unquote(database)
    memory = database in ("", ":memory:") or query.get("mode") == "memory"
    read_only = query.get("mode") == "ro" or query.get("immutable", "").lower() in _TRUE
    return SqliteUrl(None if memory else database, query, read_only)


def _check_timeout(text: str) -> None:
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"timeout={text} is not a number of seconds") from None
    if not 0 <= seconds <= MAX_TIMEOUT:  # (False for nan too)
        raise ValueError(f"timeout={text} is not a number of seconds from 0 to {MAX_TIMEOUT} "
                         "(the busy timeout SQLite waits for a lock)")
