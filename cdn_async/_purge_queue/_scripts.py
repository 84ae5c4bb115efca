"""The queue's Lua scripts: one ``lua/<name>.lua`` each, read from the package."""

from __future__ import annotations

import functools
from importlib import resources

#: The scripts, one ``lua/<name>.lua`` each.
NAMES = ("submit", "take", "seal", "complete", "giveback", "lease", "poll")


@functools.cache
def source(name: str) -> str:
    """The script Redis runs for ``name``."""
    lua = resources.files(__name__.rpartition(".")[0]).joinpath("lua")
    return lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
