"""Text for a terminal: what a pipeline's author or a component wrote cannot steer it.

Node and pipeline names, ids, failure texts, wait reasons and log lines reach ``culm``'s output
as they were written; everything a command prints goes through :func:`culm._printable.inert`
(exported as ``culm.model.inert``; imported from its leaf module, which loads nothing else).
"""

from __future__ import annotations

from typing import Any, TextIO

from culm._printable import inert


class SafeStream:
    """A text stream writing :func:`inert` of everything written to it (``print`` to stdout and
    stderr while a command runs); ``unescaped`` is the stream below, for rich, whose own colour
    codes must pass (it escapes what it is given itself: :func:`safe_console`)."""

    def __init__(self, stream: TextIO) -> None:
        self.unescaped = stream

    def write(self, text: str) -> int:
        self.unescaped.write(inert(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def isatty(self) -> bool:
        """False: a library that colours what it writes on a terminal (uvicorn's and Celery's log
        lines) would see its own codes escaped. ``culm`` asks :func:`on_terminal`."""
        return False

    def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, buffer...
        return getattr(self.unescaped, name)


def unescaped_stdout() -> TextIO:
    """The stream under a :class:`SafeStream` standard output (or stdout): for text a rich console
    rendered, which escaped it already (:func:`safe_console`)."""
    import sys

    return getattr(sys.stdout, "unescaped", sys.stdout)  # type: ignore[no-any-return]


def on_terminal() -> bool:
    """Whether standard output is a terminal, under a :class:`SafeStream` or not."""
    return bool(unescaped_stdout().isatty())


def safe_console(**kwargs: Any) -> Any:
    """A rich console writing to the stream under a :class:`SafeStream` (or stdout) that escapes the
    text it renders, not the colour and cursor codes it makes itself."""
    import sys

    from rich.console import Console
    from rich.segment import Segment

    class _Console(Console):
        def render(self, renderable: Any, options: Any = None) -> Any:
            for segment in super().render(renderable, options):
                text = segment.text if segment.control else inert(segment.text)
                yield segment if text is segment.text else Segment(text, segment.style)

        def on_broken_pipe(self) -> None:
            # rich exits 1 when the reader left (`culm status ID | head`): 1 means "the pipeline
            # failed" here. The command's own handler sends the rest nowhere and exits 0.
            raise BrokenPipeError

    return _Console(file=getattr(sys.stdout, "unescaped", None), **kwargs)
