"""What every command shares: exit codes, errors, opening a runtime, JSON and human output.

Exit codes (documented in ``docs/cli.md`` and the API contract): 0 done; 1 the pipeline failed or
was revoked (``run``, ``status``, ``watch``); 2 bad usage or invalid input; 3 not found; 4 the
database cannot be reached or used; 5 the engine refused the command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from culm._json import viewable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DATABASE = 4
EXIT_REFUSED = 5

DEFAULT_DB = "sqlite:///culm.db"


class CliError(Exception):
    """A user-facing failure: its message is printed as ``error: ...`` and ``code`` is the exit code."""

    code = EXIT_USAGE

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(CliError):
    """An input the command cannot use (exit code 2)."""

    code = EXIT_USAGE


class NotFound(CliError):
    """An id that names no pipeline or node (exit code 3)."""

    code = EXIT_NOT_FOUND


class DatabaseError(CliError):
    """The database cannot be reached or used (exit code 4)."""

    code = EXIT_DATABASE


class Refused(CliError):
    """The engine refused the command; the message says why (exit code 5)."""

    code = EXIT_REFUSED


# -- options ------------------------------------------------------------------------------------
def add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", type=a_text("a database URL"),
                   help="database URL (default: $CULM_DATABASE_URL, then sqlite:///culm.db)")


def add_broker(p: argparse.ArgumentParser, prefix: bool = True) -> None:
    p.add_argument("--broker", metavar="URL", type=a_text("a broker URL"),
                   help="Celery broker of a cluster (default: $CULM_BROKER_URL); work then goes to "
                        "`culm worker` processes")
    if prefix:
        p.add_argument("--prefix", default=os.environ.get("CULM_QUEUE_PREFIX", "culm"), metavar="P",
                       type=a_text("a queue name prefix"),
                       help="the cluster's queue name prefix, as its workers were given (default: "
                            "$CULM_QUEUE_PREFIX, then culm)")


def add_imports(p: argparse.ArgumentParser,
                help: str = "module defining components; repeat or comma-separate (also $CULM_IMPORTS)") -> None:
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   type=a_text("a module name or .py file"), help=help)


def a_text(what: str) -> Callable[[str], str]:
    """An argparse type: a value that is not empty nor only blanks (``--db ''`` would quietly mean
    the default database, ``--version ''`` the current version: a usage mistake, exit 2)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}")
        return text

    return parse


def an_id(text: str) -> str:
    """An argparse type: a pipeline, node or token id (an empty one, ``culm status ''``, is a usage
    mistake, exit 2, not a command the engine refuses)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected an id, not {text!r}")
    return text


def whole_number(least: int, what: str, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least`` (at most ``most``), described as
    ``what`` when refused."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected {what}, not {value}")
        return value

    return parse


a_count = whole_number(0, "a whole number, 0 or more")  # an iteration count


def seconds(text: str) -> float:
    """An argparse type: a duration, 0 or more (``-1`` or ``nan`` would end a wait at once or never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, not {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a duration above 0 (a pause between two looks)."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number of seconds above 0, not 0")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, not {port}")
    return port


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")


# The backends culm keeps its data in (memory: one process's experiments).
BACKENDS = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "memory")


def db_url(args: argparse.Namespace) -> str:
    """``--db``, else ``$CULM_DATABASE_URL``, else ``sqlite:///culm.db``; a URL of another kind of
    database (``postgress://``) is a :class:`DatabaseError`, not the storage's traceback."""
    url = str(getattr(args, "db", None) or os.environ.get("CULM_DATABASE_URL") or DEFAULT_DB)
    scheme = url.partition("://")[0] if "://" in url else ""
    backend = scheme.partition("+")[0].lower()
    if scheme and backend not in BACKENDS:
        raise DatabaseError(f"cannot use the database URL {_safe(url)!r}: culm keeps its data in SQLite, "
                            f"PostgreSQL or MySQL/MariaDB, not {backend!r} (examples: sqlite:///culm.db, "
                            "postgresql://user@host/db, mysql://user@host/db)")
    if not scheme:  # `--db culm.db`: a path where a URL belongs
        raise DatabaseError(f"cannot use the database URL {url!r}: it is a path, not a URL; for that SQLite "
                            f"file write sqlite:///{url}")
    return url


def broker_url(args: argparse.Namespace, check: bool = True) -> str | None:
    """``--broker``, else ``$CULM_BROKER_URL``, else None; a URL of no broker Celery knows
    (``nope://``) is a :class:`UsageError`, not kombu's ``KeyError`` traceback (``check``: the
    command uses the broker; a read only names it, from the environment, and does not look)."""
    url = getattr(args, "broker", None) or os.environ.get("CULM_BROKER_URL") or None
    if url and check:
        _check_broker(url)
    return url


# Broker schemes whose kombu transport needs only this client library: known without importing
# kombu (a third of a second with Celery; a control command the engine refuses never needs it).
_PLAIN_BROKERS = {"redis": "redis", "rediss": "redis", "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp"}


def _check_broker(url: str) -> None:
    client = _PLAIN_BROKERS.get(url.partition("://")[0].lower()) if "://" in url else None
    if client is not None and (client in sys.modules or importlib.util.find_spec(client) is not None):
        return
    try:
        from kombu import Connection
        from kombu.transport import resolve_transport
    except ImportError:  # no Celery: the command that needs one says so
        return
    try:
        resolve_transport(Connection(url).transport_cls)
    except (KeyError, ImportError, ValueError) as exc:
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise UsageError(f"cannot use the broker URL {_safe(url)!r}: {reason} (examples: "
                         "redis://host:6379/0, amqp://user:password@host:5672//)") from None


# -- the runtime --------------------------------------------------------------------------------
def _sqlite_file(url: str, read_only: bool = True) -> Path | None:
    """The file a ``sqlite`` URL names (None: another database, or in memory); a query string the
    URL cannot have, or a read-only one (``mode=ro``) for a command that writes, is a DatabaseError."""
    if not url.startswith("sqlite"):
        return None
    from culm.storage import parse_sqlite_url

    try:
        parsed = parse_sqlite_url(url)
    except ValueError as exc:
        raise DatabaseError(f"cannot use the database URL {url!r}: {exc}") from None
    if parsed.read_only and not read_only:
        raise DatabaseError(f"cannot use the database URL {url!r}: it opens the file read-only (mode=ro or "
                            "immutable), and this command writes to it")
    return None if parsed.path is None else Path(parsed.path)


def check_sqlite(url: str, read_only: bool, shared: bool = False) -> None:
    """A SQLite file ``url`` names can be used: it exists (``read_only``: a read never creates one;
    :class:`NotFound` when it does not) or can be created or written, and it is not another
    program's database (``shared``: the user said culm's tables may join those it holds); else
    :class:`DatabaseError`. Other databases are not checked here."""
    path = _sqlite_file(url, read_only)
    if path is None:
        return
    absolute = Path("/") / path
    meant = not path.is_absolute() and (absolute.exists() if read_only else absolute.parent.is_dir())
    hint = (f" (sqlite:///{path} is relative to the working directory; for {absolute}, write four "
            f"slashes: sqlite:///{absolute})") if meant else ""
    if path.is_dir():
        raise DatabaseError(f"cannot use the database {path}: it is a folder, not a SQLite file (name a file "
                            f"in it: sqlite:///{path / 'culm.db'})")
    if read_only and not path.exists():
        # The contract's "not found" (exit 3): no file means no pipeline, node or token of any id
        # there; the database itself is not at fault (exit 4 is for one that cannot be used).
        raise NotFound(f"no database at {path}: nothing has run there yet (pass --db or set "
                            f"$CULM_DATABASE_URL to the database your pipelines ran on){hint}")
    if not path.parent.is_dir():
        raise DatabaseError(f"cannot create the database {path}: the directory {path.parent} does not exist{hint}")
    if not read_only and path.exists() and not os.access(path, os.W_OK):
        raise DatabaseError(f"cannot write the database {path}: the file is read-only")
    if not read_only and not path.exists() and not os.access(path.parent, os.W_OK):
        raise DatabaseError(f"cannot create the database {path}: the directory {path.parent} is read-only")
    if not shared:
        _refuse_foreign(path, url)


# At most this many of a foreign file's tables are named in the message.
FOREIGN_NAMED = 5


def _refuse_foreign(path: Path, url: str) -> None:
    """Refuse a SQLite file that holds tables and none of culm's: ``--db`` names the wrong file
    (another program's database), and opening it would add culm's tables to it (the embedded
    runtime creates its schema in a SQLite file) or list nothing there as if all were well."""
    others = foreign_tables(path)
    if not others:
        return
    named = ", ".join(others[:FOREIGN_NAMED]) + (f" and {len(others) - FOREIGN_NAMED} more"
                                                  if len(others) > FOREIGN_NAMED else "")
    raise DatabaseError(f"the database file {path} holds no culm tables: it holds {len(others)} other "
                        f"table(s) ({named}), so it is not culm's database; pass --db the database your "
                        f"pipelines run on, or, to keep culm's tables in this file beside its own, run "
                        f"`culm db upgrade --db {_safe(url)} --shared-file` first")


def foreign_tables(path: Path) -> list[str]:
    """The tables of the SQLite file at ``path`` when it holds some and none of culm's (empty
    otherwise: no file, an empty one, culm's, or one SQLite cannot read, left to the store's
    opening to judge). Read with the standard library, read-only, without SQLAlchemy."""
    import sqlite3

    try:
        if not path.is_file() or path.stat().st_size == 0:
            return []
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
        finally:
            conn.close()
    except (OSError, ValueError, sqlite3.Error):
        return []
    names = [str(r[0]) for r in rows if not str(r[0]).lower().startswith("sqlite_")]
    return [] if any(n.lower().startswith("culm_") for n in names) else names


def database_error(exc: BaseException, url: str) -> DatabaseError:
    """One line that says what is wrong with the database at ``url``."""
    from culm.errors import DatabaseSettingsError, SchemaOutdatedError

    if isinstance(exc, (SchemaOutdatedError, DatabaseSettingsError)):
        return DatabaseError(str(exc))
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = detail[0] if detail else type(exc).__name__
    name = type(exc).__name__
    if name in ("NoSuchModuleError", "ArgumentError"):
        return DatabaseError(f"cannot use the database URL {url!r}: {first} (examples: sqlite:///culm.db, "
                             "postgresql://user@host/db, mysql://user@host/db)")
    if isinstance(exc, ModuleNotFoundError):
        return DatabaseError(f"cannot use the database URL {url!r}: the driver {exc.name!r} is not installed "
                             "(pip install 'culm[postgres]' or 'culm[mysql]')")
    return DatabaseError(f"cannot use the database {_safe(url)}: {first}")


def _safe(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def db_errors(files: bool = False) -> tuple[type[BaseException], ...]:
    """The exceptions that mean the database cannot be used (``files``: opening its file too)."""
    from sqlalchemy.exc import SQLAlchemyError

    from culm.errors import DatabaseSettingsError, SchemaOutdatedError

    found: tuple[type[BaseException], ...] = (SQLAlchemyError, SchemaOutdatedError, DatabaseSettingsError,
                                              ModuleNotFoundError)
    return (*found, OSError) if files else found


@contextlib.contextmanager
def open_runtime(args: argparse.Namespace, *, read_only: bool = True, run: bool = False,
                 submits: bool = False) -> Iterator[Any]:
    """A runtime on the command's database.

    Args:
        args: the parsed options (``--db``, ``--broker``).
        read_only: the command only reads: a missing SQLite file is an error, never created.
        run: an embedded runtime should run work (worker threads), not only submit and read; on
            a server database it does not when a live ``culm worker`` serves it (its relay runs
            the work: see :func:`workers_serve`), so two kinds of runner never share one database.
        submits: the command makes work (a control call, even with ``--no-follow``): with a broker,
            the runtime publishes it to the workers. Without, the work is only a committed row,
            which a cluster's workers find only when their relay looks for forgotten rows
            (``CULM_RELAY_GRACE``, 15 s, later).
    """
    import culm
    from culm.errors import PluginImportError, SettingsError

    url = db_url(args)
    check_sqlite(url, read_only)
    uses_broker = run or submits or not read_only
    broker = broker_url(args, check=uses_broker)
    try:
        if broker and uses_broker:
            rt = culm.Runtime(url, broker=broker, prefix=getattr(args, "prefix", "culm"))
        else:
            runs = run and not (server_database(url) and workers_serve(url))
            rt = culm.Runtime(url, workers=None if runs else 0)
    except db_errors(files=True) as exc:
        raise database_error(exc, url) from exc
    except (SettingsError, PluginImportError) as exc:
        raise UsageError(str(exc)) from None  # a CULM_* variable or a module of $CULM_IMPORTS
    try:
        yield rt
    except db_errors() as exc:
        raise database_error(exc, url) from exc
    except DatabaseError as exc:  # a call's refusal (check): one line naming the database, as at opening
        # (a driver's text may span lines: psycopg adds "\n\tIs the server running on that host...")
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise DatabaseError(text if _safe(url) in text else f"cannot use the database {_safe(url)}: {text}") from exc
    finally:
        rt.close()


def server_database(url: str) -> bool:
    """Whether ``url`` names a server database (PostgreSQL, MySQL/MariaDB): not a SQLite file, nor memory."""
    return not url.startswith(("sqlite", "memory"))


def workers_serve(url: str) -> bool:
    """Whether a live ``culm worker`` is registered on the server database ``url`` (it beat within
    ``CULM_WORKER_DEAD_AFTER``, 3 s, as ``culm workers`` counts it alive): its relay finds the work
    a command records there without a broker, ``CULM_RELAY_GRACE`` later."""
    from culm.storage import SqlStore, worker_dead_after

    dead_after = worker_dead_after()
    try:
        store = SqlStore(url)
        try:
            # An embedded runner (a `culm run` going on, a `culm serve`) has no relay: not a worker.
            return any(w.silent_for <= dead_after and not w.embedded for w in store.worker_registry().workers())
        finally:
            store.dispose()
    except db_errors() as exc:
        raise database_error(exc, url) from exc


def workers_run(args: argparse.Namespace, rt: Any) -> bool:
    """Whether a cluster's ``culm worker``s run the work of the pipeline ``rt`` reaches: always
    with a broker; on a server database without, when this process runs none (one serves it)."""
    return bool(broker_url(args, check=False)) or (rt.dispatcher is None and server_database(db_url(args)))


def check(res: Any, what: str = "", bad_input: bool = False) -> Any:
    """The data of an API result, or the matching :class:`CliError` for a refusal.

    ``bad_input``: a refusal means the command's own options were wrong (exit 2, not 5).
    """
    if res.result:
        return res.data
    from sqlalchemy.exc import SQLAlchemyError

    from culm._retry import is_outage
    from culm.errors import DatabaseSettingsError, NotFoundError, SchemaOutdatedError

    message = f"{what}: {res.message}" if what else res.message
    unusable = (SQLAlchemyError, SchemaOutdatedError, DatabaseSettingsError)
    if isinstance(res.exc, unusable) or (res.exc is not None and is_outage(res.exc)):
        raise DatabaseError(message)
    if isinstance(res.exc, NotFoundError):
        raise NotFound(message)
    raise UsageError(message) if bad_input else Refused(message)


# -- output -------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def shown(value: Any) -> str:
    """``repr(value)``, or that of :func:`culm._json.viewable` when Python cannot write it (an int
    of more than 4,300 digits)."""
    try:
        return repr(value)
    except ValueError:
        return repr(viewable(value))


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (datetimes as ISO 8601 text)."""
    try:
        text = json.dumps(value, indent=2, default=_plain, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):  # a NaN, a tuple key, a value holding itself...
        text = json.dumps(viewable(value), indent=2, default=_plain, ensure_ascii=False, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def print_table(table: Any) -> None:
    """A rich table on stdout without the spaces rich pads its last column with (a line ending in
    blanks: `culm list | cat -A`, a diff of two listings)."""
    from culm.cli.terminal import unescaped_stdout

    out = console()
    with out.capture() as captured:
        out.print(table)
    unescaped_stdout().write("".join(line.rstrip(" ") + "\n" for line in captured.get().splitlines()))


def console() -> Any:
    """The rich console for human output (colour only on a terminal; text that could steer the
    terminal escaped: :mod:`culm.cli.terminal`)."""
    from culm.cli.terminal import on_terminal, safe_console

    # Piped output (scripts, logs, tests) is not cut to 80 columns.
    return safe_console(highlight=False, width=None if on_terminal() else 200)


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_json_object(raw: str | None, flag: str) -> dict | None:
    """A ``--data``-style option: a JSON object, or ``@FILE`` holding one (None when not given)."""
    if raw is None:
        return None
    if raw.startswith("@"):
        if not raw[1:].strip():
            raise UsageError(f"{flag} {raw!r}: expected a file name after @ (@FILE)")
        name = raw[1:]
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {name}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"{flag}: cannot read {name}: {not_utf8(exc)}") from None
        if not text.strip():
            raise UsageError(f"{flag}: {name}: the file is empty{': it holds only whitespace' if text else ''} "
                             "(expected a JSON object)")
        raw = text
    return json_object(raw, flag)


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where a file is not UTF-8 text: ``not UTF-8 text (byte 0xff at offset 0)``."""
    return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


# Python refuses to read an int of more digits than this (a defence of its own: converting one
# costs time quadratic in its length); JSON text holding one is refused with this message.
LONG_NUMBER = f"a number in it has more than {sys.get_int_max_str_digits():,} digits (more than Python reads)"


def json_object(text: str, where: str, what: str = "") -> dict:
    """``text`` parsed as a JSON object; :class:`UsageError` naming ``where`` otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where.rstrip(':')}: invalid JSON: {exc}") from exc
    except RecursionError:
        raise UsageError(f"{where.rstrip(':')}: arrays or objects nested too deeply to be read "
                         "(culm keeps values at most 100 levels deep)") from None
    except ValueError:  # an int of more digits than Python reads
        raise UsageError(f"{where.rstrip(':')}: {LONG_NUMBER}") from None
    if not isinstance(data, dict):
        kind = f"an object ({what})" if what else "a JSON object"
        raise UsageError(f"{where.rstrip(':')} must be {kind}, got {type(data).__name__}")
    from culm.model.limits import duplicate_key

    twice = duplicate_key(text)
    if twice is not None:
        raise UsageError(f"{where.rstrip(':')}: key {twice!r} appears twice in one object (JSON would keep "
                         "only the last; ids and keys must be unique)")
    return data


def state_entry(rt: Any, target: str) -> dict:
    """The state entry of a pipeline or node id (with its direct children).

    Raises:
        NotFound: no pipeline or node with this id has run.
    """
    from culm import api

    states = check(api.get_children_states(rt, target))
    if not states:
        raise NotFound(f"no pipeline or node with id {target} has run in this database")
    entry: dict = states[target]
    return entry
