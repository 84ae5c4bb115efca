"""``cdn.endpoints``: the six CDN Endpoints operations. Each validates, calls the session,
and structures the answer; budgets, retries and errors live in the session layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from . import _validation as check
from ._background import Background
from ._constants import CREATE_LAG_WINDOW, DEFAULT_PER_PAGE, NOT_FOUND_PATIENCE
from ._limits import PRIORITIES, Priority
from ._logs import logger
from ._models import CDNEndpoint, Page, converter
from ._planned import purge_planned
from ._purge import PurgeBackend, PurgeEngine, PurgeProgress, PurgeReport
from ._purge_deadline import refuse_if_too_slow
from ._purge_handle import PurgeHandle
from ._purge_plan import Coalesced
from ._sentinel import NOT_GIVEN, NotGiven
from ._session import Session
from .errors import (
    APIConnectionError,
    APIResponseError,
    CDNError,
    CreateUnconfirmedError,
    InternalServerError,
    UnprocessableEntityError,
    ValidationError,
)

PATH = "/v2/cdn/endpoints"


def _structure_endpoint(data: Any, status: int) -> CDNEndpoint:
    try:
        return converter.structure(data["endpoint"], CDNEndpoint)
    except Exception as exc:  # any shape error is the server's, reported as one error type
        raise APIResponseError(
            f"the API answered {status} with a body that is not a CDN endpoint: {exc}",
            status=status,
            body_excerpt=repr(data)[:200],
        ) from None


class Endpoints:
    """CDN endpoints of the account: ``cdn.endpoints``."""

    def __init__(
        self, session: Session, purge_engine: PurgeBackend, background: Background | None = None
    ) -> None:
        self._session = session
        self._purge = purge_engine
        self._background = background if background is not None else Background()

    async def list(
        self, *, per_page: int = DEFAULT_PER_PAGE, priority: Priority | None = None
    ) -> AsyncIterator[CDNEndpoint]:
        """Every endpoint of the account, fetched lazily a page at a time.

        Args:
            per_page: Endpoints per request, 1..200 (200 spends the least budget).
            priority: ``"high"``, ``"normal"`` or ``"low"``: the requests' place among
                waiters for the same budgets; None: the client's ``priority``.

        Yields:
            Each ``CDNEndpoint``, in the API's order.

        Raises:
            ValidationError: ``per_page`` is out of range.
        """
        async for page in self.pages(per_page=per_page, priority=priority):
            for endpoint in page.endpoints:
                yield endpoint

    async def pages(
        self, *, per_page: int = DEFAULT_PER_PAGE, priority: Priority | None = None
    ) -> AsyncIterator[Page]:
        """Every page of endpoints, each with ``meta.total``; follows ``links.pages.next``.

        Args:
            per_page: Endpoints per page, 1..200.
            priority: The requests' place among waiters for budgets (as in ``list``).

        Yields:
            Each ``Page``.
        """
        per_page = check.per_page(per_page)
        priority = _priority(priority)
        page_no = 1
        while True:
            resp = await self._session.request(
                "GET", PATH, params={"page": page_no, "per_page": per_page}, priority=priority
            )
            page = _structure_page(resp.data, resp.status, page_no)
            yield page
            next_no = _next_page(resp.data)
            # Only the page number is taken from the link: the token is never sent to a
            # host the link names, and a link that does not advance cannot loop forever.
            if next_no is None or next_no <= page_no or not page.endpoints:
                return
            page_no = next_no

    async def get(self, cdn_id: str, *, priority: Priority | None = None) -> CDNEndpoint:
        """The endpoint with this id.

        A GET of an endpoint this client created in the last 30 s that answers 404 is retried
        briefly: the API can lag a few seconds after a create. ``priority``: the request's
        place among waiters for budgets (as in ``list``).

        Raises:
            ValidationError: ``cdn_id`` is not a UUID.
            NotFoundError: No such endpoint.
        """
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        priority = _priority(priority)
        created = self._session.recently_created.get(cdn_id)
        lagging = created is not None and self._session.now() - created < CREATE_LAG_WINDOW
        resp = await self._session.request(
            "GET",
            f"{PATH}/{cdn_id}",
            endpoint_id=cdn_id,
            retry_not_found=NOT_FOUND_PATIENCE if lagging else 0.0,
            priority=priority,
        )
        return _structure_endpoint(resp.data, resp.status)

    # Over 60 lines for its docstring; the body (send, or look up after an ambiguous failure)
    # is 36.
    async def create(
        self,
        origin: str,
        *,
        ttl: int | NotGiven = NOT_GIVEN,
        custom_domain: str | NotGiven = NOT_GIVEN,
        certificate_id: str | NotGiven = NOT_GIVEN,
        priority: Priority | None = None,
    ) -> CDNEndpoint:
        """Create an endpoint that serves the Space ``origin``.

        Args:
            origin: The Space's hostname, e.g. ``static.nyc3.digitaloceanspaces.com``.
            ttl: Edge cache lifetime (a ``TTL``); the server uses 3600 when not given.
            custom_domain: A custom subdomain to serve on; needs ``certificate_id``.
            certificate_id: The subdomain's certificate UUID, or ``"needs-cloudflare-cert"``.
            priority: The requests' place among waiters for budgets (as in ``list``).

        Returns:
            The new endpoint.

        Raises:
            ValidationError: An argument is invalid (nothing is sent).
            UnprocessableEntityError: The API refused it (an origin already in use...).
            CreateUnconfirmedError: An attempt failed after it may have reached the server
                and the lookup that would tell failed too: the endpoint may exist.

        A create is never sent twice blindly: when an attempt fails after it may have reached
        the server, the client looks the origin up (origins are unique) before trying again.
        """
        body: dict[str, Any] = {"origin": check.hostname("origin", origin)}
        priority = _priority(priority)
        if not isinstance(ttl, NotGiven):
            body["ttl"] = int(check.ttl(ttl))
        body.update(_domain_fields(custom_domain, certificate_id, allow_removal=False))
        session = self._session
        origin_name = body["origin"]
        max_retries = session.options.max_retries
        used = 0  # attempts so far, over every request below: max_retries + 1 at most
        ambiguous = False  # an earlier attempt may have created it
        while True:
            try:
                # The session retries only what surely did not create (a connection never
                # made, a 429); a 5xx or a lost connection comes back here to be looked up.
                resp = await session.request(
                    "POST", PATH, json=body, max_retries=max_retries - used, priority=priority
                )
                break
            except UnprocessableEntityError as exc:
                # "Origin in use" after an ambiguous attempt: that attempt did create it, and
                # the list lagged.
                found = await self._created(origin_name, exc, priority) if ambiguous else None
                if found is None:
                    raise
                return found
            except (APIConnectionError, InternalServerError) as exc:
                ambiguous = True
                used += exc.attempts
                found = await self._created(origin_name, exc, priority)
                if found is not None:
                    logger.info("create of %s failed ambiguously but it exists", origin_name)
                    return found
                if used > max_retries:
                    raise
                logger.info("create of %s failed (%s); it does not exist", origin_name, exc)
                await session.backoff("POST", PATH, used, "create not done")
        return self._mark_created(_structure_endpoint(resp.data, resp.status))

    async def _created(
        self, origin: str, failure: CDNError, priority: Priority | None
    ) -> CDNEndpoint | None:
        """After an attempt to create ``origin``'s endpoint that may have reached the server:
        the endpoint if it exists (marked created), else None.

        Raises:
            CreateUnconfirmedError: The lookup failed too: the outcome is unknown (a create
                that may exist is never reported failed).
        """
        try:
            found = await self._find_by_origin(origin, priority)
        except CDNError as lookup:
            raise CreateUnconfirmedError(origin, failure, lookup) from None
        return self._mark_created(found) if found is not None else None

    async def update(
        self,
        cdn_id: str,
        *,
        ttl: int | NotGiven = NOT_GIVEN,
        custom_domain: str | NotGiven | None = NOT_GIVEN,
        certificate_id: str | NotGiven | None = NOT_GIVEN,
        priority: Priority | None = None,
    ) -> CDNEndpoint:
        """Change an endpoint; only the fields given are sent.

        Args:
            cdn_id: The endpoint's UUID.
            ttl: A new cache lifetime.
            custom_domain: A new custom subdomain (needs ``certificate_id``), or None to remove
                the custom domain (its certificate goes with it).
            certificate_id: A new certificate UUID or ``"needs-cloudflare-cert"``.
            priority: The request's place among waiters for budgets (as in ``list``).

        Raises:
            ValidationError: Nothing to change, or an invalid argument.
            NotFoundError: No such endpoint.
        """
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        priority = _priority(priority)
        body: dict[str, Any] = {}
        if not isinstance(ttl, NotGiven):
            body["ttl"] = int(check.ttl(ttl))
        body.update(_domain_fields(custom_domain, certificate_id, allow_removal=True))
        if not body:
            raise ValidationError("update needs at least one of ttl, custom_domain, certificate_id")
        resp = await self._session.request(
            "PUT", f"{PATH}/{cdn_id}", endpoint_id=cdn_id, json=body, priority=priority
        )
        return _structure_endpoint(resp.data, resp.status)

    async def delete(self, cdn_id: str, *, priority: Priority | None = None) -> None:
        """Delete an endpoint. ``priority``: as in ``list``.

        Raises:
            ValidationError: ``cdn_id`` is not a UUID.
            NotFoundError: No such endpoint.
        """
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        priority = _priority(priority)
        # A retry that finds it gone means the failed-looking attempt deleted it.
        await self._session.request(
            "DELETE", f"{PATH}/{cdn_id}", endpoint_id=cdn_id, gone_is_done=True, priority=priority
        )
        self._session.recently_created.pop(cdn_id, None)

    # Over 60 lines for its docstring (the reference for every purge option); the body is 35.
    async def purge(
        self,
        cdn_id: str,
        files: Iterable[str],
        *,
        on_progress: Callable[[int, int], None] | None = None,
        on_batch: Callable[[PurgeProgress], None] | None = None,
        priority: Priority | None = None,
        manifest: Iterable[str] | None = None,
        deadline: float | timedelta | None = None,
        allow_all: bool = False,
    ) -> PurgeReport:
        """Purge cached paths of an endpoint; any number of them, each purged once.

        Paths are normalised (a leading ``/`` dropped), de-duplicated, dropped when a wildcard
        ``dir/*`` of the same call covers them, and sent in batches of at most the file budget
        (50), each as soon as the budgets allow. ``["*"]`` purges everything.

        Args:
            cdn_id: The endpoint's UUID.
            files: The paths; wildcards such as ``css/*`` allowed.
            on_progress: Called as ``on_progress(done, total)`` after each batch.
            on_batch: Called with a ``PurgeProgress`` after each batch: which of the call's
                paths it confirmed purged (and which failed). Every confirmed path is
                delivered once, as soon as its batch is answered: use it to checkpoint a job.
            priority: ``"high"`` puts the paths at the front of the endpoint's pending set:
                they go in the very next batch, ahead of a bulk purge's pending paths, and
                that batch waits for the token's budgets at ``"high"`` (a batch already
                waiting at a lower priority, still unsent, leaves the queue and waits again at
                ``"high"``). ``"normal"``/``"low"``: a batch waits at the priority of the caller
                of its first path. None: the client's ``priority``.
            manifest: Every path the endpoint may cache (the build's output, a listing of
                the Space): ``files`` are then the changed paths, and ``dir/*`` wildcards are
                chosen to cover them within the ``deadline``, purging the fewest manifest
                files that did not change (see ``plan_purge``). Changed paths missing from it
                are sent exactly.
            deadline: Seconds (or a ``timedelta``) from now by which the last request must go:
                the entries that fit are the file budget's windows until then, less what
                this client already used or has pending. A plan that cannot fit raises
                ``ValidationError`` (saying by how much it misses) before anything is sent.
            allow_all: Whether the planner may choose ``*`` (purge everything cached).

        Returns:
            The report: which paths were purged, requests sent, time spent on budgets. With
            a manifest, ``wildcards`` names each wildcard purged and the changed paths it
            covered, and ``unchanged`` counts the unchanged files they purged; ``purged``,
            ``failed`` and the progress callbacks count the changed paths.

        Under ``max_budget_wait`` the purge is all or nothing: when its whole plan (with the
        endpoint's paths pending ahead of it) cannot be sent within the deadline, it raises
        ``BudgetWaitTimeout`` before anything is sent (see ``purge_in_background`` for a caller
        that cannot wait).

        Raises:
            ValidationError: ``files`` is empty, a bare string, or holds a bad path.
            BudgetWaitTimeout: Under ``max_budget_wait``, the whole purge could not be sent in
                time; nothing of it was sent. ``retry_after``: seconds until its last request
                could have gone, at the earliest.
            PurgeError: Some paths failed, or were not confirmed because the client was
                closed; ``.report`` has what was confirmed (``purged``) and the rest
                (``failed``), and ``.reason`` the one error every failed path shares, if any
                (the same kind of failure: class, status and error id, or budget).

        A cancelled call raises ``CancelledError``: by then ``on_batch`` (and ``on_progress``)
        has delivered every path confirmed so far, and neither is called again (a batch on
        the wire then completes, but its paths were not confirmed while the call lasted: a
        checkpoint written in ``except CancelledError`` is complete); its paths not yet sent
        are not sent (unless another call waits on them).
        """
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        priority = _priority(priority)
        self._session.check_usable()  # before the engine makes anything on this loop
        # Checked a chunk at a time, yielding to the loop between chunks (100,000 paths never
        # block it for long); a bad path still raises before anything is sent.
        paths = await check.files_async(files)
        if manifest is not None or deadline is not None:
            with self._session.observer.span("purge", f"{PATH}/{cdn_id}/cache"):
                return await purge_planned(
                    self._session,
                    self._purge,
                    cdn_id,
                    paths,
                    manifest=manifest,
                    deadline=deadline,
                    allow_all=allow_all,
                    on_progress=on_progress,
                    on_batch=on_batch,
                    priority=priority,
                )
        if self._session.options.max_budget_wait is not None and not isinstance(
            self._purge, PurgeEngine
        ):
            await self._refuse_if_too_slow_alone(cdn_id, paths, priority)
        with self._session.observer.span("purge", f"{PATH}/{cdn_id}/cache"):
            return await self._purge.purge(
                self._session,
                cdn_id,
                paths,
                on_progress=on_progress,
                on_batch=on_batch,
                priority=priority,
            )

    async def _refuse_if_too_slow_alone(
        self, cdn_id: str, paths: Sequence[str], priority: Priority | None
    ) -> None:
        """Through a shared queue, under ``max_budget_wait``: what other processes queued ahead
        is not known here, but a plan that alone cannot be sent in time is refused all the
        same (the engine counts its pending paths too: ``PurgeEngine.purge``)."""
        coalesced = Coalesced()
        for _ in coalesced.steps(paths):
            await asyncio.sleep(0)
        refuse_if_too_slow(
            self._session,
            cdn_id,
            len(coalesced.targets),
            0,
            priority or self._session.options.priority,
            plan_only=True,
        )

    def purge_in_background(
        self,
        cdn_id: str,
        files: Iterable[str],
        *,
        on_batch: Callable[[PurgeProgress], None] | None = None,
        priority: Priority | None = None,
    ) -> PurgeHandle:
        """Hand paths to the client to purge in the background, and return at once (a web
        handler's 202); ``purge`` is the call to use when the caller waits.

        The client owns the purge: it goes on whatever happens to the calling task (a
        cancelled handler, a client that hung up), waiting as long as its budgets need
        (``max_budget_wait`` does not apply), and shares batches with other purges of the
        endpoint as ``purge`` does. The handle may be awaited (``await handle`` returns the
        ``PurgeReport`` or raises ``PurgeError``, and cancelling the waiter does not cancel
        the purge) or dropped (the outcome is logged). ``close()`` returns the report of each
        background purge it cut short.

        Args:
            cdn_id: The endpoint's UUID.
            files: The paths; wildcards such as ``css/*`` allowed.
            on_batch: As for ``purge``.
            priority: As for ``purge``.

        Returns:
            The handle.

        Raises:
            ValidationError: A bad id or path (at once: nothing is started).
            CDNError: The client is closed.
            RuntimeError: No event loop is running.
        """
        cdn_id = check.uuid_str("cdn_id", cdn_id)
        priority = _priority(priority)
        paths = check.files(files)
        session = self._session
        session.check_usable()
        # No deadline: nobody waits for it.
        patient = session.copy(attrs.evolve(session.options, max_budget_wait=None))
        background = Endpoints(patient, self._purge, self._background)

        def purge(
            on_confirmed: Callable[[PurgeProgress], None],
        ) -> Coroutine[Any, Any, PurgeReport]:
            def each_batch(progress: PurgeProgress) -> None:
                on_confirmed(progress)
                if on_batch is not None:
                    on_batch(progress)

            return background.purge(cdn_id, paths, on_batch=each_batch, priority=priority)

        return self._background.start(cdn_id, paths, purge)

    def _mark_created(self, endpoint: CDNEndpoint) -> CDNEndpoint:
        now = self._session.now()
        created = self._session.recently_created
        created[endpoint.id] = now
        # Prune so a long-lived client creating many endpoints does not grow without bound.
        for stale in [k for k, t in created.items() if now - t >= CREATE_LAG_WINDOW]:
            del created[stale]
        return endpoint

    async def _find_by_origin(
        self, origin: str, priority: Priority | None = None
    ) -> CDNEndpoint | None:
        async for endpoint in self.list(priority=priority):
            if endpoint.origin == origin:
                return endpoint
        return None


def _priority(value: object) -> Priority | None:
    if value is None or value in PRIORITIES:
        return value
    raise ValidationError(f"priority must be one of {PRIORITIES} or None, got {value!r}")


def _domain_fields(
    custom_domain: str | NotGiven | None,
    certificate_id: str | NotGiven | None,
    *,
    allow_removal: bool,
) -> dict[str, str]:
    fields: dict[str, str] = {}
    if custom_domain is None or certificate_id is None:
        if not allow_removal:
            raise ValidationError("custom_domain and certificate_id cannot be None on create")
        if not (custom_domain is None or isinstance(custom_domain, NotGiven)):
            raise ValidationError(
                "certificate_id=None removes the custom domain; pass custom_domain=None too"
            )
        if not (certificate_id is None or isinstance(certificate_id, NotGiven)):
            raise ValidationError(
                "custom_domain=None removes the custom domain and its certificate; "
                "do not pass a certificate_id with it"
            )
        # Removing a custom domain sends both as empty strings, as the official clients do.
        return {"custom_domain": "", "certificate_id": ""}
    if not isinstance(custom_domain, NotGiven):
        fields["custom_domain"] = check.hostname("custom_domain", custom_domain)
        if isinstance(certificate_id, NotGiven):
            raise ValidationError(
                "custom_domain needs certificate_id (a certificate UUID or 'needs-cloudflare-cert')"
            )
    if not isinstance(certificate_id, NotGiven):
        fields["certificate_id"] = check.certificate_id(certificate_id)
    return fields


def _structure_page(data: Any, status: int, page_no: int) -> Page:
    try:
        endpoints = tuple(converter.structure(e, CDNEndpoint) for e in data.get("endpoints") or ())
        total = int(data["meta"]["total"])
    except Exception as exc:
        raise APIResponseError(
            f"the API answered {status} with a body that is not a page of endpoints: {exc}",
            status=status,
            body_excerpt=repr(data)[:200],
        ) from None
    return Page(endpoints, total, page_no, _next_page(data) is not None)


def _next_page(data: Any) -> int | None:
    links = data.get("links") if isinstance(data, dict) else None
    pages = links.get("pages") if isinstance(links, dict) else None
    nxt = pages.get("next") if isinstance(pages, dict) else None
    if not isinstance(nxt, str):
        return None
    values = parse_qs(urlsplit(nxt).query).get("page")
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None
