"""A purge's plan and its outcome, as data: which paths are sent for which (``sent_for``, linear in
the paths whatever the number of wildcards), what a call will cost (``plan_purge``), what each
batch settled (``PurgeProgress``), and what sends it (``PurgeBackend``). No I/O: the engine
(``_purge.py``) and the shared queue (``_purge_queue``) both build on it. What a whole call
achieved, ``PurgeReport``, is in ``_models.py``, below the errors (``PurgeError`` carries one)."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

import attrs

from . import _validation as check
from ._limits import RateLimits
from ._models import PurgeReport
from ._validation import CHUNK
from ._wildcards import Cover, Manifest, steps
from .errors import CDNError, ValidationError

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
        paths: The paths that will be sent (the entries), in order, after normalising,
            dropping duplicates and dropping paths a wildcard of the same call covers. With a
            manifest, the wildcards chosen come first.
        covered: Each path not sent itself -> the wildcard sent for it.
        requests: Purge requests needed: ``ceil(len(paths) / batch size)``.
        seconds: The least time from the first request to the last at the budgets' pace
            (round trips and other clients of the token not counted; the file budget's
            ``in_use`` units counted ahead of this purge).
        unchanged: Manifest files that did not change which the wildcards chosen purge
            (0 without a manifest: wildcards you give are taken as they are).
        unchanged_by: Each wildcard chosen -> the unchanged manifest files it purges.
        unlisted: The changed paths missing from the manifest: each takes an entry and is
            sent exactly (unless a wildcard chosen for other paths covers it anyway).
        allowed: The most entries that fit before the deadline (or ``entries=``); None
            without either.
        late_by: Seconds by which the last request misses the deadline (0.0: it fits).
    """

    paths: tuple[str, ...]
    covered: Mapping[str, str]
    requests: int
    seconds: float
    unchanged: int = 0
    unchanged_by: Mapping[str, int] = attrs.field(factory=dict)
    unlisted: tuple[str, ...] = ()
    allowed: int | None = None
    late_by: float = 0.0

    @property
    def fits(self) -> bool:
        """Whether the plan fits in ``allowed`` entries (always, without a limit)."""
        return self.allowed is None or len(self.paths) <= self.allowed

    @property
    def wildcards(self) -> dict[str, tuple[str, ...]]:
        """Each wildcard sent -> the paths of the call it covers (itself excluded)."""
        out: dict[str, list[str]] = {p: [] for p in self.paths if p == "*" or p.endswith("/*")}
        for path, target in self.covered.items():
            out[target].append(path)
        return {w: tuple(paths) for w, paths in out.items()}


def plan_purge(
    paths: Iterable[str],
    limits: RateLimits | None = None,
    *,
    manifest: Iterable[str] | None = None,
    deadline: float | timedelta | None = None,
    entries: int | None = None,
    allow_all: bool = False,
    in_use: int = 0,
) -> PurgePlan:
    """Plan a purge without sending anything: what is sent, in how many requests, how fast.

    With a ``manifest`` (every path the CDN may hold: the build's output, a listing of the
    Space) and a ``deadline`` (or a number of ``entries``), changed paths are collapsed into
    ``dir/*`` wildcards so that the purge fits: the plan covers every changed path with at
    most that many entries and purges the fewest manifest files that did not change (exact:
    see docs/design.md, "Choosing wildcards"). ``*`` alone only with ``allow_all``. With a
    manifest and no limit, only wildcards that purge nothing unchanged are taken. Without a
    manifest nothing is collapsed (what a wildcard would purge is unknown): the deadline only
    checks that the plan fits (``fits``, ``late_by``).

    Args:
        paths: The changed paths, as given to ``cdn.endpoints.purge``.
        limits: The budgets to pace by; default ``RateLimits.documented()``.
        manifest: Every path the endpoint may cache (files, no wildcards), or None.
        deadline: Seconds (or a ``timedelta``) from now by which the last request must be
            sent: the file budget's windows until then (``limit * (floor(deadline / period)
            + 1)`` files, less ``in_use``; the request budgets likewise) bound the entries.
        entries: The most entries to send, instead of a deadline.
        allow_all: Whether ``*`` (purge everything cached) may be chosen.
        in_use: File-budget units already used in the current window or pending ahead of
            this purge (``cdn.endpoints.purge`` counts them itself).

    Returns:
        The ``PurgePlan``.

    Raises:
        ValidationError: ``paths`` is empty, a bare string, or holds a bad path; the
            manifest holds a bad path or a wildcard; a bad deadline or number of entries.
    """
    out: list[PurgePlan] = []
    for _ in plan_purge_steps(
        check.files(paths),
        limits,
        manifest=manifest,
        deadline=deadline,
        entries=entries,
        allow_all=allow_all,
        in_use=in_use,
        out=out,
    ):
        pass
    return out[0]


def entries_within(limits: RateLimits, deadline: float, in_use: int = 0) -> int:
    """The most purge entries whose last request goes by ``deadline`` seconds from now: the
    ``k``-th window's worth of a budget's units may go one period after the ``(k-1)``-th."""
    batch = limits.purge_batch_size
    most = math.inf
    for budget in limits.budgets:
        windows = math.floor(deadline / budget.period + 1e-9) + 1
        if budget.unit == "file":
            most = min(most, budget.capacity * windows - in_use)
        else:
            most = min(most, budget.capacity * windows * batch)
    return max(0, int(most))


def plan_purge_steps(
    files: Sequence[str],
    limits: RateLimits | None = None,
    *,
    manifest: Iterable[str] | Manifest | None = None,
    deadline: float | timedelta | None = None,
    entries: int | None = None,
    allow_all: bool = False,
    in_use: int = 0,
    out: list[PurgePlan],
) -> Iterator[None]:
    """``plan_purge`` of checked, normalised ``files`` into ``out``, yielding every few ms of
    work (``cdn.endpoints.purge`` hands the event loop back in between)."""
    limits = RateLimits.documented() if limits is None else limits
    seconds = _checked(deadline, entries, in_use)
    allowed = entries
    if seconds is not None:
        within = entries_within(limits, seconds, in_use)
        allowed = within if allowed is None else min(allowed, within)
    chosen: Cover | None = None
    if manifest is not None:
        chosen = yield from _choose_wildcards(files, manifest, allowed, allow_all)
        if chosen is not None:
            files = [*chosen.wildcards, *files]
    coalesced = Coalesced()
    yield from coalesced.steps(files)
    sent = tuple(coalesced.targets)
    requests = math.ceil(len(sent) / limits.purge_batch_size)
    last = _last_request(limits, len(sent) + in_use, requests)
    unchanged_by = dict(chosen.unchanged) if chosen is not None else {}
    out.append(
        PurgePlan(
            sent,
            {p: t for p, t in coalesced.mapping.items() if p != t},
            requests,
            last,
            sum(unchanged_by.values()),
            unchanged_by,
            chosen.unlisted if chosen is not None else (),
            allowed,
            max(0.0, last - seconds) if seconds is not None else 0.0,
        )
    )


def _checked(deadline: float | timedelta | None, entries: int | None, in_use: int) -> float | None:
    """The deadline in seconds (None without one), once it, ``entries`` and ``in_use`` are
    checked."""
    if isinstance(deadline, timedelta):
        deadline = deadline.total_seconds()
    if deadline is not None and not (
        isinstance(deadline, int | float) and math.isfinite(deadline) and deadline >= 0
    ):
        raise ValidationError(f"deadline must be seconds >= 0, got {deadline!r}")
    if entries is not None and (isinstance(entries, bool) or not isinstance(entries, int)):
        raise ValidationError(f"entries must be an int, got {entries!r}")
    if entries is not None and entries < 1:
        raise ValidationError(f"entries must be at least 1, got {entries}")
    if isinstance(in_use, bool) or not isinstance(in_use, int) or in_use < 0:
        raise ValidationError(f"in_use must be an int >= 0, got {in_use!r}")
    return deadline


def _choose_wildcards(
    files: Sequence[str], manifest: Iterable[str] | Manifest, allowed: int | None, allow_all: bool
) -> Generator[None, None, Cover | None]:
    """The planner's cover of the exact paths of ``files`` in ``allowed`` entries (less the
    wildcards given, which stay as they are); None when ``*`` is given (it covers all)."""
    if isinstance(manifest, Manifest):  # read already
        site = manifest
    else:
        site = Manifest()
        yield from site.read(manifest)
    if "*" in files:
        return None
    given = [p for p in files if p.endswith("/*")]
    given_coalesced = Coalesced()
    yield from given_coalesced.steps(files)
    rest = [p for p, t in given_coalesced.mapping.items() if p == t and not p.endswith("/*")]
    room = len(rest) + len(given) if allowed is None else allowed
    found: list[Cover] = []
    yield from steps(rest, site, room - len(given), allow_all=allow_all, out=found)
    return found[0]


def _last_request(limits: RateLimits, files: int, requests: int) -> float:
    """The least seconds from the first request to the last at the budgets' pace, for
    ``files`` file-budget units (in use ahead included) in ``requests`` requests."""
    seconds = 0.0
    for budget in limits.budgets:
        units = files if budget.unit == "file" else requests
        # The k-th window's worth of units may leave one period after the (k-1)-th.
        seconds = max(seconds, (math.ceil(units / budget.capacity) - 1) * budget.period)
    return seconds


def sent_for(paths: Sequence[str]) -> dict[str, str]:
    """Map each (normalised) path to the path that will actually be sent for it.

    ``"*"`` covers everything; ``dir/*`` covers every path that starts with ``dir/``; other
    paths stand for themselves. Order of first appearance is kept. Linear in the number of
    paths (and of the ``/`` in each), whatever the number of wildcards.
    """
    coalesced = Coalesced()
    for _ in coalesced.steps(paths):
        pass
    return coalesced.mapping


class Coalesced:
    """The paths of a purge coalesced: which path is sent for each (``sent_for``'s answer), and
    what the engine needs to join them besides (the paths sent, whom each wildcard stands for),
    built a chunk at a time."""

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
