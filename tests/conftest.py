"""Shared by every suite: no `culm worker` a test session starts outlives it (see worker_guard)."""

from worker_guard import pytest_configure, pytest_sessionfinish  # noqa: F401 - the hooks of this conftest
