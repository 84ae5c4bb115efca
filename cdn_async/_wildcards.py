"""Choosing wildcards for a purge that must fit in a number of entries (``Cover``, ``covers``).

Given the changed paths, the site's file list (a manifest: every path the CDN may hold) and a
budget of ``B`` entries, choose exact paths and ``dir/*`` wildcards that cover every changed
path with at most ``B`` entries and purge the fewest manifest files that did not change.

The choice is exact. It is a knapsack over the directory tree: for a directory ``d`` with
changed files below it, its *front* is every Pareto-optimal ``(entries, unchanged files
purged)`` pair for covering them: the wildcard ``d/*`` (one entry, every unchanged file under
``d``), or the min-plus convolution of its children's fronts with its own changed files (one
exact entry each). A pair with more entries and no fewer unchanged files is dropped (it can
never be part of a better answer: entries and costs add up), and so is one with more
entries than any answer can give the subtree (``cap``). At the root, the point with the most
entries not above the budget is the answer; back pointers kept at each convolution give the
choice. A subtree with one changed file has the single point ``(1, 0)`` (its exact path): it
is a shift, not a convolution, so the work is the product of front sizes over directories
with two or more changed files below them.

Changed paths missing from the manifest are not part of the tree (the manifest says nothing
about them): each takes one entry of the budget and is sent exactly, unless a wildcard chosen
for listed paths covers it anyway (then it is not sent twice). ``*`` alone is only a choice
when allowed.

The work runs as a generator that yields every few thousand steps (``steps``), so an async
caller can hand the event loop back in between; ``covers`` runs it to the end.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .errors import ValidationError

#: C0 controls, DEL, C1 controls and lone surrogates: what no purge path may hold.
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: What no purge path may hold but a newline: checked on a chunk joined by newlines.
_ODD_CHAR = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]").search
#: Each line's directory ("a/b/" for "a/b/c", "" for "c"), as one C call over a chunk.
_PARENTS = re.compile(r"^(?:[^\n]*/)?", re.MULTILINE).findall
#: Steps (manifest paths read, front pairs combined) between two yields.
_STEP = 1000


@attrs.frozen
class Cover:
    """The planner's choice for the changed paths of one purge.

    Args:
        entries: What to send: exact paths and ``dir/*`` wildcards (``*`` if allowed and
            best), each changed path covered by exactly one; wildcards first.
        wildcards: Each wildcard chosen -> the changed paths it covers, in the given order.
        unchanged: Each wildcard chosen -> the manifest files it purges that did not change.
        unlisted: Changed paths not in the manifest. Each takes one entry of the budget and is
            sent exactly, unless a wildcard chosen for listed paths covers it anyway.
    """

    entries: tuple[str, ...]
    wildcards: Mapping[str, tuple[str, ...]]
    unchanged: Mapping[str, int]
    unlisted: tuple[str, ...]


class Manifest:
    """The site's file list, read once, and how many of its files each directory holds.

    Args:
        paths: Every path the CDN may hold (a leading ``/`` dropped; duplicates ignored).
    """

    def __init__(self) -> None:
        self.names: set[str] = set()
        #: Each directory ("a/b/", "" for the top) -> files directly in it.
        self._direct: dict[str, int] = {}

    def read(self, paths: Iterable[str]) -> Iterator[None]:
        """Take in ``paths``, yielding every ``_STEP`` of them.

        Raises:
            ValidationError: An entry is not a non-empty string, holds a control character,
                or is a wildcard (a manifest lists files).
        """
        if isinstance(paths, str | bytes):
            raise ValidationError("manifest must be a list of paths, not a single string")
        items = paths if isinstance(paths, list | tuple) else list(paths)
        names, direct = self.names, self._direct
        for start in range(0, len(items), _STEP):
            chunk = items[start : start + _STEP]
            # Checked and split as one string: a chunk costs a few C calls, not a loop.
            try:
                joined = "\n".join(chunk)
            except TypeError:
                joined = ""
            if (
                not joined
                or _ODD_CHAR(joined)
                or joined.count("\n") != len(chunk) - 1
                or "" in chunk
                or joined[0] == "/"
                or "\n/" in joined
                or "*" in joined
            ):
                chunk = [_one(start + i, item) for i, item in enumerate(chunk)]
                joined = "\n".join(chunk)
            fresh = set(chunk)
            if len(fresh) == len(chunk) and names.isdisjoint(fresh):
                parents: Iterable[str] = _PARENTS(joined)
            else:  # duplicates: each file counted once
                fresh -= names
                parents = [p[: p.rfind("/") + 1] for p in fresh]
            names |= fresh
            for parent in parents:
                direct[parent] = direct.get(parent, 0) + 1
            yield

    def count_under(self, dirs: Iterable[str], counts: dict[str, int]) -> Iterator[None]:
        """Set ``counts``: each of ``dirs`` -> manifest files below it; ``dirs`` holds ``""``
        (everything) and the parent of each of its directories (``"a/"`` for ``"a/b/"``).
        Yields every ``_STEP`` directories."""
        counts.update(dict.fromkeys(dirs, 0))
        for i, (parent, n) in enumerate(self._direct.items()):
            d = parent
            while d not in counts:  # the nearest one of ``dirs`` above
                d = d[: d.rfind("/", 0, len(d) - 1) + 1]
            counts[d] += n
            if i % _STEP == _STEP - 1:
                yield
        for i, d in enumerate(sorted(counts, key=len, reverse=True)):  # children first
            if d:
                counts[d[: d.rfind("/", 0, len(d) - 1) + 1]] += counts[d]
            if i % _STEP == _STEP - 1:
                yield


def _one(index: int, item: object) -> str:
    """One manifest entry, checked and normalised."""
    if not isinstance(item, str) or not item.lstrip("/") or _BAD_PATH_CHAR.search(item):
        raise ValidationError(f"manifest[{index}] is not a purge path: {item!r}")
    path = item.lstrip("/")
    if path == "*" or path.endswith("/*"):
        raise ValidationError(f"manifest[{index}] is a wildcard; list files: {item!r}")
    return path


def parent_dir(path: str) -> str:
    """``"a/b/"`` for ``"a/b/c"`` and for ``"a/b/c/"``; ``""`` at the top."""
    return path[: path.rfind("/", 0, len(path) - 1) + 1]


class _Node:
    """One directory with changed files below it."""

    __slots__ = ("changed", "children", "front", "merges", "opened", "own", "pick", "units")

    def __init__(self) -> None:
        # Lists are made when first needed (most directories are leaves): fewer objects for
        # the garbage collector, whose full passes are the longest pauses of a large plan.
        self.own: list[str] = _SHARED  # changed files directly in it
        self.children: list[str] = _SHARED  # child directories with changed files below them
        self.changed = 0  # changed files below it
        #: Children with one point, (1, 0): one changed file, or no unchanged file (a free
        #: wildcard). The rest are ``opened``: their fronts are convolved.
        self.units: list[str] = _SHARED
        self.opened: list[str] = _SHARED
        #: Pareto points (entries, unchanged purged, reduced cost), entries rising, cost falling.
        self.front: list[tuple[int, int, int]] = _SHARED
        #: Per point: -1 for the wildcard, else its index in the convolution's front.
        self.pick: list[int] = _SHARED
        #: Each opened child convolved, with, per point after it, the indexes of the point
        #: before it and of the child's point.
        self.merges: list[tuple[str, list[tuple[int, int]]]] = _SHARED


#: The empty list every ``_Node`` starts with: never appended to, only replaced.
_SHARED: list[Any] = []


def _convolve(
    a: list[tuple[int, int, int]], b: list[tuple[int, int, int]], cap: int, slack: int
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """The Pareto front of ``a (+) b`` (min-plus), without points above ``cap`` entries or
    with a reduced cost above ``slack``, and each point's ``(index in a, index in b)``."""
    best: dict[int, tuple[int, int, int, int]] = {}
    by_reduced = sorted((r, j, k, c) for j, (k, c, r) in enumerate(b))
    for i, (ka, ca, ra) in enumerate(a):
        left = slack - ra
        for rb, j, kb, cb in by_reduced:
            if rb > left:
                break
            k = ka + kb
            if k > cap:
                continue
            c = ca + cb
            old = best.get(k)
            if old is None or c < old[0]:
                best[k] = (c, ra + rb, i, j)
    front: list[tuple[int, int, int]] = []
    back: list[tuple[int, int]] = []
    for k in sorted(best):
        c, r, i, j = best[k]
        if not front or c < front[-1][1]:
            front.append((k, c, r))
            back.append((i, j))
    return front, back


#: The Lagrange multiplier's unit: a price of ``L / SCALE`` unchanged files per entry, kept
#: as the integer ``L`` so that every comparison below is exact.
SCALE = 1024


def steps(
    changed: Sequence[str],
    manifest: Manifest,
    budget: int,
    *,
    allow_all: bool = False,
    out: list[Cover] | None = None,
) -> Iterator[None]:
    """Choose the cover of ``changed`` (exact paths, normalised, once each, no wildcards) in at
    most ``budget`` entries purging the fewest unchanged manifest files; appended to ``out``.
    With no cover that small, the cheapest of those with the fewest entries. Yields every few
    thousand steps.

    How (each phase a method of ``_Search``): (1) the tree of directories with changed
    files; a directory with one changed file below it, or with no unchanged file, is a *unit*
    (its best is one entry at no cost). (2) Lagrange: with a price of ``L`` per entry each
    directory picks independently the cheaper of its wildcard and its children's best (one
    pass); the smallest ``L`` (by bisection) whose choice fits gives a cover that fits (cost
    ``UB``) and a lower bound on every cover that fits, ``D = G(L) - L * room``. (3) When they
    differ, the exact knapsack over Pareto fronts, dropping every point whose *reduced cost*
    (its cost plus ``L`` per entry, minus the subtree's Lagrangian best) exceeds ``UB - D``: no
    cover through such a point can cost ``UB`` or less, since the rest of the tree adds at
    least its own Lagrangian best minus ``L`` per entry it gets (see docs/design.md, "Choosing
    wildcards"). (4) The cover chosen, as entries in the order the paths were given.
    """
    search = _Search(changed, manifest, allow_all)
    yield from search.build_tree(budget)
    yield from search.fit_price()
    chosen = yield from search.choose()
    cover = yield from search.cover(chosen)
    if out is not None:
        out.append(cover)


#: The planner's choice per directory: ``(directory, -1)`` for its wildcard, ``(directory,
#: 0)`` for its own changed files and units (exact, or a unit's free wildcard).
_Choice = list[tuple[str, int]]


class _Search:
    """One run of the planner, phase by phase (``steps`` runs them in order, each a generator
    that yields every few thousand steps).

    Args:
        changed: The changed paths (normalised, once each, no wildcards).
        manifest: The site's files.
        allow_all: Whether ``*`` may be chosen.
    """

    def __init__(self, changed: Sequence[str], manifest: Manifest, allow_all: bool) -> None:
        self.changed = changed
        self.manifest = manifest
        self.allow_all = allow_all
        #: Each directory with changed files below it ("" the top) -> its node.
        self.nodes: dict[str, _Node] = {"": _Node()}
        #: Each of ``nodes`` -> the manifest files below it.
        self.files: dict[str, int] = {}
        #: The changed paths not in the manifest: each sent exactly, unless covered anyway.
        self.unlisted: tuple[str, ...] = ()
        #: The directories whose fronts are convolved (not units), children first.
        self.opened: list[str] = []
        #: The entries the listed paths may take; what one top-level group can get.
        self.room = self.cap = 0
        #: Set by ``fit_price``: the Lagrangian choice that fits, its price per entry, and
        #: the reduced cost (times ``SCALE``) a point may have and still be in a better cover.
        self.lag = _Lagrange({}, {}, {}, {}, set())
        self.price = self.slack = 0

    # -- (1) the tree --------------------------------------------------------------------------

    def build_tree(self, budget: int) -> Iterator[None]:
        """The tree of directories with changed files, the manifest files below each, which
        are units and which are opened, and the room the listed paths have in ``budget``."""
        listed = yield from self._split()
        yield from self._link(listed)
        yield from self.manifest.count_under(self.nodes, self.files)
        yield from self._open()
        root = self.nodes[""]
        # The fewest entries any cover takes: "*", else one per top-level file or directory.
        fewest = 1 if self.allow_all else len(root.own) + len(root.units) + len(root.opened)
        self.room = max(budget - len(self.unlisted), fewest)
        self.cap = self.room - (fewest - 1)  # what one top-level group can get
        yield

    def _split(self) -> Generator[None, None, list[str]]:
        """The changed paths in the manifest; those not in it go to ``unlisted``."""
        names, changed = self.manifest.names, self.changed
        listed: list[str] = []
        missing: list[str] = []
        for start in range(0, len(changed), _STEP):
            chunk = changed[start : start + _STEP]
            listed += [p for p in chunk if p in names]
            missing += [p for p in chunk if p not in names]
            yield
        self.unlisted = tuple(missing)
        return listed

    def _link(self, listed: list[str]) -> Iterator[None]:
        """A node for each directory above a listed path, linked to its parent's."""
        nodes = self.nodes
        for i, path in enumerate(listed):
            if i % _STEP == _STEP - 1:
                yield
            d = parent_dir(path)
            node = nodes.get(d)
            if node is None:
                node = nodes[d] = _Node()
                lower = d
                while True:  # link new directories up to one already known
                    up = parent_dir(lower)
                    known = up in nodes
                    if not known:
                        nodes[up] = _Node()
                    parent = nodes[up]
                    if parent.children:
                        parent.children.append(lower)
                    else:
                        parent.children = [lower]
                    if known:
                        break
                    lower = up
            if node.own:
                node.own.append(path)
            else:
                node.own = [path]

    def _open(self) -> Iterator[None]:
        """Each node's changed files below it; then, from the top, which children of an
        opened directory are units and which are opened themselves."""
        nodes, files = self.nodes, self.files
        bottom_up = sorted(nodes, key=len, reverse=True)  # children before parents
        for i, d in enumerate(bottom_up):
            node = nodes[d]
            node.changed = len(node.own) + sum(nodes[c].changed for c in node.children)
            if i % _STEP == _STEP - 1:
                yield
        is_open = {""}
        for i, d in enumerate(reversed(bottom_up)):  # parents first: what an opened one holds
            if i % _STEP == _STEP - 1:
                yield
            if d not in is_open:
                continue
            node = nodes[d]
            node.units, node.opened = [], []
            for name in node.children:
                kid = nodes[name]
                if kid.changed == 1 or files[name] == kid.changed:
                    node.units.append(name)
                else:
                    node.opened.append(name)
                    is_open.add(name)
        self.opened = [d for d in bottom_up if d in is_open]

    # -- (2) the price per entry ---------------------------------------------------------------

    def lagrange(self, price: int, spreads: bool = False) -> _Lagrange:
        """Each opened directory's best at ``price`` per entry; see ``_Lagrange`` (``spread``
        only with ``spreads``)."""
        nodes, files, allow_all = self.nodes, self.files, self.allow_all
        best: dict[str, int] = {}
        entries: dict[str, int] = {}
        cost: dict[str, int] = {}
        spread: dict[str, tuple[int, int]] = {}
        wild: set[str] = set()
        for d in self.opened:
            node = nodes[d]
            k = len(node.own) + len(node.units)
            g, c = k * price, 0
            for ch in node.opened:
                g, k, c = g + best[ch], k + entries[ch], c + cost[ch]
            if d or allow_all:
                if spreads:
                    spread[d] = (k, c)
                unchanged = files[d] - node.changed
                w = unchanged * SCALE + price
                if w < g or (w == g and k > 1):
                    g, k, c = w, 1, unchanged
                    wild.add(d)
            best[d], entries[d], cost[d] = g, k, c
        return _Lagrange(best, entries, cost, spread, wild)

    def fit_price(self) -> Iterator[None]:
        """The smallest price whose Lagrangian choice fits in ``room`` (0 when the cheapest
        cover fits), and the slack the knapsack keeps points within."""
        nodes, files, room = self.nodes, self.files, self.room
        # The cheapest cover: every changed path exact (or under a free wildcard).
        self.lag = lag = self.lagrange(0)
        yield
        if lag.entries[""] <= room:
            return
        low, high = 0, (max(files[d] - nodes[d].changed for d in self.opened) + 1) * SCALE
        lag = self.lagrange(high)
        while high - low > 1:
            mid = (low + high) // 2
            trial = self.lagrange(mid)
            if trial.entries[""] <= room:
                high, lag = mid, trial
            else:
                low = mid
            yield
        self.lag, self.price = lag, high
        # A better cover that fits, for a smaller slack: some wildcards of this one spread
        # as they do at the lower price, the most unchanged files saved per entry first.
        below = self.lagrange(low, spreads=True).spread
        spare, upper = room - lag.entries[""], lag.cost[""]
        spreads = []
        for d in _tops(nodes, lag.wild):
            k, spread_cost = below[d]
            saved = files[d] - nodes[d].changed - spread_cost
            if saved > 0 and k > 1:
                spreads.append((saved / (k - 1), saved, k - 1))
        for _, saved, extra in sorted(spreads, reverse=True):
            if extra <= spare:
                spare, upper = spare - extra, upper - saved
        # (UB - D) * SCALE, D = G(price) - price * room: the Lagrangian lower bound.
        self.slack = upper * SCALE - (lag.best[""] - high * room)

    # -- (3) the choice ------------------------------------------------------------------------

    def choose(self) -> Generator[None, None, _Choice]:
        """The Lagrangian choice when it is optimal, else the exact knapsack's."""
        lag = self.lag
        if lag.cost[""] * SCALE == lag.best[""] - self.price * self.room:
            return self._lagrangian_choice()
        yield from self._fronts()
        return self._trace_back()

    def _lagrangian_choice(self) -> _Choice:
        chosen: _Choice = []
        todo = [""]
        while todo:
            d = todo.pop()
            if d in self.lag.wild:
                chosen.append((d, -1))
            else:
                chosen.append((d, 0))
                todo.extend(self.nodes[d].opened)
        return chosen

    def _fronts(self) -> Iterator[None]:
        """Each opened directory's Pareto front (children first), its points within the
        slack, and the back pointers to the points it was made of."""
        nodes, files, best, price, slack = (
            self.nodes,
            self.files,
            self.lag.best,
            self.price,
            self.slack,
        )
        work = 0
        for d in self.opened:
            node = nodes[d]
            shift = len(node.own) + len(node.units)
            front: list[tuple[int, int, int]] = [(shift, 0, 0)]
            node.merges = [("", [(0, 0)])]
            limit = self.cap if d else self.room
            for ch in sorted(node.opened, key=lambda c: len(nodes[c].front)):
                child = nodes[ch]
                work += len(front) * len(child.front)
                front, back = _convolve(front, child.front, limit, slack)
                node.merges.append((ch, back))
                child.front = []  # not needed any more
                if work > _STEP:
                    work = 0
                    yield
            work += len(front) + 1
            if work > _STEP:
                work = 0
                yield
            # Reduced costs against this directory's Lagrangian best.
            g = best[d]
            points = [(k, c, c * SCALE + price * k - g) for k, c, _ in front]
            node.pick = [i for i, p in enumerate(points) if p[2] <= slack]
            node.front = [points[i] for i in node.pick]
            if d or self.allow_all:
                unchanged = files[d] - node.changed
                r = unchanged * SCALE + price - g
                # The wildcard: one entry. Kept unless a point with one entry is as cheap.
                first = node.front[0] if node.front else (2, 0, 0)
                if r <= slack and (first[0] > 1 or first[1] > unchanged):
                    kept = [n for n, p in enumerate(node.front) if p[1] < unchanged]
                    node.front = [(1, unchanged, r)] + [node.front[n] for n in kept]
                    node.pick = [-1] + [node.pick[n] for n in kept]

    def _trace_back(self) -> _Choice:
        """From the top's point with the most entries that fit, down the back pointers."""
        nodes = self.nodes
        fitting = [i for i, (k, _, _) in enumerate(nodes[""].front) if k <= self.room]
        chosen: _Choice = []
        todo = [("", fitting[-1])]
        while todo:
            d, i = todo.pop()
            node = nodes[d]
            p = node.pick[i]
            if p < 0:
                chosen.append((d, -1))
                continue
            chosen.append((d, 0))
            for name, back in reversed(node.merges):
                j, i_child = back[p]
                if name:
                    todo.append((name, i_child))
                p = j
        return chosen

    # -- (4) the cover -------------------------------------------------------------------------

    def cover(self, chosen: _Choice) -> Generator[None, None, Cover]:
        """The entries of ``chosen``: wildcards first, then exact paths, each group in the
        order the paths were given, then the unlisted paths no wildcard covers."""
        yield
        wildcards: dict[str, tuple[str, ...]] = {}
        unchanged_by: dict[str, int] = {}
        exact: list[str] = []
        yield from self._take(chosen, wildcards, unchanged_by, exact)
        # An unlisted path under a wildcard chosen anyway is purged by it: not sent twice.
        alone: list[str] = []
        for path in self.unlisted:
            d = parent_dir(path)
            while d and d + "*" not in wildcards:
                d = parent_dir(d)
            w = (d + "*") if d else "*"
            if w in wildcards:
                wildcards[w] += (path,)
            else:
                alone.append(path)
        yield
        # In the order given: one pass over the changed paths, not a sort.
        owner = {p: w for w, paths in wildcards.items() for p in paths}
        yield
        sent_exact = set(exact)
        exact = []
        groups: dict[str, list[str]] = {w: [] for w in wildcards}
        changed = self.changed
        for start in range(0, len(changed), _STEP):
            for path in changed[start : start + _STEP]:
                group = owner.get(path)
                if group is not None:
                    groups[group].append(path)
                elif path in sent_exact:
                    exact.append(path)
            yield
        ordered = {w: tuple(paths) for w, paths in groups.items()}
        return Cover((*ordered, *exact, *alone), ordered, unchanged_by, self.unlisted)

    def _take(
        self,
        chosen: _Choice,
        wildcards: dict[str, tuple[str, ...]],
        unchanged_by: dict[str, int],
        exact: list[str],
    ) -> Iterator[None]:
        """Each wildcard of ``chosen`` with the changed paths below it and the unchanged
        files it purges, and its exact paths."""
        nodes, files = self.nodes, self.files

        def take_wildcard(d: str) -> None:
            name = (d + "*") if d else "*"
            wildcards[name] = tuple(_below(nodes, d))
            unchanged_by[name] = files[d] - nodes[d].changed

        for i, (d, how) in enumerate(chosen):
            if i % _STEP == _STEP - 1:
                yield
            node = nodes[d]
            if how < 0:
                take_wildcard(d)
                continue
            exact.extend(node.own)
            for u in node.units:
                if nodes[u].changed == 1:
                    exact.extend(_below(nodes, u))
                else:
                    take_wildcard(u)


@attrs.frozen
class _Lagrange:
    """The Lagrangian choice at one price per entry, for each opened directory.

    Args:
        best: The least ``cost * SCALE + price * entries`` of its cover.
        entries: That cover's entries.
        cost: That cover's unchanged files purged.
        spread: Entries and cost of the best cover without its own wildcard.
        wild: The directories whose own wildcard is that best.
    """

    best: dict[str, int]
    entries: dict[str, int]
    cost: dict[str, int]
    spread: dict[str, tuple[int, int]]
    wild: set[str]


def _tops(nodes: Mapping[str, _Node], wild: set[str]) -> Iterator[str]:
    """The wildcards of a Lagrangian cover: ``wild`` directories not below another."""
    todo = [""]
    while todo:
        d = todo.pop()
        if d in wild:
            yield d
        else:
            todo.extend(nodes[d].opened)


def _below(nodes: Mapping[str, _Node], d: str) -> Iterator[str]:
    """Every changed file below ``d``."""
    todo = [d]
    while todo:
        node = nodes[todo.pop()]
        yield from node.own
        todo.extend(node.children)


def covers(
    changed: Sequence[str], manifest: Iterable[str], budget: int, *, allow_all: bool = False
) -> Cover:
    """``steps`` run to the end, for a manifest given as paths."""
    files = Manifest()
    for _ in files.read(manifest):
        pass
    out: list[Cover] = []
    for _ in steps(changed, files, budget, allow_all=allow_all, out=out):
        pass
    return out[0]
