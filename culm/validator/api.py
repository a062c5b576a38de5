"""``bamboo_engine.validator.api`` under culm: the same functions as :mod:`culm.validator`."""

from culm.validator import *  # noqa: F403  (the package's public names, listed in its __all__)
from culm.validator import __all__ as _package_names

__all__ = [name for name in _package_names if name != "api"]
