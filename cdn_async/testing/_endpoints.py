"""CDN endpoint records and the request-body rules the API applies to them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

# The request rules are the client's own (one place: cdn_async._validation), so the fake and
# the client cannot disagree on what the API accepts.
from .._validation import (
    CLOUDFLARE_CERT,
    TTL_SECONDS,
    hostname_problem,
    is_certificate_id,
    path_problem,
    space_origin_problem,
)

#: The TTLs the API accepts (seconds).
TTLS: frozenset[int] = TTL_SECONDS
DEFAULT_TTL = 3600


class BodyError(ValueError):
    """A request body the API would refuse with 422 (``message`` is the error message)."""


@attrs.define
class Endpoint:
    """One CDN endpoint the fake holds.

    Attributes:
        id: A uuid4 string.
        origin: The Space FQDN.
        endpoint: ``<bucket>.<region>.cdn.digitaloceanspaces.com``.
        ttl: Cache TTL in seconds.
        created_at: ISO 8601 UTC timestamp (``2026-...Z``).
        certificate_id: Certificate id or None.
        custom_domain: Custom domain or None.
        visible_at: Event-loop clock reading from which a GET by id finds it.
    """

    id: str
    origin: str
    endpoint: str
    ttl: int = DEFAULT_TTL
    created_at: str = ""
    certificate_id: str | None = None
    custom_domain: str | None = None
    visible_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The endpoint as the API returns it (unset optional fields are omitted).

        Returns:
            A JSON-ready dict.
        """
        out: dict[str, Any] = {
            "id": self.id,
            "origin": self.origin,
            "endpoint": self.endpoint,
            "ttl": self.ttl,
            "created_at": self.created_at,
        }
        if self.certificate_id:
            out["certificate_id"] = self.certificate_id
        if self.custom_domain:
            out["custom_domain"] = self.custom_domain
        return out


def now_iso() -> str:
    """The current UTC time as the API formats ``created_at``.

    Returns:
        ``YYYY-MM-DDTHH:MM:SSZ``.
    """
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cdn_hostname(origin: str) -> str:
    """The CDN hostname serving a Space origin.

    Args:
        origin: A valid Space FQDN.

    Returns:
        ``<bucket>.<region>.cdn.digitaloceanspaces.com``.
    """
    bucket, region, _ = origin.split(".", 2)
    return f"{bucket}.{region}.cdn.digitaloceanspaces.com"


def check_origin(origin: object) -> str:
    """Validate a create body's ``origin``.

    Args:
        origin: The value sent.

    Returns:
        The origin.

    Raises:
        BodyError: If it is not a Space FQDN.
    """
    if not isinstance(origin, str) or space_origin_problem(origin) is not None:
        raise BodyError(
            "origin must be the FQDN of a Space, such as name.nyc3.digitaloceanspaces.com "
            "(the bucket 3-63 lowercase letters, digits or hyphens)"
        )
    return origin


def check_ttl(ttl: object) -> int:
    """Validate ``ttl``.

    Args:
        ttl: The value sent.

    Returns:
        The ttl.

    Raises:
        BodyError: If it is not one of ``TTLS`` (``null`` included: the spec's ``ttl`` is an
            integer, not nullable).
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl not in TTLS:
        raise BodyError("ttl must be one of 60, 600, 3600, 86400, 604800")
    return ttl


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    """A string field: absent means None; ``""`` means "remove" and is returned as ``""``."""
    if key not in body or body[key] is None:
        return None
    value = body[key]
    if not isinstance(value, str):
        raise BodyError(f"{key} must be a string")
    return value


def check_domain_fields(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Validate ``custom_domain`` and ``certificate_id`` where given.

    Args:
        body: The request body.

    Returns:
        ``(custom_domain, certificate_id)``: None when absent, ``""`` when sent empty.

    Raises:
        BodyError: On a malformed hostname or certificate id.
    """
    domain = _optional_str(body, "custom_domain")
    cert = _optional_str(body, "certificate_id")
    problem = hostname_problem(domain) if domain else None
    if problem is not None:
        raise BodyError(f"custom_domain must be a fully qualified domain name: {problem}")
    if cert and not is_certificate_id(cert):
        raise BodyError(f"certificate_id must be a UUID or {CLOUDFLARE_CERT!r}")
    return domain, cert


def check_purge_files(body: Mapping[str, Any]) -> list[str]:
    """Validate a purge body's ``files``.

    Args:
        body: The request body.

    Returns:
        The paths.

    Raises:
        BodyError: If ``files`` is missing, empty, or holds anything but non-empty strings
            free of control characters and lone surrogates.
    """
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise BodyError("files must be a non-empty array of paths")
    for i, f in enumerate(files):
        if not isinstance(f, str):
            raise BodyError("every entry of files must be a non-empty string")
        problem = path_problem(f)
        if problem is not None:
            raise BodyError(f"files[{i}] {problem}")
    return files


def purge_cost(body: object) -> int:
    """The ``purge_files`` budget units a purge body takes (a wildcard path counts as one).

    Counted before validation, since the budgets are checked when the request arrives.

    Args:
        body: The parsed JSON body.

    Returns:
        The number of entries of ``files`` when it is a list, else 0.
    """
    if isinstance(body, dict):
        files = body.get("files")
        if isinstance(files, list):
            return len(files)
    return 0
