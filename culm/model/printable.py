"""Text written where a person reads it (a terminal, a log file), made unable to steer it.

Names, failure texts and log lines come from trees and components. Raw, an escape sequence among
them clears a terminal, rewrites its title or prints a lying link, ``\\r`` and cursor moves hide what
came before, a bidirectional override shows the rest reversed, and a newline in a log message
starts a line that looks like the log's own. :func:`inert` writes every such character as its
``\\uXXXX`` escape: C0 controls other than tab and newline, DEL, C1 controls (``\\x9b`` starts a
sequence as ESC ``[`` does) and the Unicode bidirectional controls. JSON keeps its meaning through
it: JSON escapes C0 controls itself, and ``\\u009b`` inside a JSON string is the character it
stands for.
"""

from __future__ import annotations

import re

UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


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
