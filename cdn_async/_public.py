"""Public names say where users import them from, not where they are defined."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def publish(module: str, objects: Iterable[Any]) -> None:
    """Set ``__module__`` of each class or function defined in a private module (``_x.py``)
    to ``module``, so tracebacks, reprs and docs name the public path
    (``cdn_async.CDNClient``, ``cdn_async.redis.RedisBudgetStore``)."""
    for obj in objects:
        if callable(obj) and getattr(obj, "__module__", "").startswith(
            ("cdn_async._", "cdn_async.testing._")
        ):
            obj.__module__ = module
