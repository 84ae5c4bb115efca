"""The data cdn_async hands its users, as frozen attrs classes: the API's endpoints and pages
(and the one cattrs converter that maps them), an answer's rate-limit headers
(``RateLimitInfo``) and what a purge achieved (``PurgeReport``).

The last two are here, below ``errors``, because errors carry them (``APIError.rate_limit``,
``PurgeError.report``): ``errors`` imports this module, and this module imports only the root
error (``_error_root``), so nothing imports in a circle.

No ``from __future__ import annotations`` here: the classes are re-exported as
``cdn_async.CDNEndpoint`` etc. (their ``__module__`` says ``cdn_async``), where string annotations
such as ``"datetime"`` would not resolve, so ``typing.get_type_hints`` would fail on them.
"""

import email.utils
import enum
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import cattrs

from ._error_root import CDNError


class TTL(enum.IntEnum):
    """The cache lifetimes the API accepts, in seconds."""

    ONE_MINUTE = 60
    TEN_MINUTES = 600
    ONE_HOUR = 3600
    ONE_DAY = 86400
    ONE_WEEK = 604800


@attrs.frozen
class CDNEndpoint:
    """A CDN endpoint, as the API returns it.

    Args:
        id: The endpoint's UUID.
        origin: The Space the content comes from (``name.region.digitaloceanspaces.com``).
        endpoint: The hostname the CDN serves the content on.
        ttl: Seconds the edge caches content: a ``TTL`` member, or a plain ``int`` when the
            API returns a value this version does not know (it stays readable, never an error).
        created_at: When it was created (timezone-aware, UTC).
        certificate_id: The TLS certificate of ``custom_domain`` (a UUID, or
            ``"needs-cloudflare-cert"``), or None.
        custom_domain: The custom subdomain, or None.
    """

    id: str
    origin: str
    endpoint: str
    ttl: TTL | int
    created_at: datetime
    certificate_id: str | None = None
    custom_domain: str | None = None


@attrs.frozen
class Page:
    """One page of ``list``: the endpoints on it and how many exist in all.

    Args:
        endpoints: The endpoints on this page.
        total: ``meta.total``: how many endpoints the account has.
        page: This page's number (1-based).
        has_next: Whether ``links.pages.next`` points to a further page.
    """

    endpoints: tuple[CDNEndpoint, ...]
    total: int
    page: int
    has_next: bool


@attrs.frozen
class RateLimitInfo:
    """The ``ratelimit-*`` headers of one answer (each None when absent or unreadable).

    Args:
        limit: ``ratelimit-limit``: the size of the budget the server reports on.
        remaining: ``ratelimit-remaining``: units left in that budget's window.
        reset: ``ratelimit-reset``: epoch seconds when the oldest counted request expires.
        retry_after: ``Retry-After`` as seconds to wait from the answer, when given (the
            header may be seconds or an HTTP date; both read the same, see
            ``retry_after_seconds``).
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None
    retry_after: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], now: float | None = None) -> "RateLimitInfo":
        """Read the headers; a malformed value reads as None rather than failing the call.

        Args:
            headers: The answer's headers (case-insensitive keys, as aiohttp gives them).
            now: The wall clock at the answer, epoch seconds, against which a ``Retry-After``
                date is read. Default: ``time.time()``.
        """
        return cls(
            limit=_int(headers.get("ratelimit-limit")),
            remaining=_int(headers.get("ratelimit-remaining")),
            reset=_float(headers.get("ratelimit-reset")),
            retry_after=retry_after_seconds(
                headers.get("retry-after"), time.time() if now is None else now
            ),
        )


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header as seconds to wait from ``now`` (epoch seconds), or None.

    The header is either a number of seconds or an HTTP date (RFC 9110, 10.2.3). The one
    reading of it: the session's pause after a 429 (``_retry.parse_retry_after``) and the
    ``RateLimitInfo.retry_after`` users see. A negative wait or a date in the past reads as 0;
    an absent or unreadable value as None.
    """
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - now)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@attrs.frozen
class PurgeReport:
    """What one ``purge`` call achieved.

    Args:
        endpoint_id: The endpoint purged.
        purged: Every path of the call (normalised, once each) that was purged, including
            paths purged by a wildcard that covers them.
        failed: Path -> the error that made it fail, for every path that was not purged.
        requests: Purge requests that carried this call's paths (shared ones included).
        budget_wait: Seconds those requests spent waiting on rate budgets.
        request_ids: The server's request ids of those requests (of their final answers,
            errors included), in order; for support tickets and logs.
        wildcards: With a manifest: each wildcard the planner chose that was purged -> the
            changed paths it covered.
        unchanged: With a manifest: manifest files that did not change which those
            wildcards purged.
        unlisted: With a manifest: the changed paths missing from it (sent exactly).
    """

    endpoint_id: str
    purged: tuple[str, ...]
    failed: Mapping[str, CDNError]
    requests: int
    budget_wait: float
    request_ids: tuple[str, ...] = ()
    wildcards: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    unchanged: int = 0
    unlisted: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every path was purged."""
        return not self.failed


def _structure_datetime(value: Any, _: type) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    # The API stamps UTC; a naive value would compare wrongly with aware ones.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: value -> member: a dict lookup instead of ``TTL(value)`` (the enum machinery costs ~10x more).
_TTL_MEMBERS: dict[int, TTL] = {m.value: m for m in TTL}


def _structure_ttl(value: Any, _: type) -> TTL | int:
    ttl = int(value)
    # A lifetime this version does not know must not break reading: it stays a plain int.
    return _TTL_MEMBERS.get(ttl, ttl)


def _blank_to_none(value: Any, _: type) -> str | None:
    return str(value) if value else None


def _fast_endpoint_hook(
    checked: Callable[[Any, type], CDNEndpoint],
) -> Callable[[Any, type], CDNEndpoint]:
    """Structure a well-formed endpoint directly; anything else goes to ``checked``.

    ``checked`` is cattrs' generated hook, which wraps every field in its own try block to
    report all bad fields at once; that bookkeeping is most of its cost, paid on every
    endpoint of every page. This does the same conversions (``str`` for the strings, the
    same hooks for the rest, absent optional keys left to their defaults), and on any error
    runs ``checked`` instead, so a malformed body fails exactly as before.
    """

    def structure(o: Any, cl: type) -> CDNEndpoint:
        try:
            return CDNEndpoint(
                str(o["id"]),
                str(o["origin"]),
                str(o["endpoint"]),
                _structure_ttl(o["ttl"], int),
                _structure_datetime(o["created_at"], datetime),
                _blank_to_none(o["certificate_id"], str) if "certificate_id" in o else None,
                _blank_to_none(o["custom_domain"], str) if "custom_domain" in o else None,
            )
        except Exception:
            return checked(o, cl)

    return structure


def _make_converter() -> cattrs.Converter:
    # forbid_extra_keys stays False: a field the server adds tomorrow breaks nobody.
    conv = cattrs.Converter()
    conv.register_structure_hook(datetime, _structure_datetime)
    conv.register_unstructure_hook(datetime, lambda d: d.isoformat().replace("+00:00", "Z"))
    endpoint_hook = cattrs.gen.make_dict_structure_fn(
        CDNEndpoint,
        conv,
        ttl=cattrs.gen.override(struct_hook=_structure_ttl),
        certificate_id=cattrs.gen.override(struct_hook=_blank_to_none),
        custom_domain=cattrs.gen.override(struct_hook=_blank_to_none),
    )
    conv.register_structure_hook(CDNEndpoint, _fast_endpoint_hook(endpoint_hook))
    conv.register_unstructure_hook(
        CDNEndpoint,
        cattrs.gen.make_dict_unstructure_fn(
            CDNEndpoint, conv, ttl=cattrs.gen.override(unstruct_hook=int)
        ),
    )
    return conv


converter = _make_converter()
