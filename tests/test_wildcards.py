"""The wildcard planner: exact against a brute force over every set of wildcards (small trees)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cdn_async._wildcards import covers, parent_dir
from cdn_async.errors import ValidationError


def ancestors(path: str, allow_all: bool) -> list[str]:
    """Every directory of ``path`` a wildcard could name (``""`` for ``*`` if allowed)."""
    out = []
    d = parent_dir(path)
    while d:
        out.append(d)
        d = parent_dir(d)
    if allow_all:
        out.append("")
    return out


def covered_by(path: str, wildcard: str) -> bool:
    return wildcard == "*" or path.startswith(wildcard[:-1])


def brute_force(changed: Sequence[str], manifest: Sequence[str], allow_all: bool) -> dict[int, int]:
    """Entries -> the fewest unchanged manifest files purged with that many entries or fewer,
    over every set of wildcards (each changed path not under one sent exactly; each changed
    path missing from the manifest counted as one entry, as the planner's budget does)."""
    names = set(manifest)
    listed = [p for p in changed if p in names]
    unlisted = [p for p in changed if p not in names]
    dirs = sorted({d for p in listed for d in ancestors(p, allow_all)})
    best: dict[int, int] = {}
    for r in range(len(dirs) + 1):
        for chosen in itertools.combinations(dirs, r):
            wildcards = [d + "*" for d in chosen]
            # Only wildcards no other chosen one covers are sent.
            sent = [w for w in wildcards if not any(v != w and covered_by(w, v) for v in wildcards)]
            exact = [p for p in listed if not any(covered_by(p, w) for w in sent)]
            purged = {f for f in names for w in sent if covered_by(f, w)}
            cost = len(purged - set(listed))
            entries = len(sent) + len(exact) + len(unlisted)
            if cost < best.get(entries, cost + 1):
                best[entries] = cost
    # "Or fewer": the best cost at each number of entries from the fewest up.
    out: dict[int, int] = {}
    running = None
    for k in range(min(best), max(best) + 1):
        if k in best and (running is None or best[k] < running):
            running = best[k]
        assert running is not None
        out[k] = running
    return out


names = st.sampled_from(["a", "b", "c", "d"])
dir_paths = st.lists(names, min_size=0, max_size=3).map(
    lambda parts: "".join(p + "/" for p in parts)
)
file_paths = st.builds(lambda d, f: d + f, dir_paths, st.sampled_from(["v", "w", "x", "y", "z"]))


@st.composite
def sites(draw: st.DrawFn) -> tuple[list[str], list[str], bool, int]:
    # A few directories holding many files each: directories partly changed, fully changed,
    # nested in one another.
    pool = draw(st.lists(dir_paths, min_size=1, max_size=8))
    files = st.builds(lambda d, f: d + f, st.sampled_from(pool), st.sampled_from("vwxyz"))
    manifest = draw(st.lists(files, min_size=1, max_size=24, unique=True))
    changed = draw(st.lists(st.sampled_from(manifest), min_size=1, max_size=14, unique=True))
    changed += draw(
        st.lists(file_paths.filter(lambda p: p not in manifest), max_size=2, unique=True)
    )
    # Small enough for the brute force: at most 12 directories a wildcard could name.
    assume(len({d for p in changed for d in ancestors(p, False)}) <= 12)
    # Budgets from too few to enough for every path exact.
    return manifest, changed, draw(st.booleans()), draw(st.integers(0, len(changed) + 1))


def check_cover(
    changed: Sequence[str], manifest: Sequence[str], budget: int, allow_all: bool
) -> None:
    cover = covers(changed, manifest, budget, allow_all=allow_all)
    optimum = brute_force(changed, manifest, allow_all)
    fewest = min(optimum)
    entries = list(cover.entries)
    assert len(entries) == len(set(entries))
    # Every changed path is covered by exactly one entry.
    for p in changed:
        assert sum(1 for e in entries if e == p or (e.endswith("*") and covered_by(p, e))) == 1
    if not allow_all:
        assert "*" not in entries
    names = set(manifest)
    assert cover.unlisted == tuple(p for p in changed if p not in names)
    # What the cover reports is what it purges.
    for w, paths in cover.wildcards.items():
        assert w in entries
        assert set(paths) == {p for p in changed if covered_by(p, w)}
        assert cover.unchanged[w] == sum(1 for f in names if covered_by(f, w) and f not in changed)
    cost = sum(cover.unchanged.values())
    if budget >= fewest:
        assert len(entries) <= budget
        assert cost == optimum[min(budget, max(optimum))]
    else:  # nothing fits: the fewest entries, and the cheapest such
        assert len(entries) <= fewest
        assert cost == optimum[fewest]


@settings(max_examples=200, deadline=None)
@given(sites())
def test_the_cover_is_exact_against_every_set_of_wildcards(
    site: tuple[list[str], list[str], bool, int],
) -> None:
    manifest, changed, allow_all, budget = site
    check_cover(changed, manifest, budget, allow_all)


def test_the_cover_is_exact_on_random_sites() -> None:
    """Larger random sites than hypothesis draws (it shrinks toward small ones): a few
    directories up to three deep, up to 24 files, 14 changed, budgets from too few to all."""
    rng = random.Random(1)
    checked = 0
    while checked < 300:
        pool = [
            "".join(rng.choice("abcd") + "/" for _ in range(rng.randint(0, 3))) for _ in range(8)
        ]
        manifest = list(
            dict.fromkeys(rng.choice(pool) + rng.choice("vwxyz") for _ in range(rng.randint(1, 24)))
        )
        changed = rng.sample(manifest, rng.randint(1, min(14, len(manifest))))
        if rng.random() < 0.3:
            changed.append("q/" + rng.choice(pool) + "new")
        if len({d for p in changed for d in ancestors(p, False)}) > 12:
            continue
        check_cover(changed, manifest, rng.randint(0, len(changed) + 1), rng.random() < 0.3)
        checked += 1


def test_a_better_cover_found_beside_the_lagrangian_one_is_the_one_taken() -> None:
    # The Lagrangian cover here takes 5 entries (c/*, d/*: 3 unchanged files); spreading one
    # wildcard gives 6 entries and 2, which is also the lower bound: the optimum is that one.
    manifest = ["c/a/c/x", "z", "x", "v", "d/y", "d/c/c/x", "c/y", "d/c/c/v", "d/c/c/y"]
    manifest += ["a/x", "c/a/c/z", "d/c/c/z", "c/x", "d/w"]
    changed = ["d/y", "d/c/c/v", "c/y", "d/c/c/z", "z", "x", "v", "c/a/c/z", "d/c/c/x"]
    changed += ["c/a/c/x"]
    check_cover(changed, manifest, 6, allow_all=False)
    assert sum(covers(changed, manifest, 6).unchanged.values()) == 2


def test_a_wildcard_purges_the_unchanged_files_under_it() -> None:
    manifest = ["a/1", "a/2", "a/3", "b/1", "b/2", "c/1", "index.html"]
    changed = ["a/1", "a/2", "b/1", "c/1"]
    # Four exact entries fit: nothing extra.
    assert covers(changed, manifest, 4).entries == tuple(changed)
    # Three: a/* (one unchanged file) beats b/* (one as well, but saves nothing more).
    cover = covers(changed, manifest, 3)
    assert cover.entries == ("a/*", "b/1", "c/1")
    assert cover.wildcards == {"a/*": ("a/1", "a/2")}
    assert cover.unchanged == {"a/*": 1}
    # One: impossible without '*' (three top-level groups): the fewest entries instead.
    cover = covers(changed, manifest, 1)
    assert len(cover.entries) == 3
    assert covers(changed, manifest, 1, allow_all=True).entries == ("*",)


def test_changed_paths_missing_from_the_manifest_are_sent_exactly() -> None:
    cover = covers(["a/1", "a/2", "b/new"], ["a/1", "a/2", "a/3"], 2)
    assert cover.entries == ("a/*", "b/new")
    assert cover.unlisted == ("b/new",)
    assert cover.unchanged == {"a/*": 1}
    # Each takes an entry of the budget; one a wildcard chosen anyway covers is not sent twice.
    cover = covers(["a/1", "a/2", "a/new"], ["a/1", "a/2", "a/3"], 2)
    assert cover.entries == ("a/*",)
    assert cover.wildcards == {"a/*": ("a/1", "a/2", "a/new")}
    assert cover.unlisted == ("a/new",)


def test_a_manifest_lists_files() -> None:
    with pytest.raises(ValidationError, match=r"manifest\[1\] is a wildcard"):
        covers(["a"], ["a", "b/*"], 1)
    with pytest.raises(ValidationError, match=r"manifest\[0\]"):
        covers(["a"], ["\x00"], 1)
    with pytest.raises(ValidationError, match="single string"):
        covers(["a"], "a", 1)
