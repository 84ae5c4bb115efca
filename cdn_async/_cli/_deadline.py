"""``cdn-async purge ID --from-file changed.txt --manifest all.txt --deadline 60s``.

The changed paths are covered by exact paths and ``dir/*`` wildcards chosen from the manifest
so that the purge meets the deadline, purging the fewest files that did not change
(``plan_purge``, then one ``cdn.endpoints.purge`` call). ``--dry-run`` prints the plan (a
table, or ``--json``) and sends nothing; it needs no token.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, TextIO

import click

from .. import PurgePlan, PurgeProgress, PurgeReport, RateLimits, plan_purge
from .. import _validation as check
from ..errors import CDNError, PurgeError
from ._app import ApiOptions, read_paths, run_command
from ._output import (
    EXIT_API_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    distinct_errors,
    dump,
    err,
    error_line,
    n,
    out,
    purge_exit_code,
    report_json,
    stdout_console,
)
from ._progress import DEFAULT_HEARTBEAT, progress_display
from ._settled import Settled
from ._signals import Stop
from ._wire import Wire, wait_for_the_wire

_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``--deadline``'s value in seconds: ``60s``, ``90`` (seconds), ``2m``, ``1h30m``."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(a + u for a, u in parts) != text:
        raise click.BadParameter(f"{value!r} is not a duration such as 60s, 90, 5m or 1h30m")
    return sum(float(a) * _UNIT[u] for a, u in parts)


def _entries(count: int) -> str:
    return "1 entry" if count == 1 else f"{count} entries"


def plan_json(endpoint_id: str, plan: PurgePlan, deadline: float | None) -> dict[str, Any]:
    """A plan as JSON: what is sent, what each wildcard covers and purges unchanged, the
    requests, seconds, and whether it meets the deadline."""
    wildcards = plan.wildcards
    return {
        "endpoint_id": endpoint_id,
        "entries": list(plan.paths),
        "wildcards": {
            w: {"covers": list(paths), "unchanged": plan.unchanged_by.get(w, 0)}
            for w, paths in wildcards.items()
        },
        "exact": len(plan.paths) - len(wildcards),
        "unchanged": plan.unchanged,
        "unlisted": list(plan.unlisted),
        "requests": plan.requests,
        "seconds": plan.seconds,
        "deadline": deadline,
        "allowed": plan.allowed,
        "fits": plan.fits,
        "late_by": plan.late_by,
    }


def print_plan(endpoint_id: str, plan: PurgePlan, deadline: float | None, changed: int) -> None:
    """The plan as a table of wildcards, then one line of totals and one on the deadline."""
    from rich.table import Table

    wildcards = plan.wildcards
    table = Table(title=f"Purge plan for endpoint {endpoint_id}", title_justify="left")
    table.add_column("entry", no_wrap=True)
    table.add_column("changed paths covered", justify="right")
    table.add_column("unchanged files purged", justify="right")
    for w, paths in sorted(wildcards.items(), key=lambda item: -len(item[1])):
        table.add_row(w, str(len(paths)), str(plan.unchanged_by.get(w, 0)))
    exact = len(plan.paths) - len(wildcards)
    table.add_row(f"({n(exact, 'exact path')})", str(exact), "0")
    console = stdout_console()
    console.print(table)
    out(
        f"{n(changed, 'changed path')} in {_entries(len(plan.paths))} "
        f"({n(len(wildcards), 'wildcard')}), {n(plan.requests, 'request')}, the last "
        f"{plan.seconds:.0f} s from the first; {n(plan.unchanged, 'unchanged file')} purged"
        + (
            f"; {n(len(plan.unlisted), 'changed path')} not in the manifest, sent exactly."
            if plan.unlisted
            else "."
        )
    )
    if plan.allowed is not None:
        verdict = "fits" if plan.fits else f"MISSES it by {plan.late_by:.0f} s"
        out(f"Deadline {deadline:g} s allows {_entries(plan.allowed)}: the plan {verdict}.")


def planned_purge(
    api: ApiOptions,
    endpoint_id: str,
    files: list[str],
    manifest_file: TextIO | None,
    deadline: float | None,
    *,
    dry_run: bool,
    allow_all: bool,
    as_json: bool,
    no_progress: bool,
    heartbeat: float = DEFAULT_HEARTBEAT,
) -> int:
    """``purge`` with ``--manifest``, ``--deadline`` or ``--dry-run``."""
    if not files and allow_all and manifest_file is None:
        files = ["*"]  # --all alone: everything, as without a deadline
    if not files:
        raise click.UsageError("no paths to purge: give PATH... or --from-file FILE")
    manifest = read_paths(manifest_file) if manifest_file is not None else None
    if dry_run:
        cdn_id = check.uuid_str("cdn_id", endpoint_id)
        limits = RateLimits.documented()
        if api.time_scale != 1.0:
            limits = limits.scaled(api.time_scale)
        try:
            plan = plan_purge(
                files, limits, manifest=manifest, deadline=deadline, allow_all=allow_all
            )
        except CDNError as exc:
            err(error_line(exc))
            return EXIT_USAGE
        if as_json:
            dump(plan_json(cdn_id, plan, deadline))
        else:
            print_plan(cdn_id, plan, deadline, len(dict.fromkeys(check.files(files))))
        return EXIT_OK if plan.fits else EXIT_API_ERROR
    return run_command(
        lambda stop: _send(
            api,
            endpoint_id,
            files,
            manifest,
            deadline,
            allow_all=allow_all,
            as_json=as_json,
            no_progress=no_progress,
            heartbeat=heartbeat,
            stop=stop,
        ),
        as_json=as_json,
    )


async def _send(
    api: ApiOptions,
    cdn_id: str,
    files: list[str],
    manifest: list[str] | None,
    deadline: float | None,
    *,
    allow_all: bool,
    as_json: bool,
    no_progress: bool,
    heartbeat: float,
    stop: Stop,
) -> int:
    started = time.monotonic()
    changed = list(dict.fromkeys(check.files(files)))
    wire = Wire()
    async with api.connect([wire]) as (cdn, queue):
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        display = progress_display(
            cdn, description="purging", no_progress=no_progress, heartbeat=heartbeat
        )
        settled = Settled(cdn_id, changed)

        def on_batch(progress: PurgeProgress) -> None:
            settled.add(progress)
            display.update(progress.done, settled.batches, len(settled.failed))

        try:
            async with display:
                within = f" by {deadline:g} s" if deadline is not None else ""
                display.announce(
                    len(changed),
                    f"Purging {n(len(changed), 'changed path')} of endpoint {cdn_id}{within}...",
                )
                try:
                    report = await cdn.endpoints.purge(
                        cdn_id,
                        files,
                        manifest=manifest,
                        deadline=deadline,
                        allow_all=allow_all,
                        on_batch=on_batch,
                    )
                except PurgeError as exc:
                    report = exc.report
        except asyncio.CancelledError:
            # As a purge without a deadline does: nothing more is sent, the batch on the wire
            # is waited for, and every changed path has an outcome (the paths of batches the
            # server accepted, wildcards included, purged; the rest failed).
            unsent = await wait_for_the_wire(wire, stop, shared=queue is not None)
            settled.confirm_late(wire.accepted)
            return _print_stopped(settled.report(unsent=unsent), stop, as_json=as_json)
    elapsed = time.monotonic() - started
    return _print_report(report, stop, elapsed, len(changed), as_json=as_json)


def _report_json(report: PurgeReport, code: int) -> dict[str, Any]:
    data = report_json(report, code=code)
    data["wildcards"] = {w: list(paths) for w, paths in report.wildcards.items()}
    data["unchanged"] = report.unchanged
    data["unlisted"] = list(report.unlisted)
    return data


def _print_stopped(report: PurgeReport, stop: Stop, *, as_json: bool) -> int:
    """What was purged before the stop signal, and the exit code (128 + the signal)."""
    code = purge_exit_code(report, stop.exit_code)
    purged, total = len(report.purged), len(report.purged) + len(report.failed)
    err(
        f"Interrupted by {stop.name or 'SIGINT'}: {purged} of {n(total, 'changed path')} "
        f"of endpoint {report.endpoint_id} were purged ({n(report.requests, 'request')}); the "
        f"other {total - purged} were not confirmed: exit {code}."
    )
    if as_json:
        dump(_report_json(report, code))
    return code


def _print_report(
    report: PurgeReport, stop: Stop, elapsed: float, total: int, *, as_json: bool
) -> int:
    """The summary, the report with its wildcards, each distinct error, and the exit code."""
    code = purge_exit_code(report, stop.exit_code)
    summary = (
        f"Purged {len(report.purged)} of {n(total, 'changed path')} of endpoint "
        f"{report.endpoint_id} in {n(report.requests, 'request')}, {elapsed:.1f} s, with "
        f"{n(len(report.wildcards), 'wildcard')} ({n(report.unchanged, 'unchanged file')} "
        "purged with them)."
    )
    if as_json:
        err(summary)
        dump(_report_json(report, code))
    else:
        out(summary)
    if report.failed:
        for error in distinct_errors(report.failed.values()):
            err(error_line(error))
        err(f"{n(len(report.failed), 'path')} failed to purge: exit {code}.")
    return code
