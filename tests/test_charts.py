"""The README's budget charts (``benchmarks/charts.py``): the counting and the SVG.

``benchmarks`` is a package run from the repository root (``python -m benchmarks.charts``);
pytest puts the root on ``sys.path``. The module's top level needs only the standard library;
the benchmark runs it wraps import lazily.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET

import aiohttp
import pytest

from benchmarks import charts
from cdn_async.testing import FakeCDNServer, JournalEntry

SVG = "{http://www.w3.org/2000/svg}"
SCALE = 0.01  # the cdn budget: 5 requests / 0.1 s


def entry(arrival: float, status: int = 200, *, files: int = 0) -> JournalEntry:
    body = {"files": [f"f{i}.css" for i in range(files)]} if files else None
    return JournalEntry(
        arrival=arrival,
        method="DELETE" if files else "GET",
        path="/v2/cdn/endpoints/x" + ("/cache" if files else ""),
        query={},
        body=body,
        status=status,
        rule="ok" if status != 429 else "rate_limit:cdn",
        op="purge" if files else "get",
        counted=status != 429,
    )


def test_trailing_window_counts_each_stamp_for_exactly_one_period() -> None:
    steps = charts.trailing_counts([(0.0, 1), (1.0, 1), (2.0, 1)], 2.0)
    # At 2 the first stamp leaves as the third arrives: the count stays 2, no extra point.
    assert steps == [(0.0, 1), (1.0, 2), (3.0, 1), (4.0, 0)]
    assert [charts.count_at(steps, t) for t in (-0.5, 0.0, 1.5, 1.999, 2.0, 3.0, 4.0)] == [
        0,
        1,
        2,
        2,
        2,
        1,
        0,
    ]
    # Purges count their paths; stamps may come in any order.
    assert charts.trailing_counts([(1.0, 10), (0.0, 50)], 2.0) == [
        (0.0, 50),
        (1.0, 60),
        (2.0, 10),
        (3.0, 0),
    ]


def test_a_429_is_drawn_at_the_count_it_would_have_made() -> None:
    journal = [entry(10.0, files=50), entry(10.5, 429, files=50), entry(11.0, files=20)]
    panel = charts.window_panel("x", "#000", journal, 1.0, charts.files_cost)
    assert panel.refused == [(0.5, 100)]
    assert (panel.counted, panel.units, panel.peak, panel.end) == (2, 70, 50, 1.0)


def series_tops(d: str) -> float:
    """The highest point (smallest y) a series path reaches."""
    return min(float(v) for v in re.findall(r"V([-\d.]+)", d))


def render(panels: list[charts.Panel], limit: int) -> ET.Element:
    svg = charts.render_chart(
        title="Requests counted in the trailing window",
        subtitle="synthetic",
        panels=panels,
        limit=limit,
        unit="requests",
        x_label="time, in periods",
        footer=["Machine: test-box", "Date: 2026-01-02"],
    )
    return ET.fromstring(svg)


def test_chart_shows_each_client_the_limit_and_every_429() -> None:
    # Limit 2 per 1-s window. "steady" fills it and is never refused; "bursty" sends 2, then
    # 2 more within the same second (429s), twice.
    steady = [entry(t) for t in (5.0, 5.1, 6.0, 6.1, 7.0, 7.1)]
    bursty = [
        entry(t, 429 if k % 4 >= 2 else 200)
        for k, t in enumerate((20.0, 20.1, 20.4, 20.7, 21.5, 21.6, 21.9, 22.2))
    ]
    panels = [
        charts.window_panel("steady", "#00f", steady, 1.0, charts.request_cost),
        charts.window_panel("bursty", "#f80", bursty, 1.0, charts.request_cost),
    ]
    root = render(panels, 2)
    assert root.tag == f"{SVG}svg"
    assert root.findtext(f"{SVG}title") == "Requests counted in the trailing window"

    paths = list(root.iter(f"{SVG}path"))
    series = {p.get("data-client"): p for p in paths if p.get("class") == "series"}
    limits = [p for p in paths if p.get("class") == "limit"]
    refused = {p.get("data-client"): p for p in paths if p.get("class") == "refused"}
    assert list(series) == ["steady", "bursty"]
    assert len(limits) == 2 and {p.get("data-limit") for p in limits} == {"2"}

    # Each client's line reaches its panel's limit line and never goes above it.
    for client, limit_line in zip(series, limits, strict=True):
        limit_y = float(re.match(r"M[\d.]+ ([\d.]+)", limit_line.get("d", "")).group(1))  # type: ignore[union-attr]
        assert series_tops(series[client].get("d", "")) == pytest.approx(limit_y, abs=0.05)

    # One cross per 429, above the limit line (the 3rd request in a window of 2).
    assert "steady" not in refused
    crosses = refused["bursty"]
    assert crosses.get("data-count") == "4"
    assert crosses.get("d", "").count("M") == 4
    text = " ".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))
    # Caption: the 429s, the requests, and the last stamp against an exact window's bound
    # (6 requests at 2 a period need 2 periods from first to last; 4 need 1).
    assert "steady: 0 \u00d7 429 \u00b7 6 requests \u00b7 last at 2.1 periods (bound: 2)" in text
    assert "bursty: 4 \u00d7 429 \u00b7 4 requests \u00b7 last at 2.2 periods (bound: 1)" in text
    assert "Machine: test-box" in text and "Date: 2026-01-02" in text
    for legend in ("steady", "bursty", "limit (2 requests per window)", "429"):
        assert legend in text


@pytest.mark.fake_cdn(time_scale=SCALE)
async def test_a_real_run_counted_by_the_fake_server(fake_cdn: FakeCDNServer) -> None:
    """The chain the README chart uses, on a tiny run: the SDK's requests fill the cdn window
    to its limit and no further; a burst that ignores the window draws 429s, each charted."""
    ep_id = fake_cdn.add_endpoint("static.nyc3.digitaloceanspaces.com")["id"]
    async with fake_cdn.client() as cdn:
        await asyncio.gather(*(cdn.endpoints.get(ep_id) for _ in range(12)))
    period = 10.0 * SCALE
    ours = charts.window_panel("cdn-async", "#00f", fake_cdn.journal, period, charts.request_cost)
    assert (ours.counted, ours.peak, ours.refused) == (12, 5, [])

    fake_cdn.reset_journal()
    await asyncio.sleep(period)  # the SDK's requests leave the window
    url = f"{fake_cdn.url}/v2/cdn/endpoints/{ep_id}"
    headers = {"Authorization": f"Bearer {fake_cdn.token}"}
    async with aiohttp.ClientSession() as http:

        async def get() -> int:
            async with http.get(url, headers=headers) as resp:
                return resp.status

        statuses = await asyncio.gather(*(get() for _ in range(8)))
    burst = charts.window_panel("burst", "#f80", fake_cdn.journal, period, charts.request_cost)
    assert statuses.count(429) == 3 == len(burst.refused)
    assert burst.peak == 5 and {y for _, y in burst.refused} == {6}
    root = render([ours, burst], 5)
    # The three 429s arrived within a millisecond: one cross on the chart, counted as three.
    (crosses,) = (p for p in root.iter(f"{SVG}path") if p.get("class") == "refused")
    assert crosses.get("data-client") == "burst" and crosses.get("data-count") == "3"
