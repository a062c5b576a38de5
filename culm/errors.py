"""The exception hierarchy. Every culm exception derives from :class:`CulmError`."""

from __future__ import annotations


class CulmError(Exception):
    """Root of every error culm raises."""


class NotFoundError(CulmError):
    """A pipeline, node, schedule or datum does not exist."""


class NodeNotReachedError(NotFoundError):
    """A node is in a stored tree but no process has reached it yet (it has no state), so it has no
    data to show; ``get_pipeline_tree`` shows its definition."""


class InvalidOperationError(CulmError):
    """A command is not allowed in the current state of its target."""


class StateVersionMismatchError(InvalidOperationError):
    """A state write carried a version that is no longer current."""


class TreeInvalidError(CulmError):
    """A pipeline tree breaks one or more rules; ``problems`` lists every one of them."""

    def __init__(self, problems: list[TreeProblem] | list[str]) -> None:
        self.problems: list[TreeProblem] = [
            p if isinstance(p, TreeProblem) else TreeProblem(None, str(p)) for p in problems
        ]
        shown = "; ".join(str(p) for p in self.problems[:_SHOWN_PROBLEMS])
        if len(self.problems) > _SHOWN_PROBLEMS:  # ``problems`` keeps them all
            shown += f"; and {len(self.problems) - _SHOWN_PROBLEMS} more problem(s)"
        super().__init__(shown or "invalid pipeline tree")


# How much of a tree's problems its message shows: a tree of 100,000 broken nodes, or an id a
# megabyte long, must not make a message of megabytes (it is printed, logged and sent back).
_SHOWN_PROBLEMS = 20
_SHOWN_WHERE = 300
_SHOWN_MESSAGE = 1000


def _clipped(text: str, width: int) -> str:
    """``text``, cut in its middle when it is longer than ``width`` (both ends say what and where)."""
    if len(text) <= width:
        return text
    return f"{text[: width // 2]}...({len(text)} characters)...{text[-width // 2 :]}"


class TreeProblem:
    """One rule a tree breaks: where (node or flow id, maybe ``None``) and what."""

    __slots__ = ("where", "message")

    def __init__(self, where: str | None, message: str) -> None:
        self.where = where if where is None else _clipped(where, _SHOWN_WHERE)
        self.message = _clipped(message, _SHOWN_MESSAGE)

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def __repr__(self) -> str:
        return f"TreeProblem({self.where!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TreeProblem) and (self.where, self.message) == (other.where, other.message)

    def __hash__(self) -> int:
        return hash((self.where, self.message))


class StartPositionInvalidError(TreeInvalidError):
    """``start_node_id`` names a node the pipeline cannot start at."""


#: bamboo's names for the same exceptions, so that ``except`` clauses written for bamboo work.
StartPositionInvalidException = StartPositionInvalidError
TreeInvalidException = TreeInvalidError


class PluginConflictError(CulmError):
    """Two different classes claim the same plugin code (and version)."""


class PluginNotFoundError(CulmError, LookupError):
    """No plugin (component, lazy variable, end event) is registered under a code."""


class ExpressionError(CulmError):
    """A template fragment or condition cannot be evaluated safely."""


class ExpressionLimitError(ExpressionError):
    """An expression went over a time, size or complexity bound."""


class ExpressionRefusedError(ExpressionError):
    """An expression reached for what an object a component put in the context can do (call its
    methods, run its properties, iterate or index it) and the sandbox refused: the node fails
    naming the expression, instead of the fragment staying text."""


class HydrationError(CulmError):
    """Context variables needed by a node could not be resolved."""


class SchemaOutdatedError(CulmError):
    """The database schema is older than this version of culm expects."""


class SchemaMissingError(SchemaOutdatedError):
    """A table of culm's schema is missing from the database (dropped, never created, or left out
    of a partial restore); the message names the table and how to make the schema whole."""


class DatabaseSettingsError(CulmError):
    """The database server is set up in a way culm cannot store its data safely with."""


class SettingsError(CulmError, ValueError):
    """An engine setting (``culm.Settings``, ``culm.configure`` or a ``CULM_*`` variable) that culm
    cannot use; the message names the setting and the value."""


class PluginImportError(CulmError, ImportError):
    """A module named by ``$CULM_IMPORTS`` could not be imported; the message names it and why."""


class ConditionSyntaxError(ExpressionError):
    """A gateway condition is not valid condition (boolrule) syntax."""


class UnstorableValueError(CulmError):
    """A value or text the store cannot hold (no serialiser takes it, or text a database refuses).

    ``field`` says which part of a record it is (``"outputs"``, ``"inputs"``, ``"log lines"``...),
    ``keys`` which entries of it are at fault (dict keys, or list positions for log lines).
    """

    def __init__(self, message: str, field: str = "", keys: list | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.keys: list = list(keys or [])


class StoredBytesBudgetError(UnstorableValueError):
    """A write would take what one root pipeline stores past its budget
    (:data:`culm.model.limits.MAX_PIPELINE_STORED_BYTES`)."""
