"""A purge that meets a deadline: the wildcard planner's speed, loop blocking, its trade-off
curve on a generated static site, and a run against the fake server.

Run from the repository root: ``python -m benchmarks.bench_wildcards`` (about a minute;
``--smoke``: tiny sizes in a few seconds, figures meaningless). Prints the machine and four
tables, and writes ``benchmarks/wildcards-curve.svg`` (``--out DIR`` elsewhere; never with
``--smoke`` unless ``--out`` is given).

The sites come from ``benchmarks/_sitegen.py`` (seeded; its docstring says how they are shaped:
pretty-URL pages in eight sections, each page's images in three widths, hashed assets, a
release mixing template edits, re-encoded images, content edits and scattered files).

1. speed: ``plan_purge(changed, manifest=..., deadline=D)`` for a 200,000-path manifest with
   20,000 changed, at deadlines from 20 s to an hour; best of N wall-clock seconds (reading and
   checking the manifest included) and best of N CPU seconds of the process (what a shared,
   loaded machine inflates least). Target: < 1 s.
2. loop blocking: the same planning as ``cdn.endpoints.purge(..., manifest=, deadline=)`` runs
   it (a few ms of work between yields) in an event loop with a ticker task sleeping 1 ms;
   the ticker's worst lateness is the longest the loop was blocked. Target: < 50 ms. For
   reference, the time of one full ``gc.collect()`` of the same heap: the planner's
   allocations trigger about one full pass of the collector per plan, which walks the whole
   heap (the caller's 200,000-path manifest included) in one go.
3. curve: a 50,000-file site, 10,000 changed, deadlines from 20 s to 67 minutes: the entries
   the deadline allows, the time to purge (the plan's last request, at the documented
   budgets' pace) and the unchanged files purged; against purging the 10,000 paths exactly
   and against ``*``.
4. against the fake: the 60 s plan of (3) sent by ``cdn.endpoints.purge(..., deadline=60 s)``
   to a ``FakeCDNServer(time_scale=S)`` whose edge caches the whole site: when each request
   arrived, when the call returned, and whether every changed path left the edge, in scaled
   seconds (real seconds / S).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import math
import os
import tempfile
import time
from collections.abc import Sequence

from benchmarks._report import SMOKE_HELP, machine, table
from benchmarks._sitegen import build_site
from benchmarks.charts import BACKGROUND, BLUE, BORDER, GRID, MUTED, ORANGE, PURPLE, TEXT, Svg, _num
from cdn_async import CDNClient, RateLimits, plan_purge
from cdn_async._planned import _run
from cdn_async._purge_plan import PurgePlan, plan_purge_steps
from cdn_async.testing import FakeCDNServer

HERE = os.path.dirname(os.path.abspath(__file__))
ORIGIN = "site.nyc3.digitaloceanspaces.com"
SPEED_DEADLINES = (20.0, 60.0, 300.0, 1200.0, 3600.0)
CURVE_DEADLINES = (20.0, 40.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 2700.0, 3600.0, 4020.0)


def label(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f}".removesuffix(".0") + " min"


def speed(files: int, changed: int, repeat: int) -> None:
    manifest, paths = build_site(files, changed)
    rows = []
    for deadline in SPEED_DEADLINES:
        best = cpu = math.inf
        plan: PurgePlan | None = None
        for _ in range(repeat):
            started, used = time.perf_counter(), time.process_time()
            plan = plan_purge(paths, manifest=manifest, deadline=deadline)
            best = min(best, time.perf_counter() - started)
            cpu = min(cpu, time.process_time() - used)
        assert plan is not None
        rows.append(
            [
                label(deadline),
                f"{plan.allowed:,}",
                f"{len(plan.paths):,}",
                f"{plan.unchanged:,}",
                f"**{best:.3f}**",
                f"{cpu:.3f}",
            ]
        )
    table(
        f"speed: plan_purge of {changed:,} changed in a {files:,}-path manifest (best of {repeat})",
        ["deadline", "entries allowed", "entries", "unchanged purged", "seconds", "CPU seconds"],
        rows,
    )


async def blocking(files: int, changed: int) -> None:
    manifest, paths = build_site(files, changed)
    rows = []
    for deadline in (60.0, 1200.0):
        lateness = [0.0]
        done = asyncio.Event()

        async def ticker(lateness: list[float] = lateness, done: asyncio.Event = done) -> None:
            loop = asyncio.get_running_loop()
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.001)
                lateness[0] = max(lateness[0], loop.time() - before - 0.001)

        started = time.perf_counter()
        gc.collect()  # what one full pass of the collector costs on this heap, for reference
        full = time.perf_counter() - started
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        out: list[PurgePlan] = []
        started = time.perf_counter()
        await _run(plan_purge_steps(paths, manifest=manifest, deadline=deadline, out=out))
        elapsed = time.perf_counter() - started
        done.set()
        await tick
        worst = lateness[0]
        rows.append(
            [label(deadline), f"{elapsed:.3f}", f"**{worst * 1000:.1f}**", f"{full * 1000:.1f}"]
        )
    table(
        f"loop blocking: planning {changed:,} changed in {files:,} inside the event loop",
        [
            "deadline",
            "planning seconds",
            "worst ticker lateness (ms)",
            "one full gc.collect() of this heap (ms)",
        ],
        rows,
    )


def curve(files: int, changed: int) -> tuple[list[tuple[float, PurgePlan]], PurgePlan, PurgePlan]:
    manifest, paths = build_site(files, changed)
    points = [(d, plan_purge(paths, manifest=manifest, deadline=d)) for d in CURVE_DEADLINES]
    exact = plan_purge(paths)
    star = plan_purge(["*"])
    unchanged_all = files - changed
    rows = [
        [
            label(d),
            f"{p.allowed:,}",
            f"{len(p.paths):,}",
            f"{p.requests:,}",
            label(p.seconds),
            f"{p.unchanged:,}",
            f"{p.unchanged / unchanged_all:.1%}",
        ]
        for d, p in points
    ]
    rows.append(
        [
            f"exact ({changed:,} paths)",
            "",
            f"{len(exact.paths):,}",
            f"{exact.requests:,}",
            label(exact.seconds),
            "0",
            "0%",
        ]
    )
    rows.append(["`*`", "", "1", "1", "0 s", f"{unchanged_all:,}", "100%"])
    table(
        f"curve: {changed:,} of {files:,} files changed, at the documented budgets",
        [
            "deadline",
            "entries allowed",
            "entries",
            "requests",
            "time to purge",
            "unchanged purged",
            "of unchanged",
        ],
        rows,
    )
    return points, exact, star


async def against_fake(files: int, changed: int, scale: float) -> None:
    manifest, paths = build_site(files, changed)
    async with FakeCDNServer(time_scale=scale) as server:
        ep = server.add_endpoint(ORIGIN)["id"]
        server.cache(ep, manifest)
        async with CDNClient(
            server.token, base_url=server.url, limits=RateLimits.documented().scaled(scale)
        ) as cdn:
            loop = asyncio.get_running_loop()
            before = loop.time()
            await cdn.endpoints.get(ep)
            round_trip = loop.time() - before
            await asyncio.sleep(20 * scale)  # the get's window passes
            server.reset_journal()
            started = loop.time()
            report = await cdn.endpoints.purge(ep, paths, manifest=manifest, deadline=60 * scale)
            returned = loop.time() - started
        arrivals = [r.at - started for r in server.purges]
        left = server.cached(ep) & set(paths)
    rows = [
        [
            f"{len(server.purges)}",
            " / ".join(f"{a / scale:.1f}" for a in arrivals),
            f"**{returned / scale:.1f}**",
            f"{round_trip / scale:.2f}",
            f"{len(report.purged):,} of {len(paths):,}",
            f"{len(left)}",
            f"{report.unchanged:,}",
        ]
    ]
    table(
        f"against the fake: deadline 60 s, time_scale {scale:g} (scaled seconds)",
        [
            "requests",
            "arrivals (s)",
            "returned (s)",
            "round trip (s)",
            "changed confirmed",
            "changed still cached",
            "unchanged purged",
        ],
        rows,
    )


def chart(
    points: Sequence[tuple[float, PurgePlan]],
    exact: PurgePlan,
    files: int,
    changed: int,
    footer: Sequence[str],
) -> str:
    """Unchanged files purged against the time to purge, log time axis: the planner's
    plans at each deadline, the exact purge and ``*``."""
    width, height = 960, 440
    left, right, top, plot_h = 72, 32, 84, 260
    plot_w = width - left - right
    unchanged_all = files - changed
    t_min, t_max = 10.0, max(4200.0, exact.seconds * 1.05)

    def x_of(t: float) -> float:
        return (
            left
            + (math.log10(max(t, t_min)) - math.log10(t_min))
            / (math.log10(t_max) - math.log10(t_min))
            * plot_w
        )

    def y_of(v: float) -> float:
        return top + plot_h - v / unchanged_all * plot_h

    svg = Svg(width, height + 18 * len(footer))
    svg.add(
        "rect",
        x=0.5,
        y=0.5,
        width=width - 1,
        height=height + 18 * len(footer) - 1,
        rx=10,
        fill=BACKGROUND,
        stroke=BORDER,
    )
    svg.text(
        left,
        30,
        "A purge that meets a deadline: unchanged files purged",
        font_size=17,
        font_weight="bold",
    )
    svg.text(
        left,
        50,
        f"{changed:,} of {files:,} files of a generated static site changed; at the documented "
        "budgets (50 files / 20 s); time to purge = the plan's last request",
        fill=MUTED,
        font_size=12,
    )
    legend = [
        ("cdn-async plan_purge(manifest=, deadline=)", BLUE),
        (f"exact: the {changed:,} paths", PURPLE),
        ("'*': everything", ORANGE),
    ]
    lx = left
    for name, colour in legend:
        svg.add("circle", cx=_num(lx + 6), cy=71, r=5, fill=colour)
        svg.text(lx + 16, 75, name, font_size=12)
        lx += 40 + 7.2 * len(name)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(frac * unchanged_all)
        svg.add("path", d=f"M{left} {_num(y)}h{plot_w}", stroke=GRID, stroke_width=1)
        svg.text(
            left - 6,
            y + 4,
            f"{frac * unchanged_all:,.0f}",
            fill=MUTED,
            font_size=11,
            text_anchor="end",
        )
    for t, name in (
        (10, "10 s"),
        (20, "20 s"),
        (60, "1 min"),
        (300, "5 min"),
        (600, "10 min"),
        (1200, "20 min"),
        (3600, "1 h"),
    ):
        x = x_of(t)
        svg.add("path", d=f"M{_num(x)} {top}v{plot_h}", stroke=GRID, stroke_width=1)
        svg.text(x, top + plot_h + 16, name, fill=MUTED, font_size=11, text_anchor="middle")
    svg.add("path", d=f"M{left} {top}v{plot_h}h{plot_w}", stroke=MUTED, stroke_width=1, fill="none")
    line = "".join(
        ("M" if i == 0 else "L") + f"{_num(x_of(p.seconds))} {_num(y_of(p.unchanged))}"
        for i, (_, p) in enumerate(points)
    )
    svg.add("path", class_="series", d=line, stroke=BLUE, stroke_width=2, fill="none")
    # Deadlines whose plans are the same point share one label ("30 min .. 67 min").
    same: dict[tuple[float, int], list[float]] = {}
    for d, p in points:
        same.setdefault((p.seconds, p.unchanged), []).append(d)
    for (seconds, unchanged), deadlines in same.items():
        x, y = x_of(seconds), y_of(unchanged)
        svg.add("circle", class_="plan", cx=_num(x), cy=_num(y), r=4, fill=BLUE)
        name = label(deadlines[0]) + (f" .. {label(deadlines[-1])}" if len(deadlines) > 1 else "")
        svg.text(x + 6, y - 6, f"{name}: {unchanged:,}", font_size=10.5, fill=TEXT)
    svg.add("circle", cx=_num(x_of(exact.seconds)), cy=_num(y_of(0)), r=6, fill=PURPLE)
    svg.text(
        x_of(exact.seconds) - 8,
        y_of(0) - 26,
        f"exact: {label(exact.seconds)}, 0",
        font_size=11,
        text_anchor="end",
        fill=PURPLE,
    )
    svg.add("circle", cx=_num(x_of(0)), cy=_num(y_of(unchanged_all)), r=6, fill=ORANGE)
    svg.text(
        x_of(0) + 10,
        y_of(unchanged_all) + 4,
        f"'*': 0 s, {unchanged_all:,}",
        font_size=11,
        fill=ORANGE,
    )
    svg.text(
        left + plot_w / 2,
        top + plot_h + 36,
        "time to purge (log scale)",
        font_size=12.5,
        text_anchor="middle",
    )
    svg.text(
        14,
        top + plot_h / 2,
        "unchanged files purged",
        fill=MUTED,
        font_size=11,
        text_anchor="middle",
        transform=f"rotate(-90 14 {_num(top + plot_h / 2)})",
    )
    for k, text in enumerate(footer):
        svg.text(left, height - 14 + 18 * k, text, fill=MUTED, font_size=11.5)
    return svg.render("Unchanged files purged against the time to purge")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--out", help="directory for the SVG (default: benchmarks/)")
    parser.add_argument("--scale", type=float, default=0.05, help="the fake's time_scale")
    args = parser.parse_args()
    print(machine())
    print(f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')}")
    if args.smoke:
        big, site, repeat, scale = (5_000, 1_000), (5_000, 1_000), 1, 0.01
    else:
        big, site, repeat, scale = (200_000, 20_000), (50_000, 10_000), 3, args.scale
    speed(*big, repeat)
    asyncio.run(blocking(*big))
    points, exact, _ = curve(*site)
    asyncio.run(against_fake(*site, scale))
    out_dir = args.out or (tempfile.mkdtemp() if args.smoke else HERE)
    path = os.path.join(out_dir, "wildcards-curve.svg")
    footer = [f"{machine()}", "python -m benchmarks.bench_wildcards"]
    with open(path, "w", encoding="utf-8") as f:
        f.write(chart(points, exact, *site, footer))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
