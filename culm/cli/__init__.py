"""The ``culm`` command line: run, validate, list, inspect and control pipelines; workers; migrations.

Every command goes through the public API (:mod:`culm.api`, :class:`culm.Runtime`). Each command
group is a module of this package with a ``register(subparsers)`` function; :data:`GROUPS` lists
them in the order ``culm --help`` shows them. A new group (the service's ``serve`` and ``token``)
adds its module there.

Exit codes: 0 done; 1 the pipeline failed or was revoked (``run``, ``status``, ``watch``); 2 bad
usage or invalid input (``validate`` with problems); 3 not found; 4 the database cannot be reached
or used; 5 the engine refused the command. A user's mistake is one ``error:`` line, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from culm.cli.common import EXIT_USAGE, CliError, database_error, db_errors, db_url
from culm.cli.terminal import SafeStream

# Command groups, each a module of this package with register(subparsers).
GROUPS: tuple[str, ...] = ("run", "inspect", "control", "admin", "serve")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("culm")
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: the installed version, read (importlib.metadata, tens of milliseconds) only
    when asked, not on every command."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.exit(message=f"culm {_version()}\n")


# Shown under a command's `--help` (a new user's first question is what a call looks like).
EXAMPLES: dict[str, str] = {
    "run": "culm run examples/quickstart.py\n"
           "culm run tree.json --import myproject.components --set who=world --data '{\"order\": 7}'",
    "status": "culm status order_1234\nculm status order_1234 --outputs --json",
    "list": "culm list --state RUNNING,FAILED --since 2h",
    "logs": "culm logs charge_card --follow",
    "watch": "culm watch order_1234",
    "retry": "culm retry charge_card\n"
             "culm retry charge_card --data '{\"amount\": 80}' --import examples/operator_session.py",
    "callback": "culm callback approve_node --data '{\"approve\": true, \"approver\": \"me\"}'",
    "set-context": "culm set-context order_1234 who=world retries=3",
    "serve": "culm serve --no-auth                      # this machine only, no token\n"
             "culm token create --role operator && culm serve --host 0.0.0.0",
    "worker": "culm worker --db postgresql://culm@db/culm --broker redis://mq:6379/0 --import myproject.components",
}


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Each command's ``--help`` starts with the line ``culm --help`` gives it (argparse shows only
    the usage) and ends with examples where :data:`EXAMPLES` has some."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        if name in EXAMPLES:
            kwargs.setdefault("epilog", "examples:\n" + "".join(f"  {line}\n" for line in EXAMPLES[name].splitlines()))
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return super().add_parser(name, **kwargs)  # type: ignore[no-any-return]


class _Parser(argparse.ArgumentParser):
    """argparse's parser, which also suggests the nearest choice for a mistyped one (``culm stauts``).

    Flags are never abbreviated (every subcommand's parser is one of these): a typo such as
    ``--stat`` must be an error, not silently taken for ``--status``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if found:
            choices = re.findall(r"'([^']*)'", found[2])
            close = difflib.get_close_matches(found[1], choices, n=1)
            if len(choices) > 8:  # the 28 commands are `culm --help`'s to list, not one error line's
                message = f"{message[:found.start()]}invalid choice: {found[1]!r}" + (
                    f" (see `{self.prog} --help` for the choices)" if not close else "")
            if close:
                message = f"{message}; did you mean {close[0]!r}?"
        super().error(message)


def _chosen_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub)command's own parser that ``argv`` names: ``culm run X --bad`` -> the parser of ``run``."""
    current = parser
    for token in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if token in subs[0].choices:
            current = subs[0].choices[token]
    return current


def _nearest_flag(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """``"; did you mean '--limit'?"`` for the first unknown ``--flag`` close to one of ``parser``'s."""
    flags = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    for word in extra:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.partition("=")[0], flags, n=1)
            if close:
                return f"; did you mean {close[0]!r}?"
    return ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``culm`` command."""
    parser = _Parser(
        prog="culm", description="culm workflow engine command line",
        epilog="exit codes: 0 done, 1 pipeline failed or revoked, 2 bad usage or input, 3 not found, "
               "4 database unreachable or unusable, 5 refused by the engine",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        importlib.import_module(f"culm.cli.{name}").register(sub)
    return parser


class _OneLineFormatter(logging.Formatter):
    """Engine log records as one line each; a failing component's traceback is shown from ``ex_data``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname} {record.name}: {record.getMessage()}"


# The database drivers' own loggers: with no handler, Python's last-resort handler printed their
# records with a traceback ("Exception during reset or similar" from SQLAlchemy's pool, psycopg's
# "error ignored terminating ...") when the server died in the middle of a command, before the
# command's own ``error:`` line (exit 4).
_ONE_LINE_LOGGERS = ("culm", "sqlalchemy", "psycopg", "pymysql", "MySQLdb")


@contextlib.contextmanager
def _engine_logs_one_line() -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    loggers = [logging.getLogger(name) for name in _ONE_LINE_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _quiet_closed_pipe() -> None:
    """``culm list | head``: the reader left; send what remains nowhere instead of failing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``culm`` command; returns the exit code."""
    with _terminal_safe():
        return _main(argv)


@contextlib.contextmanager
def _terminal_safe() -> Iterator[None]:
    """While a command runs, what it prints cannot steer the terminal (:mod:`culm.cli.terminal`):
    names, failure texts and log lines come from trees and components, not from the operator."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(out), SafeStream(err)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # `culm` alone: what it can do, not only its usage
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own parser, with its usage, not the top level's
        words = list(sys.argv[1:] if argv is None else argv)
        chosen = _chosen_parser(parser, words)
        chosen.error(f"unrecognized arguments: {' '.join(extra)}{_nearest_flag(chosen, extra)}")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if getattr(args, "own_logging", False):
            return func(args)
        with _engine_logs_one_line():
            return func(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        _quiet_closed_pipe()
        return 0
    except db_errors() as exc:
        error = database_error(exc, db_url(args))
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["GROUPS", "EXIT_USAGE", "build_parser", "main"]
