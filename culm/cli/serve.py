"""The service's commands, ``serve`` and ``token``: defined in :mod:`culm.web.commands`."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add ``serve`` and ``token`` to the ``culm`` parser."""
    from culm.web.commands import register as register_web

    register_web(sub)
