"""What the store can hold, as rules the validator and the API check before anything is stored.

The same limits hold on every backend, so a tree or a payload that one database would take and
another refuse (with a driver error from deep inside a run) is refused up front, naming the node
id and field at fault. The column widths are those of :mod:`culm.storage.schema`, which takes them
from here.
"""

from __future__ import annotations

import json
import os
import unicodedata
from typing import Any

from culm import _json
from culm.errors import InvalidOperationError

ID_LENGTH = 64  # pipeline and node ids (bamboo's are 33 characters)
KEY_LENGTH = 255  # context keys, queue names, lazy variable codes
# Values (variables, pipeline data, callback and retry payloads) nested deeper than this are
# refused: rendering, copying and encoding them recurse once per level, and a value thousands of
# levels deep would exhaust the interpreter's stack in the middle of a run.
MAX_VALUE_DEPTH = 100
# Bytes one stored payload (a node's inputs or its outputs, a context value, callback data, pipeline
# data) may take once encoded, counting the escape each backslash and quote gets in a MySQL
# statement. MariaDB refuses a statement over its max_allowed_packet (16 MiB by default) by dropping
# the connection, which looks like any network fault: the engine would try the write again for
# ever, its node RUNNING. A row holds at most two payloads (inputs and outputs): 2 x 7 MB fit.
MAX_PAYLOAD_BYTES = 7_000_000


# What is wrong with the environment variables read below, for the validator to report (a
# ValueError at import would be a traceback out of any `import culm`).
ENVIRONMENT_PROBLEMS: list[str] = []


def _env_count(name: str, default: int) -> int:
    """A whole number >= 1 from the environment variable ``name``, else ``default`` (and a note
    in ENVIRONMENT_PROBLEMS when it is set to anything else)."""
    text = os.environ.get(name, "").strip().replace("_", "").replace(",", "")
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        ENVIRONMENT_PROBLEMS.append(f"${name} must be a whole number >= 1, got {os.environ[name]!r}")
        return default
    return int(text)


# Nodes (events, activities, gateways, subprocesses, at every depth) and flows one tree may have;
# read at every validation, so a program may set them, and $CULM_MAX_TREE_NODES and
# $CULM_MAX_TREE_FLOWS set them for a process (a `culm serve`, a worker). Memory grows with the
# count: about 2.5 KB a node to validate and store a tree, about 4.5 KB a node while it runs
# (docs/data-and-variables.md). bamboo's own reference is a 100,000-node tree.
MAX_TREE_NODES = _env_count("CULM_MAX_TREE_NODES", 100_000)
MAX_TREE_FLOWS = _env_count("CULM_MAX_TREE_FLOWS", 200_000)
# Variables (data inputs) one tree may have, every subprocess's included; $CULM_MAX_TREE_VARIABLES
# sets it for a process. Found probing (session 23): nodes and flows were bounded, variables not; a
# tree of 1,000,000 plain variables (50 MB of JSON, stored compressed under MAX_PAYLOAD_BYTES) held
# SQLite's write lock for 134 s in run_pipeline and grew the process to 2 GB.
MAX_TREE_VARIABLES = _env_count("CULM_MAX_TREE_VARIABLES", 200_000)
# Iterations one node loop (``loop_config.loop_times``) may ask for, checked by the validator and by
# update_node_loop_times; $CULM_MAX_LOOP_TIMES sets it for a process. Each iteration stores a
# history row and rewrites the loop's output list (one entry per iteration so far), so a loop of
# 10**12 would run for ever and its list would outgrow MAX_PAYLOAD_BYTES long before; the engine's
# rerun limit (Settings.rerun_limit, bamboo's 100) also fails the node after that many re-entries.
MAX_LOOP_TIMES = _env_count("CULM_MAX_LOOP_TIMES", 10_000)

# Stored bytes of payloads one root pipeline may hold in all: its nodes' (and its subprocesses'
# nodes') inputs and outputs, inputs set by an operator, and every history kept of them. Each node's
# payload is bounded, and so is the number of nodes, but not their product: 100 parallel activities
# rendering four ``${'x' * 999999}`` each stored 401 MB. A write of a payload over
# STORED_BYTES_CHECK_AT bytes reads what the pipeline holds first (one statement) and is refused when
# it would go past the budget; smaller writes are never checked, so a pipeline may go past it by up
# to that much per write. Both read at every write; $CULM_MAX_PIPELINE_STORED_BYTES sets the budget
# for a process (docs/data-and-variables.md).
MAX_PIPELINE_STORED_BYTES = _env_count("CULM_MAX_PIPELINE_STORED_BYTES", 256_000_000)
STORED_BYTES_CHECK_AT = 65_536
# Stored bytes of payloads all root pipelines may hold together, checked with each pipeline's
# budget (the same writes, over STORED_BYTES_CHECK_AT); 0: no bound. A pipeline's budget bounds what
# retries of its nodes keep, not what retries over many pipelines keep. Off unless set
# ($CULM_MAX_STORED_BYTES): what a store may fill depends on its disk. Also checked at each new run.
# The sum of every pipeline's counter rows is read again only near the bound or once a second
# (culm.storage.budget.StoreTotal; docs/data-and-variables.md).
MAX_STORED_BYTES = _env_count("CULM_MAX_STORED_BYTES", 0)


def loop_times_problem(value: Any, *, least: int) -> str | None:
    """Why ``value`` is no iteration count of a node loop (a whole number from ``least`` to
    :data:`MAX_LOOP_TIMES`, read now), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_LOOP_TIMES:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        return (f"must be a whole number from {least} to {MAX_LOOP_TIMES:,} "
                f"(culm.model.limits.MAX_LOOP_TIMES, $CULM_MAX_LOOP_TIMES), got {shown}")
    return None


def text_problem(text: str) -> str | None:
    """What makes ``text`` unfit for a text column on some backend, or None.

    PostgreSQL refuses NUL characters, and no driver encodes a lone surrogate (half of a UTF-16
    pair, e.g. from bytes decoded with ``surrogateescape``) to UTF-8. Both are refused on every
    backend, so a run behaves the same wherever it is stored.
    """
    if "\x00" in text:
        return "a NUL character"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate"
    return None


def lookup_problem(text: str, what: str) -> str | None:
    """Why ``text``, an argument ``what`` that a store looks up (an id, a version, a name to
    search for), is refused before the lookup, or None.

    Found probing (session 23): one holding a NUL or a lone surrogate went to the driver as it
    was: PostgreSQL answered a NUL with a ``DataError`` (a 500 and a traceback in the server's log),
    SQLite and the drivers of PostgreSQL and MariaDB a surrogate with a ``UnicodeEncodeError``, the
    others "does not exist". Nothing stored holds one (:func:`text_problem` refuses it on the way in).
    """
    problem = text_problem(text)
    if problem is None:
        return None
    shown = ascii(text) if len(text) <= 80 else f"{ascii(text[:80])}..."
    return f"{what} holds {problem}, which no stored id or name holds: {shown} is not looked up"


# Bytes of a TEXT column on MySQL and MariaDB (PostgreSQL and SQLite would take more; the limit
# holds on every backend): a log line, a context variable's references, a run's options.
TEXT_BYTES = 65_535
# A longer log line is kept cut, with a note of what was cut.
MAX_LOG_LINE_BYTES = TEXT_BYTES


def storable_text(text: str) -> str:
    """``text`` with what no backend can hold (see :func:`text_problem`) written as its Python
    escape: a NUL as ``\\x00``, a lone surrogate as ``\\udcff``; other text is returned as it is."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clip_log_line(line: str) -> str:
    """``line`` as a log line is stored: what no backend can hold escaped (:func:`storable_text`;
    a component logging text decoded with ``surrogateescape`` keeps its node's outcome), and cut
    to its start and a note of how much was cut when its UTF-8 is over MAX_LOG_LINE_BYTES."""
    line = storable_text(line)
    if len(line) <= MAX_LOG_LINE_BYTES // 4:  # at most 4 bytes a character: no need to encode
        return line
    data = line.encode("utf-8")
    if len(data) <= MAX_LOG_LINE_BYTES:
        return line
    note = f" [... {len(line):,} characters in all, cut to fit a log line]"
    kept = data[: MAX_LOG_LINE_BYTES - len(note)].decode("utf-8", "ignore")  # a character cut in two goes
    return kept + note


# What one component call may log (``self.logger``): past either bound the call's further lines are
# counted, not kept, and its last kept line says how many went. Every line is held in the worker's
# memory until the call returns and stored inside the engine's write transaction: 2,000,000 lines of
# one execute took 1.1 GB and held the transaction for 19 s. Read at every call.
MAX_CALL_LOG_LINES = 10_000
MAX_CALL_LOG_CHARS = 4_000_000
# What one read of a run's log lines returns (get_node_logs, get_node_log_page, the REST endpoint,
# `culm logs`): a poller logging for days under one version holds millions of lines, and reading
# them all took memory without bound. Lines are read LOG_READ_CHUNK at a time until either bound:
# twice what one call may keep (MAX_CALL_LOG_LINES + its note, MAX_CALL_LOG_CHARS), so one call's
# lines always fit in one read.
MAX_LOG_PAGE_LINES = 20_000
MAX_LOG_PAGE_CHARS = 8_000_000
LOG_READ_CHUNK = 256
# Stored characters of inputs and outputs one read of a node's histories returns (get_node_histories,
# the REST node and histories endpoints, `culm history`): the newest runs' in full while they fit
# (the newest's always: at most 2 x MAX_PAYLOAD_BYTES), the older ones without them. A history is
# kept at every retry and loop, each a copy of the node's inputs (up to 4,000,000 characters rendered
# from a template of a few bytes) and outputs: a viewer opening a node retried a thousand times read
# gigabytes into the service's memory. Read at every call.
MAX_HISTORY_READ_CHARS = 16_000_000
# Characters of the ex_data a failed call records (its traceback, or the text a component sets):
# the first and the last half are kept. An exception whose message was 50 MB failed the node with
# an engine error, the component's own message lost. Read at every call.
MAX_EX_DATA_CHARS = 100_000


def clip_ex_data(text: str) -> str:
    """``text``, or its start and end around a note of the cut, ``MAX_EX_DATA_CHARS`` at most in all
    (so clipping it again changes nothing)."""
    limit = MAX_EX_DATA_CHARS
    if len(text) <= limit:
        return text
    half = max(limit - 256, 0) // 2  # the note takes under 256 characters
    return (f"{text[:half]}\n[... {len(text) - 2 * half:,} of {len(text):,} characters cut: ex_data keeps "
            f"the first and the last {half:,} (culm.model.limits.MAX_EX_DATA_CHARS)]\n{text[-half:]}")


def json_text_over(items: list[str], limit: int = TEXT_BYTES) -> int | None:
    """The length of ``items`` as JSON text when it is over ``limit`` (as a MySQL statement
    escapes it), else None; ``items`` too short in all to be over are not encoded."""
    if sum(map(len, items)) + 4 * len(items) <= limit // 8:  # a char is at most 7 bytes escaped, plus quotes
        return None
    size = payload_size(json.dumps(items, separators=(",", ":")))
    return size if size > limit else None


def payload_size(text: str) -> int:
    """Bytes the encoded payload ``text`` takes in a MySQL statement (an upper estimate: stored
    payloads are ASCII, JSON escapes the rest; the driver escapes backslashes and quotes)."""
    return len(text) + text.count("\\") + text.count('"') + text.count("'")


def pickled_payload_size(blob_bytes: int) -> int:
    """Bytes a payload pickled to ``blob_bytes`` bytes takes once stored: base64 in a small JSON
    envelope (:mod:`culm.storage.codec`), with room to spare for the envelope's key."""
    return 4 * ((blob_bytes + 2) // 3) + 64


def id_text_problem(ident: str) -> str | None:
    """What keeps ``ident`` from being a pipeline or node id besides its column, or None.

    An id is written into every log line about its node, into URLs and command lines: a newline
    in one forged whole lines of a worker's log, an escape sequence steered the terminal showing
    it, a bidirectional override showed it reversed. Only printable characters (and spaces) are
    taken.
    """
    if not ident.isprintable():
        bad = next(char for char in ident if not char.isprintable())
        return f"holds the character {bad!r}, which cannot be printed (ids take printable characters only)"
    if "/" in ident or ident in (".", ".."):
        return _url_problem(ident)
    return None if ident.isascii() else _lookalike_problem(ident)


def _url_problem(ident: str) -> str | None:
    """Why ``ident`` cannot be one segment of a URL's path, or None.

    Found probing (session 16): a node id holding a ``/`` ran, and failed, but the REST API and
    the console, which address a node as ``/api/v1/nodes/ID``, answered 404 for it, escaped or
    not (servers decode ``%2F`` before routing): nobody there could retry or skip it. ``.`` and
    ``..`` are taken by clients for steps in the path, and never reach the server as they are.
    """
    if "/" in ident:
        return "holds a '/', which the REST API and the console cannot address (a node is /api/v1/nodes/ID): write it without one"
    if ident in (".", ".."):
        return f"is {ident!r}, which URLs take for a step in their path (the REST API and the console could not address it)"
    return None


# Scripts whose letters look alike (Latin a, Cyrillic а, Greek α): an id whose letters come from
# two of them is the classic forgery of another id (Unicode TR 39's "highly restrictive" level).
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "GREEK", "CYRILLIC"})


def _lookalike_problem(ident: str) -> str | None:
    """Why ``ident`` (printable, not ASCII) can look like another id it is not, or None.

    Found probing (session 16): a tree could hold ``approve`` and ``аpprove`` (a Cyrillic а), or
    ``n1`` and ``ｎ1`` (a fullwidth n), or ``é`` written as one character and as ``e`` plus an
    accent: one id to a person's eye, two to the engine. An operator who retried "the" node
    retried whichever their terminal's copy held.
    """
    normal = unicodedata.normalize("NFKC", ident)
    if normal != ident:
        return (f"is not in Unicode's NFKC form ({ascii(ident)}): it looks like {normal!r} ({ascii(normal)}), a different id "
                "(ids take characters in their composed, compatibility-free form; write that)")
    seen: dict[str, str] = {}
    for char in ident:
        if not char.isalpha():
            continue
        script = "LATIN" if char.isascii() else unicodedata.name(char, "").partition(" ")[0]
        if script in _CONFUSABLE_SCRIPTS and seen.setdefault(script, char) == char and len(seen) > 1:
            (first, one), (second, other) = list(seen.items())[:2]
            return (f"mixes {first.title()} and {second.title()} letters ({one!r} and {other!r}), so it can look "
                    "like another id: write each id in one of them")
    return None


def column_problem(text: str, width: int) -> str | None:
    """What keeps ``text`` out of a text column ``width`` characters wide, or None."""
    if len(text) > width:
        return f"is {len(text)} characters long; at most {width} are stored"
    problem = text_problem(text)
    return f"holds {problem}" if problem else None


_CONTAINERS = (dict, list, tuple, set, frozenset)


def too_deep(value: Any, limit: int = MAX_VALUE_DEPTH) -> bool:
    """Whether ``value`` nests dicts, lists, tuples or sets more than ``limit`` levels deep.

    A value that contains itself is not deep for that (pickle stores it as it is). Without
    recursion, one level at a time: a container shared by several parents counts once per level,
    and only a value with containers still below ``limit`` levels is measured exactly
    (:func:`nesting`, which sees cycles). A level at a time costs a quarter of a walk that keeps
    a stack of (container, depth) pairs, for a value of many small lists (root data of 4 MB).
    """
    if not isinstance(value, _CONTAINERS):
        return False
    level: Any = (value,)
    for _ in range(limit):
        below: dict[int, Any] = {}
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, _CONTAINERS):
                    below[id(child)] = child
        if not below:
            return False
        level = below.values()
    return nesting(value) > limit


def nesting(value: Any) -> int:
    """How many levels of containers ``value`` nests (0 for a scalar; cycles do not count)."""
    height: dict[int, int] = {}  # id of a container walked -> levels from it down
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, leaving = stack.pop()
        key = id(item)
        if leaving:
            on_path.discard(key)
            below = [height.get(id(c), 0) for c in _children(item)]
            height[key] = 1 + max(below, default=0)
        elif key not in height and key not in on_path:
            on_path.add(key)
            stack.append((item, True))
            stack.extend((c, False) for c in _children(item))
    return height.get(id(value), 0) if isinstance(value, _CONTAINERS) else 0


def _children(item: Any) -> list[Any]:
    if not isinstance(item, _CONTAINERS):
        return []
    values = item.values() if isinstance(item, dict) else item
    return [c for c in values if isinstance(c, _CONTAINERS)]


def walk_problem(value: Any) -> str | None:
    """Why the store would refuse ``value`` for the values JSON would write out (more than
    :data:`culm._json.MAX_WALK`, each repeat of a shared one counted), or None.

    Finding out walks up to 3.5 million values (~0.25 s of CPU): a caller that can, asks before
    its write transaction, so that the store's own check (the same walk) then finds nothing.
    """
    try:
        _json.keys_collide(value)
    except _json.TooManyValuesError as exc:
        return str(exc)
    return None


def check_payload(value: Any, what: str) -> None:
    """Refuse a payload (pipeline data, callback or retry data, a context value) nested too deeply.

    Raises:
        InvalidOperationError: Naming ``what``.
    """
    if too_deep(value):
        raise InvalidOperationError(f"{what} is nested more than {MAX_VALUE_DEPTH} levels deep")


def check_context_keys(values: Any, what: str) -> None:
    """Refuse a dict of context values whose keys a context key column cannot hold, or whose
    values are nested too deeply (``what``: the argument, for the message)."""
    if not isinstance(values, dict):
        return
    for key, value in values.items():
        if isinstance(key, str) and (problem := column_problem(key, KEY_LENGTH)):
            raise InvalidOperationError(f"{what}: key {key!r} {problem}")
        check_payload(value, f"{what}: value of {key!r}")


def check_context_count(tree_variables: int, root_context: dict[str, Any], subprocess_context: dict[str, Any],
                        subprocesses: int) -> None:
    """Refuse a run whose context values, the tree's variables and the two contexts given to
    run_pipeline together, are over MAX_TREE_VARIABLES: each key of ``root_context`` is a value of
    the root's context, each of ``subprocess_context`` one of every subprocess's (review23b: a
    subprocess context of 30 keys over 33,000 subprocesses stored ~1,000,000 rows in one
    transaction, past the tree's own limit)."""
    added = len(root_context) + len(subprocess_context) * subprocesses
    if added and tree_variables + added > MAX_TREE_VARIABLES:
        raise InvalidOperationError(
            f"run_pipeline: root_pipeline_context ({len(root_context):,} keys) and subprocess_context "
            f"({len(subprocess_context):,} keys, one copy for each of {subprocesses:,} subprocesses) add "
            f"{added:,} context values to the tree's {tree_variables:,} variables: over the "
            f"{MAX_TREE_VARIABLES:,} a run may have (culm.model.limits.MAX_TREE_VARIABLES, $CULM_MAX_TREE_VARIABLES)")


def duplicate_key(text: str | bytes) -> str | None:
    """The first key written twice in one object of the JSON ``text``, or None (also for text that
    does not parse: the caller's parser names that).

    ``json.loads`` keeps the last of two equal keys without a word, so a tree file or a request
    body with two activities or flows under one id would quietly lose one.
    """
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> None:
        if not found:
            seen: set[str] = set()
            for key, _value in items:
                if key in seen:
                    found.append(key)
                    break
                seen.add(key)
        return None  # the values are not needed, only the keys of each object

    try:
        json.loads(text, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None
