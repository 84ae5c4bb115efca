"""All or nothing under ``max_budget_wait``: a purge whose whole plan cannot be sent within the
deadline is refused before anything is sent.

A web handler that must answer within a deadline cannot use a purge that sends its first 50
paths and then gives up on the other 150: the caller cannot tell which went out. So before a
purge's paths join the endpoint's pending set, the time until its *last* request would be
admitted is bounded from below, and when that bound is past ``max_budget_wait`` the call
raises ``BudgetWaitTimeout`` (``retry_after``: that bound) with nothing sent or taken.

The bound: the plan needs ``units`` of each budget, on top of what is already queued ahead of
it. The first ``rem`` of them (``units`` modulo the limit, or the limit) fit no sooner than the
store says a request needing ``rem`` would; after that each further ``limit`` units need a whole
``period`` more, since a unit counts for at least a period after it is sent and a window holds
``limit`` units at most (docs/design.md, "Budgets"). A store that cannot estimate (Redis) gets
the bound from the plan alone: ``(ceil(units / limit) - 1) * period``, as ``plan_purge`` says.
Being a lower bound, a purge that passes may still find, later, a batch that cannot be admitted
in time (callers of higher priority arrived): that batch fails as before, in a ``PurgeError``
whose report says which paths went out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import attrs

from ._answers import wait_timeout
from ._limits import EstimatesAdmission

if TYPE_CHECKING:
    from ._session import Session


def refuse_if_too_slow(session: Session, cdn_id: str, files: int) -> None:
    """Raise ``BudgetWaitTimeout`` when ``files`` paths queued now for ``cdn_id`` (pending ones
    of other callers included) surely cannot all be sent within the session's
    ``max_budget_wait``; do nothing without a deadline."""
    deadline = session.options.max_budget_wait
    if deadline is None or files <= 0:
        return
    limits = session.limits
    requests = math.ceil(files / limits.purge_batch_size)
    units = {b.name: (files if b.unit == "file" else requests) for b in limits.budgets}
    claims = tuple(
        attrs.evolve(c, units=units.get(c.budget, c.units)) for c in limits.claims(cdn_id, files)
    )
    store = session.store
    if isinstance(store, EstimatesAdmission):
        delay, budget = store.admission_delay(claims)
    else:
        delay, budget = 0.0, ""
        for c in claims:
            bound = (math.ceil(c.units / c.limit) - 1) * c.period
            if bound > delay:
                delay, budget = bound, c.budget
    if delay > deadline:
        raise wait_timeout(delay, budget, deadline, early=True, what=f"purge of {files} path(s)")
