"""All or nothing under ``max_budget_wait``: a purge whose whole plan cannot be sent within the
deadline is refused before anything is sent.

A web handler that must answer within a deadline cannot use a purge that sends its first 50
paths and then gives up on the other 150: the caller cannot tell which went out. So before a
purge's paths join the endpoint's pending set, the time until its *last* request would be
admitted is bounded from below, and when that bound is past ``max_budget_wait`` the call
raises ``BudgetWaitTimeout`` (``retry_after``: that bound) with nothing sent or taken.

The bound, the larger of two lower bounds. The plan's: ``(ceil(units / limit) - 1) * period``
per budget over the paths pending ahead of the call and its own, as ``plan_purge`` says: a
unit counts for at least a period after it is sent and a window holds ``limit`` units at most,
so even on idle budgets the last of ``units`` goes that long after the first (docs/design.md,
"Budgets"). The store's: its own estimate (``admission_delay``) for the call's paths alone,
which counts what waits in it before the call (the endpoint's next batch among them) and what
its windows count. A store that cannot estimate gets the plan's alone.
Being a lower bound, a purge that passes may still find, later, a batch that cannot be admitted
in time (callers of higher priority arrived): that batch fails as before, in a ``PurgeError``
whose report says which paths went out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs

from ._answers import wait_timeout
from ._limits import Claim, EstimatesAdmission, Priority

if TYPE_CHECKING:
    from ._session import Session


def refuse_if_too_slow(
    session: Session, cdn_id: str, own: int, ahead: int, priority: Priority, *, plan_only: bool
) -> None:
    """Raise ``BudgetWaitTimeout`` when ``own`` new paths for ``cdn_id``, queued now behind
    ``ahead`` paths pending before them (not yet sent, not yet waiting in the store), surely
    cannot all be sent at ``priority`` within the session's ``max_budget_wait``; do nothing
    without one. ``plan_only``: the plan's bound alone (a shared purge queue, whose batches
    wait for their budgets as long as it takes, whichever process drains them)."""
    deadline = session.options.max_budget_wait
    if deadline is None or own <= 0:
        return
    # The plan's bound, over every path that goes before the last of ours.
    delay, budget = 0.0, ""
    for c in _claims(session, cdn_id, ahead + own):
        bound = (math.ceil(c.units / c.limit) - 1) * c.period
        if bound > delay:
            delay, budget = bound, c.budget
    # The store's, for our own paths (it counts what waits in it, and what it counts).
    store = session.store
    if not plan_only and isinstance(store, EstimatesAdmission):
        estimate, holder = store.admission_delay(_claims(session, cdn_id, own), priority)
        if estimate > delay:
            delay, budget = estimate, holder
    if delay > deadline:
        raise wait_timeout(delay, budget, deadline, early=True, what=f"purge of {own} path(s)")


def _claims(session: Session, cdn_id: str, files: int) -> tuple[Claim, ...]:
    """What requests carrying ``files`` paths, in full batches, take together."""
    limits = session.limits
    requests = math.ceil(files / limits.purge_batch_size)
    units = {b.name: (files if b.unit == "file" else requests) for b in limits.budgets}
    return tuple(
        attrs.evolve(c, units=units.get(c.budget, c.units)) for c in limits.claims(cdn_id, files)
    )
