"""Text written where a person reads it (a terminal, a log file), made unable to steer it.

Names, failure texts and log lines come from trees and components. Raw, an escape sequence among
them clears a terminal, rewrites its title or prints a lying link, ``\\r`` and cursor moves hide what
came before, a bidirectional override shows the rest reversed, and a newline in a log message
starts a line that looks like the log's own. :func:`inert` writes every such character as its
``\\uXXXX`` escape: C0 controls other than tab and newline, DEL, C1 controls (``\\x9b`` starts a
sequence as ESC ``[`` does), the Unicode bidirectional controls, and surrogates (half of a UTF-16
pair, which a JSON text may hold as ``\\ud800``: no stream encodes one, and ``culm validate`` of
a tree with such an id died with a traceback, found probing session 16). JSON keeps its meaning through
it: JSON escapes C0 controls itself, and ``\\u009b`` inside a JSON string is the character it
stands for.
"""

from __future__ import annotations

import logging
import re

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def inert(text: str) -> str:
    """``text`` with every character that could steer a terminal written as its escape."""
    return UNSAFE.sub(_escaped, text) if UNSAFE.search(text) else text


def log_line(text: str) -> str:
    """:func:`inert` of ``text`` for one record of a process log: each line after the first is
    indented, so none reads as a record of its own."""
    text = inert(text)
    return text.replace("\n", "\n    ") if "\n" in text else text


def _indented(text: str) -> str:
    return "    " + inert(text).replace("\n", "\n    ")


class InertRecords(logging.Filter):
    """The filter of culm's own loggers (:func:`engine_logger`): what a record carries from trees
    and user code cannot forge a log line or steer the terminal that shows the log.

    The message becomes :func:`log_line` of itself (its arguments merged in first: a node's name
    or a component's failure text is one of them); the traceback of ``exc_info`` and a
    ``stack_info`` are escaped and indented as a whole, so that an exception's message that holds
    ``"\\n2026-12-06 ... ERROR culm.engine: ..."`` stays inside the record that quotes it. Every
    standard formatter shows the record so (it writes ``exc_text`` when set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "culm_inert", False):  # passed a second logger of culm's (one record)
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: logging itself reports it when it formats
            return True
        record.msg, record.args = log_line(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _indented(_formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = _indented(record.stack_info)
        record.culm_inert = True
        return True


_formatter = logging.Formatter()
_filter = InertRecords()


def engine_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the :class:`InertRecords` filter: every logger of culm's
    own is made by this."""
    logger = logging.getLogger(name)
    if _filter not in logger.filters:
        logger.addFilter(_filter)
    return logger
