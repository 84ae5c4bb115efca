"""Argument checks, run before anything is sent. Each raises ``ValidationError``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from ._constants import MAX_PER_PAGE
from ._models import TTL
from .errors import ValidationError

CLOUDFLARE_CERT = "needs-cloudflare-cert"

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def ttl(value: object) -> TTL:
    """``value`` as a ``TTL``, or ``ValidationError`` naming the allowed values."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in TTL._value2member_map_:
        allowed = ", ".join(str(int(t)) for t in TTL)
        raise ValidationError(f"ttl must be one of {allowed} seconds, got {value!r}")
    return TTL(value)


def hostname(field: str, value: object) -> str:
    """``value`` if it is a fully qualified hostname (RFC 1123 labels, at least one dot)."""
    if not isinstance(value, str) or not value:
        raise ValidationError(
            f"{field} must be a hostname such as static.example.com, got {value!r}"
        )
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValidationError(
            f"{field} must be a hostname such as static.example.com, got {value!r}"
        )
    return name.lower()


def uuid_str(field: str, value: object) -> str:
    """``value`` if it is a UUID in its canonical text form (so no id can smuggle a path)."""
    if isinstance(value, str):
        try:
            if str(uuid.UUID(value)) == value.lower():
                return value.lower()
        except ValueError:
            pass
    raise ValidationError(
        f"{field} must be a UUID such as 892071a0-bb95-49bc-8021-3afd67a210bf, got {value!r}"
    )


def certificate_id(value: object) -> str:
    """A certificate UUID, or the API's ``needs-cloudflare-cert`` sentinel."""
    if value == CLOUDFLARE_CERT:
        return CLOUDFLARE_CERT
    try:
        return uuid_str("certificate_id", value)
    except ValidationError:
        raise ValidationError(
            f"certificate_id must be a UUID or {CLOUDFLARE_CERT!r}, got {value!r}"
        ) from None


def per_page(value: object) -> int:
    """``value`` if it is an int in 1..200."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PER_PAGE:
        raise ValidationError(f"per_page must be an int from 1 to {MAX_PER_PAGE}, got {value!r}")
    return value


def files(value: object) -> list[str]:
    """Purge paths, checked and normalised (leading ``/`` dropped); order kept.

    Raises:
        ValidationError: ``value`` is a bare string (it would be purged letter by letter), not
            an iterable, empty, or holds an item that is not a non-empty string free of
            control characters.
    """
    if isinstance(value, str | bytes):
        raise ValidationError(
            f"files must be a list of paths, not a single string: use [{value!r}]"
        )
    if not isinstance(value, Iterable):
        raise ValidationError(f"files must be a list of paths, got {type(value).__name__}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValidationError(f"files[{i}] must be a string, got {item!r}")
        if _CONTROL.search(item):
            raise ValidationError(f"files[{i}] contains a control character: {item!r}")
        path = item.lstrip("/")
        if not path:
            raise ValidationError(f"files[{i}] must be a non-empty path, got {item!r}")
        out.append(path)
    if not out:
        raise ValidationError("files must name at least one path (use ['*'] to purge everything)")
    return out
