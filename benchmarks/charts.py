"""Charts of what the fake server counted, window by window: cdn-async vs the alternatives.

Run from the repository root: ``python -m benchmarks.charts`` (about 2 minutes). Writes
``benchmarks/budget-window.svg`` and ``benchmarks/purge-window.svg`` (or into ``--out``) and
prints the machine and date for their caption. ``--smoke``: tiny sizes in a few seconds, written
into ``--out`` or else a temporary directory, never over the committed charts.

Both charts come from the fake server's own journal of one run (``FakeCDNServer.journal``: the
server's arrival stamp of every request, and whether it was counted or refused), using the
scenario functions of ``bench_e2e.py`` and ``bench_purge.py``:

1. ``budget-window.svg``: ``bench_e2e.py``'s scenario A (``get()`` at saturation from 50 tasks,
   2.5 + 2.5 ms latency with 5 ms jitter, ``time_scale`` 0.05), cdn-async vs three stacked
   aiolimiter ``AsyncLimiter``s. y = requests the server counted in the trailing window of the
   cdn budget (5 / 10 s), x = time in periods of that budget.
2. ``purge-window.svg``: ``bench_purge.py``'s 10,000-path purge (``time_scale`` 0.01),
   cdn-async's ``purge()`` vs the two hand-written 50-paths-per-request loops. y = paths the
   server counted in the trailing window of the files budget (50 / 20 s). (The third
   hand-written loop, one request per path, is held by the cdn budget and never gets near the
   files limit, so it is left out.)

The server refuses (429) a request that would take a window over its limit, so what it counted
never exceeds the limit; each 429 is drawn as a red cross at the count it would have made.

Only the standard library draws them (no matplotlib): the SVG is written by hand. The trailing
count only changes when a request is stamped or leaves the window a period later, so it is an
exact step function (``trailing_counts``); each pixel column of the chart shows its mean over
the column's slice of time, which is exact wherever the count holds for a pixel or more and
keeps the file small.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from xml.sax.saxutils import escape

from benchmarks._report import SMOKE_HELP

HERE = os.path.dirname(os.path.abspath(__file__))

# Colours chosen to read on GitHub's light and dark themes alike: the chart sits on its own
# white rounded card, so the text is dark on white whatever the page behind it.
BACKGROUND = "#ffffff"
BORDER = "#d0d7de"
TEXT = "#1f2328"
MUTED = "#59636e"
GRID = "#e6e9ed"
RED = "#cf222e"
BLUE = "#0969da"
ORANGE = "#bc4c00"
PURPLE = "#8250df"
FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif"


class Entry(Protocol):
    """What the charts read from a journal entry (``cdn_async.testing.JournalEntry``)."""

    @property
    def arrival(self) -> float: ...
    @property
    def status(self) -> int | None: ...
    @property
    def counted(self) -> bool: ...
    @property
    def op(self) -> str | None: ...
    @property
    def body(self) -> Any: ...


# -- counting -----------------------------------------------------------------------------


def trailing_counts(stamps: Iterable[tuple[float, int]], period: float) -> list[tuple[float, int]]:
    """The units in the trailing window at every moment, as an exact step function.

    A unit stamped at ``t`` counts in ``[t, t + period)``, as the fake server's sliding windows
    count it, so the count only changes at stamps and at expiries.

    Args:
        stamps: ``(stamp, units)`` pairs, in any order.
        period: The window's length, in the stamps' unit.

    Returns:
        ``(time, count)`` change points in time order: the count is ``count`` from ``time``
        until the next point (0 before the first). Stamps at 0, 1, 2 with period 2 give
        ``[(0, 1), (1, 2), (3, 1), (4, 0)]``.
    """
    deltas: defaultdict[float, int] = defaultdict(int)
    for stamp, units in stamps:
        deltas[stamp] += units
        deltas[stamp + period] -= units
    steps: list[tuple[float, int]] = []
    count = 0
    for t in sorted(deltas):
        count += deltas[t]
        if not steps or steps[-1][1] != count:
            steps.append((t, count))
    return steps


def count_at(steps: Sequence[tuple[float, int]], t: float) -> int:
    """The count of a ``trailing_counts`` step function at ``t`` (0 before its first point)."""
    i = bisect.bisect_right(steps, t, key=lambda step: step[0])
    return steps[i - 1][1] if i else 0


def column_means(
    steps: Sequence[tuple[float, int]], start: float, width: float, columns: int
) -> list[float]:
    """The time-weighted mean of a step function over each of ``columns`` equal slices.

    Args:
        steps: A ``trailing_counts`` step function.
        start: Where the first slice starts.
        width: Each slice's length.
        columns: How many slices.

    Returns:
        One mean per slice.
    """
    means = []
    i = bisect.bisect_right(steps, start, key=lambda step: step[0])
    value = float(steps[i - 1][1]) if i else 0.0
    for c in range(columns):
        lo, hi = start + c * width, start + (c + 1) * width
        area, at = 0.0, lo
        while i < len(steps) and steps[i][0] < hi:
            area += value * (steps[i][0] - at)
            at, value = steps[i][0], float(steps[i][1])
            i += 1
        area += value * (hi - at)
        means.append(area / width)
    return means


def request_cost(entry: Entry) -> int:
    """Units a request takes from the cdn budget: 1 for any CDN API call."""
    return 1 if entry.op is not None else 0


def files_cost(entry: Entry) -> int:
    """Units a request takes from the files budget: its number of purge paths."""
    if entry.op == "purge" and isinstance(entry.body, dict):
        files = entry.body.get("files")
        if isinstance(files, list):
            return len(files)
    return 0


# -- one client's run ---------------------------------------------------------------------


@dataclass
class Panel:
    """One client's run, in periods of the budget since its first request.

    Attributes:
        name: The client, as the legend shows it.
        colour: Its line's colour.
        steps: The trailing-window count (``trailing_counts``), times in periods.
        refused: ``(time, count it would have made)`` for each 429, times in periods.
        counted: Requests the server counted.
        units: Units they took (requests, or paths).
        end: The last request's arrival, in periods.
        note: Replaces the timing in the panel's caption (e.g. how many paths failed).
    """

    name: str
    colour: str
    steps: list[tuple[float, int]]
    refused: list[tuple[float, int]]
    counted: int
    units: int
    end: float
    note: str = ""

    @property
    def peak(self) -> int:
        """The most the trailing window held at any moment."""
        return max((count for _, count in self.steps), default=0)

    def bound(self, limit: int) -> int:
        """The fewest periods from first to last stamp an exact window of ``limit`` allows.

        Any window of one period holds at most ``limit`` units, so ``units`` units need
        ``ceil(units / limit)`` windows: their stamps span at least one period fewer.
        """
        return max(0, math.ceil(self.units / limit) - 1)


def window_panel(
    name: str,
    colour: str,
    journal: Sequence[Entry],
    period: float,
    cost: Callable[[Entry], int],
    note: str = "",
) -> Panel:
    """Count one run's journal in trailing windows of ``period`` seconds.

    Args:
        name: The client, as the legend shows it.
        colour: Its line's colour.
        journal: The server's journal of the run (``FakeCDNServer.journal``).
        period: The budget's (scaled) period, in seconds.
        cost: The units a request takes from the budget (``request_cost``, ``files_cost``).
        note: Replaces the timing in the panel's caption (e.g. how many paths failed).

    Returns:
        The panel, times in periods since the run's first request.
    """
    entries = sorted(journal, key=lambda e: e.arrival)
    t0 = entries[0].arrival if entries else 0.0
    stamps = [((e.arrival - t0) / period, cost(e)) for e in entries if e.counted and cost(e) > 0]
    steps = trailing_counts(stamps, 1.0)
    refused = []
    for e in entries:
        if e.status == 429:
            t = (e.arrival - t0) / period
            refused.append((t, count_at(steps, t) + cost(e)))
    return Panel(
        name=name,
        colour=colour,
        steps=steps,
        refused=refused,
        counted=len(stamps),
        units=sum(units for _, units in stamps),
        end=(entries[-1].arrival - t0) / period if entries else 0.0,
        note=note,
    )


# -- SVG ----------------------------------------------------------------------------------


def _num(x: float) -> str:
    """A coordinate with at most one decimal, no trailing zeros."""
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _ticks(top: float, target: int) -> list[float]:
    """About ``target`` round tick values from 0 to ``top``."""
    if top <= 0:
        return [0.0]
    raw = top / target
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if step < 1:
        step = 1.0
    return [i * step for i in range(int(top / step) + 1)]


@dataclass
class Svg:
    """A minimal SVG writer: elements appended as text."""

    width: int
    height: int
    parts: list[str] = field(default_factory=list)

    def add(self, tag: str, text: str | None = None, **attrs: Any) -> None:
        """Append one element; ``attr_name`` becomes ``attr-name``."""
        rendered = " ".join(
            f'{k.rstrip("_").replace("_", "-")}="{escape(str(v), {chr(34): "&quot;"})}"'
            for k, v in attrs.items()
            if v is not None
        )
        if text is None:
            self.parts.append(f"<{tag} {rendered}/>")
        else:
            self.parts.append(f"<{tag} {rendered}>{escape(text)}</{tag}>")

    def text(self, x: float, y: float, text: str, **attrs: Any) -> None:
        """Append a text element."""
        self.add("text", text, x=_num(x), y=_num(y), **attrs)

    def render(self, title: str) -> str:
        """The whole document."""
        return "\n".join(
            [
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" '
                f'font-family="{FONT}" font-size="13" fill="{TEXT}" role="img">',
                f"<title>{escape(title)}</title>",
                *self.parts,
                "</svg>",
                "",
            ]
        )


def render_chart(
    *,
    title: str,
    subtitle: str,
    panels: Sequence[Panel],
    limit: int,
    unit: str,
    x_label: str,
    footer: Sequence[str],
    width: int = 960,
    panel_height: int = 120,
) -> str:
    """An SVG chart: one panel per client, all on the same time axis.

    Each panel draws the client's trailing-window count (a filled step line, one ``path`` with
    ``class="series"``), the limit (``class="limit"``) and each 429 as a cross at the count it
    would have made (one ``path`` with ``class="refused"`` per client, one subpath per 429;
    crosses less than a pixel apart are merged, ``data-count`` says how many 429s it draws).

    Args:
        title: The chart's title.
        subtitle: One line under it (the scenario).
        panels: One per client, top to bottom.
        limit: The budget's limit.
        unit: What is counted (``"requests"``, ``"paths"``), for the y-axis label.
        x_label: The x-axis label.
        footer: Lines at the bottom (the machine, the date, the command).
        width: The SVG's width in pixels.
        panel_height: Each panel's plot height in pixels.

    Returns:
        The SVG document.
    """
    left, right = 64, 24
    caption, gap, headroom = 24, 14, 8
    plot_w = width - left - right
    y_top = max([limit, *(y for p in panels for _, y in p.refused)])
    # Up to one period after the last request: by then its window is empty.
    x_end = (max([0.0, *(p.end for p in panels)]) + 1.0) * 1.01
    x_ticks = _ticks(x_end, 10)
    y_ticks = _ticks(y_top, 4)
    if y_ticks[-1] < y_top:
        y_ticks.append(y_ticks[-1] + (y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else y_top))
    y_max = y_ticks[-1]

    # The legend, wrapped to the plot's width (about 7.2 px a character at 12 px).
    legend: list[tuple[str, str]] = [(p.name, p.colour) for p in panels]
    legend += [(f"limit ({limit} {unit} per window)", "limit")]
    legend += [("429, at the count it would have made", "refused")]
    rows: list[list[tuple[float, str, str]]] = [[]]
    lx = 0.0
    for label, kind in legend:
        item = 34 + 7.2 * len(label)
        if lx and lx + item > plot_w:
            rows.append([])
            lx = 0.0
        rows[-1].append((lx, label, kind))
        lx += item
    top = 78 + 20 * len(rows)
    bottom = top + len(panels) * (caption + panel_height + gap)
    height = bottom + 44 + 18 * len(footer) + 10
    svg = Svg(width, height)
    svg.add(
        "rect",
        x=0.5,
        y=0.5,
        width=width - 1,
        height=height - 1,
        rx=10,
        fill=BACKGROUND,
        stroke=BORDER,
    )
    svg.text(left, 30, title, font_size=17, font_weight="bold")
    svg.text(left, 50, subtitle, fill=MUTED, font_size=12)

    for r, row in enumerate(rows):
        base = 76 + 20 * r
        for dx, label, kind in row:
            x = left + dx
            if kind == "limit":
                svg.add(
                    "path",
                    d=f"M{_num(x)} {base - 5}h16",
                    stroke=TEXT,
                    stroke_width=1.5,
                    stroke_dasharray="5 3",
                )
            elif kind == "refused":
                svg.add(
                    "path", d=f"M{_num(x + 3)} {base - 9}l8 8m0-8l-8 8", stroke=RED, stroke_width=2
                )
            else:
                svg.add(
                    "rect", x=_num(x), y=base - 10, width=14, height=10, fill=kind, fill_opacity=0.5
                )
            svg.text(x + 22, base, label, font_size=12)

    def x_of(t: float) -> float:
        return left + t / x_end * plot_w

    columns = plot_w
    for i, p in enumerate(panels):
        py = top + i * (caption + panel_height + gap) + caption
        refused = len(p.refused)

        def y_of(v: float, py: float = py) -> float:
            return py + panel_height - v / y_max * (panel_height - headroom)

        svg.text(
            left,
            py - 7,
            f"{p.name}: {refused:,} \u00d7 429 \u00b7 {p.counted:,} requests"
            + (f", {p.units:,} {unit}" if unit != "requests" else "")
            + " \u00b7 "
            + (p.note or f"last at {p.end:.1f} periods (bound: {p.bound(limit)})"),
            font_size=12.5,
            font_weight="bold" if refused == 0 else None,
        )
        for v in y_ticks:
            svg.add("path", d=f"M{left} {_num(y_of(v))}h{plot_w}", stroke=GRID, stroke_width=1)
            svg.text(left - 6, y_of(v) + 4, f"{v:g}", fill=MUTED, font_size=11, text_anchor="end")
        for t in x_ticks:
            svg.add("path", d=f"M{_num(x_of(t))} {py}v{panel_height}", stroke=GRID, stroke_width=1)
        svg.add(
            "path",
            d=f"M{left} {py}v{panel_height}h{plot_w}",
            stroke=MUTED,
            stroke_width=1,
            fill="none",
        )

        # The count, one mean per pixel column, drawn up to the run's last request.
        cols = max(1, min(columns, round((p.end + 1.0) / x_end * columns) + 1))
        means = column_means(p.steps, 0.0, x_end / columns, cols)
        d = [f"M{left} {_num(y_of(0))}"]
        last = None
        for c, mean in enumerate(means):
            y = _num(y_of(mean))
            if y != last:
                d.append(f"V{y}")
                last = y
            if c + 1 == len(means) or _num(y_of(means[c + 1])) != y:
                d.append(f"H{left + c + 1}")
        d.append(f"V{_num(y_of(0))}Z")
        svg.add(
            "path",
            class_="series",
            data_client=p.name,
            d="".join(d),
            fill=p.colour,
            fill_opacity=0.18,
            stroke=p.colour,
            stroke_width=1.5,
            stroke_linejoin="round",
        )
        svg.add(
            "path",
            class_="limit",
            data_limit=limit,
            d=f"M{left} {_num(y_of(limit))}h{plot_w}",
            stroke=TEXT,
            stroke_width=1.5,
            stroke_dasharray="5 3",
        )
        if p.refused:
            seen: dict[tuple[int, int], None] = {}
            for t, v in p.refused:
                seen[(round(x_of(t)), round(y_of(v)))] = None
            crosses = "".join(f"M{x - 3} {y - 3}l6 6m0-6l-6 6" for x, y in seen)
            svg.add(
                "path",
                class_="refused",
                data_client=p.name,
                data_count=refused,
                d=crosses,
                stroke=RED,
                stroke_width=1.5,
                fill="none",
            )
        svg.text(
            12,
            py + panel_height / 2,
            unit,
            fill=MUTED,
            font_size=11,
            text_anchor="middle",
            transform=f"rotate(-90 12 {_num(py + panel_height / 2)})",
        )

    for t in x_ticks:
        svg.text(x_of(t), bottom + 4, f"{t:g}", fill=MUTED, font_size=11, text_anchor="middle")
    svg.text(left + plot_w / 2, bottom + 24, x_label, font_size=12.5, text_anchor="middle")
    for k, line in enumerate(footer):
        svg.text(left, bottom + 50 + 18 * k, line, fill=MUTED, font_size=11.5)
    return svg.render(title)


# -- the two charts -----------------------------------------------------------------------


def caption_facts() -> tuple[str, str]:
    """The machine (``_report.machine()``) and today's date (UTC), for the captions."""
    from benchmarks._report import machine

    return machine(), datetime.datetime.now(datetime.UTC).date().isoformat()


async def budget_chart(scale: float, requests: int, tasks: int) -> tuple[list[Panel], str]:
    """Run ``bench_e2e.py``'s scenario A for both clients; one panel each."""
    from benchmarks import bench_e2e

    latency = (0.0025, 0.0025, 0.005)
    journals: dict[str, list[Any]] = {}
    await bench_e2e.run_cdn_async(
        scale, requests, tasks, latency, 1, on_journal=lambda j: journals.update(ours=j)
    )
    await bench_e2e.run_aiolimiter(
        scale, requests, tasks, latency, 1, on_journal=lambda j: journals.update(theirs=j)
    )
    period = bench_e2e.CDN_PERIOD * scale
    panels = [
        window_panel("cdn-async", BLUE, journals["ours"], period, request_cost),
        window_panel(
            "aiolimiter (3 stacked AsyncLimiters)", ORANGE, journals["theirs"], period, request_cost
        ),
    ]
    subtitle = (
        f"{tasks} tasks call get() until {requests} succeed, against the fake server on "
        f"loopback (2.5 + 2.5 ms latency, 5 ms jitter); every period \u00d7 {scale:g}"
    )
    return panels, subtitle


async def purge_chart(scale: float, size: int = 10_000) -> tuple[list[Panel], str]:
    """Run ``bench_purge.py``'s 10,000-path purge (or ``size``): cdn-async and the two 50-path
    loops."""
    from benchmarks import bench_purge

    paths, must = bench_purge.build_paths(size=size)
    journals: dict[str, list[Any]] = {}
    await bench_purge.run_cdn_async(scale, paths, must, on_journal=lambda j: journals.update(a=j))
    headers = await bench_purge.run_by_hand(
        scale, paths, batch=50, policy="headers", on_journal=lambda j: journals.update(b=j)
    )
    backoff = await bench_purge.run_by_hand(
        scale, paths, batch=50, policy="backoff", on_journal=lambda j: journals.update(c=j)
    )
    period = bench_purge.FILES_PERIOD * scale

    def note(r: dict[str, Any]) -> str:
        return f"{r['failed']:,} of {len(paths):,} paths failed" if r["failed"] else ""

    panels = [
        window_panel("cdn-async purge()", BLUE, journals["a"], period, files_cost),
        window_panel(
            "by hand: gather, retry 3\u00d7 per headers",
            PURPLE,
            journals["b"],
            period,
            files_cost,
            note(headers),
        ),
        window_panel(
            "by hand: gather, backoff until done",
            ORANGE,
            journals["c"],
            period,
            files_cost,
            note(backoff),
        ),
    ]
    subtitle = (
        f"one purge of {len(paths):,} paths ({len(must):,} to send), 50 paths per request, against the fake "
        f"server on loopback; every period \u00d7 {scale:g}"
    )
    return panels, subtitle


def write(path: str, svg: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(svg)
    print(f"wrote {os.path.relpath(path)} ({len(svg.encode()) / 1000:.1f} kB)")


def summary(panels: Sequence[Panel], limit: int) -> None:
    for p in panels:
        print(
            f"  {p.name}: {p.counted} counted ({p.units} units), {len(p.refused)} x 429, "
            f"peak {p.peak} of {limit}, last request at {p.end:.2f} periods"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="get() calls (default 100)")
    parser.add_argument("--tasks", type=int, default=50, help="concurrent tasks (default 50)")
    parser.add_argument("--scale", type=float, default=0.05, help="e2e time_scale (0.05)")
    parser.add_argument("--purge-scale", type=float, default=0.01, help="purge time_scale (0.01)")
    parser.add_argument("--out", default=None, help="where to write the SVGs (benchmarks/)")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    size = 10_000
    if args.smoke:
        args.requests, args.tasks, args.scale, args.purge_scale = 11, 5, 0.01, 0.002
        size = 500
    if args.out is None and args.smoke:  # never over the committed charts
        with tempfile.TemporaryDirectory(prefix="cdn-async-charts-") as tmp:
            args.out = tmp
            draw(args, size)
    else:
        args.out = HERE if args.out is None else args.out
        draw(args, size)


def draw(args: argparse.Namespace, size: int) -> None:
    mach, date = caption_facts()
    print(f"# charts ({mach}, {date})")
    t0 = time.perf_counter()
    command = "python -m benchmarks.charts"
    footer = [f"Machine: {mach}", f"Date: {date} \u00b7 regenerate: {command}"]

    panels, subtitle = asyncio.run(budget_chart(args.scale, args.requests, args.tasks))
    write(
        os.path.join(args.out, "budget-window.svg"),
        render_chart(
            title="Requests the server counted in the trailing 10-second window (cdn budget)",
            subtitle=subtitle,
            panels=panels,
            limit=5,
            unit="requests",
            x_label="time since the first request, in periods of the cdn budget "
            f"(10 s at the real API; {10 * args.scale:g} s here)",
            footer=footer,
        ),
    )
    summary(panels, 5)

    panels, subtitle = asyncio.run(purge_chart(args.purge_scale, size))
    write(
        os.path.join(args.out, "purge-window.svg"),
        render_chart(
            title="Paths the server counted in the trailing 20-second window (files budget)",
            subtitle=subtitle,
            panels=panels,
            limit=50,
            unit="paths",
            x_label="time since the first request, in periods of the files budget "
            f"(20 s at the real API; {20 * args.purge_scale:g} s here)",
            footer=footer,
            panel_height=110,
        ),
    )
    summary(panels, 50)
    print(f"machine: {mach}\ndate: {date}\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
