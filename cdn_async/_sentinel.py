"""``NOT_GIVEN``: "the caller did not pass this", where None means something else."""

from __future__ import annotations

import enum
from typing import Final


class NotGiven(enum.Enum):
    """The type of ``NOT_GIVEN``; an enum so type checkers narrow it with ``isinstance``."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Final = NotGiven.NOT_GIVEN
