"""Text written where a person reads it, made unable to steer it: the leaf :mod:`culm._printable`
(standard library only, so that every package, the storage and dispatch included, can use it)
under the model's name, where :func:`inert` was first kept."""

from culm._printable import UNSAFE, InertRecords, engine_logger, inert, log_line

__all__ = ["UNSAFE", "InertRecords", "engine_logger", "inert", "log_line"]
