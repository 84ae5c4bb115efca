"""A purge's plan and its outcome, as data: which paths are sent for which (``plan``, linear in
the paths whatever the number of wildcards), what a call will cost (``plan_purge``), what each
batch settled (``PurgeProgress``), and what sends it (``PurgeBackend``). No I/O: the engine
(``_purge.py``) and the shared queue (``_purge_queue``) both build on it. What a whole call
achieved, ``PurgeReport``, is in ``_models.py``, below the errors (``PurgeError`` carries one)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs

from . import _validation as check
from ._limits import RateLimits
from ._models import PurgeReport
from ._validation import CHUNK
from .errors import CDNError

if TYPE_CHECKING:
    from ._limits import Priority
    from ._session import Session


@attrs.frozen
class PurgeProgress:
    """What one batch of a purge call settled, given to ``purge(on_batch=...)``.

    Args:
        done: Paths of the call settled so far (purged or failed), this batch included.
        total: Paths of the call (normalised, once each).
        confirmed: The call's paths this batch confirmed purged (a path covered by a wildcard
            sent is confirmed with it). Every confirmed path is delivered exactly once, so a
            job can checkpoint them: after a cancellation, what was confirmed has been
            delivered.
        failed: The call's paths this batch settled as failed, each with its error.
    """

    done: int
    total: int
    confirmed: tuple[str, ...]
    failed: Mapping[str, CDNError]


@attrs.frozen
class PurgePlan:
    """What ``plan_purge`` predicts for one purge call.

    Args:
        paths: The paths that will be sent, in order, after normalising, dropping duplicates
            and dropping paths a wildcard of the same call covers.
        covered: Each path not sent itself -> the wildcard sent for it.
        requests: Purge requests needed: ``ceil(len(paths) / batch size)``.
        seconds: The least time from the first request to the last at the budgets' pace
            (round trips and other clients of the token not counted).
    """

    paths: tuple[str, ...]
    covered: Mapping[str, str]
    requests: int
    seconds: float


def plan_purge(paths: Iterable[str], limits: RateLimits | None = None) -> PurgePlan:
    """Plan a purge without sending anything: what is sent, in how many requests, how fast.

    Args:
        paths: The paths, as given to ``cdn.endpoints.purge``.
        limits: The budgets to pace by; default ``RateLimits.documented()``.

    Returns:
        The ``PurgePlan``.

    Raises:
        ValidationError: ``paths`` is empty, a bare string, or holds a bad path.
    """
    limits = RateLimits.documented() if limits is None else limits
    mapping = plan(check.files(paths))
    sent = tuple(dict.fromkeys(mapping.values()))
    requests = math.ceil(len(sent) / limits.purge_batch_size)
    seconds = 0.0
    for budget in limits.budgets:
        units = len(sent) if budget.unit == "file" else requests
        # The k-th window's worth of units may leave one period after the (k-1)-th.
        seconds = max(seconds, (math.ceil(units / budget.capacity) - 1) * budget.period)
    covered = {p: t for p, t in mapping.items() if p != t}
    return PurgePlan(sent, covered, requests, seconds)


def plan(paths: Sequence[str]) -> dict[str, str]:
    """Map each (normalised) path to the path that will actually be sent for it.

    ``"*"`` covers everything; ``dir/*`` covers every path that starts with ``dir/``; other
    paths stand for themselves. Order of first appearance is kept. Linear in the number of
    paths (and of the ``/`` in each), whatever the number of wildcards.
    """
    planned = _Plan()
    for _ in planned.steps(paths):
        pass
    return planned.mapping


class _Plan:
    """``plan``'s answer, and what joining needs besides, built a chunk at a time."""

    def __init__(self) -> None:
        #: Each path -> the path sent for it.
        self.mapping: dict[str, str] = {}
        #: Each path sent, in order of the first path it is sent for.
        self.targets: dict[str, None] = {}
        #: Each wildcard sent -> every path it stands for (itself included), in order. Other
        #: paths sent stand only for themselves.
        self.groups: dict[str, list[str]] = {}

    def steps(self, paths: Sequence[str]) -> Iterator[None]:
        """Plan ``paths``, yielding after every ``CHUNK`` of them."""
        unique: dict[str, None] = {}
        prefixes: set[str] = set()  # each wildcard "dir/*" as its directory "dir/"
        for start in range(0, len(paths), CHUNK):
            chunk = dict.fromkeys(paths[start : start + CHUNK])
            unique.update(chunk)
            prefixes.update(p[:-1] for p in chunk if p.endswith("/*"))
            yield
        if "*" in unique:
            self.groups["*"] = list(unique)
            self.mapping = dict.fromkeys(unique, "*")
            self.targets = {"*": None}
            return
        mapping, targets, groups = self.mapping, self.targets, self.groups
        for i, p in enumerate(unique):
            # A path is covered by one of its own parent directories: one lookup per "/".
            target = _cover(p, prefixes) if prefixes else None
            if target is None:
                mapping[p] = p
                targets[p] = None
                if p.endswith("/*"):  # a wildcard sent as itself: it may stand for others
                    groups.setdefault(p, []).append(p)
            else:
                mapping[p] = target
                targets[target] = None
                groups.setdefault(target, []).append(p)
            if i % CHUNK == CHUNK - 1:
                yield


def _cover(path: str, prefixes: set[str]) -> str | None:
    """The shortest wildcard among ``prefixes`` (each ``dir/``) that covers ``path``."""
    cut = path.find("/")
    while cut != -1:
        prefix = path[: cut + 1]
        # A wildcard covers itself only as itself ("a/*" stands for "a/*", not covered by it).
        if prefix in prefixes and not (len(path) == cut + 2 and path[-1] == "*"):
            return prefix + "*"
        cut = path.find("/", cut + 1)
    return None


class PurgeBackend(Protocol):
    """What sends a client's purges: the in-process ``PurgeEngine``, or a queue shared by
    processes (``cdn_async.redis.RedisPurgeQueue``)."""

    async def purge(
        self,
        session: Session,
        cdn_id: str,
        paths: Sequence[str],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
        priority: Priority | None = None,
    ) -> PurgeReport:
        """Purge validated, normalised ``paths``; ``PurgeError`` when any failed."""
        ...

    async def aclose(self) -> None:
        """Stop what this process sends for it."""
        ...
