"""Shared by every suite: no `culm worker` a test session starts outlives it (see worker_guard); the
suite may run in several processes at once (see parallel)."""

import os

from parallel import pytest_runtest_protocol  # noqa: F401 - a hook
from worker_guard import pytest_configure, pytest_sessionfinish  # noqa: F401 - the hooks of this conftest

# The directory a session shares with the workers it starts (components.SHARED_DIR) is its own: an
# xdist worker inherits the environment of the process that started it, which may have chosen one.
os.environ.pop("CULM_TEST_SHARED_DIR", None)
