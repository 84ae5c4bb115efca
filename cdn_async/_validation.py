"""Argument rules, in one place: the client checks its arguments with them before anything is
sent (each check raises ``ValidationError``), and the fake server (``cdn_async.testing``)
answers 422 by the same rules, so the two cannot drift apart.

The rules take the API reference and DigitalOcean's naming rules literally: hostnames are ASCII
(an internationalised name goes in its IDNA/punycode form), a name under
``digitaloceanspaces.com`` is a Space's (``<bucket>.<region>.digitaloceanspaces.com``, the bucket
3-63 characters, as Spaces bucket names are), and a purge path holds no control character (C0,
DEL or C1) and no lone surrogate (it could not be sent as UTF-8).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterable, Iterator

from ._constants import MAX_PER_PAGE
from ._models import TTL
from .errors import ValidationError

CLOUDFLARE_CERT = "needs-cloudflare-cert"
#: The TTLs the API accepts, in seconds.
TTL_SECONDS: frozenset[int] = frozenset(int(t) for t in TTL)
#: Spaces' domain: every name under it is a Space's.
SPACES_DOMAIN = "digitaloceanspaces.com"
#: Paths checked between two yields to the event loop in ``files_async`` (and in the purge
#: engine's planning and joining): a few ms of work, so a 100,000-path purge never blocks the
#: loop for long.
CHUNK = 1000

# Only ever applied to lowercase ASCII (checked first): no re.IGNORECASE, whose Unicode case
# folding lets U+017F (long s), U+212A (Kelvin sign) and U+0130 (I with dot) match [a-z];
# fullmatch, since "$" also matches before a final newline.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
#: A Space's FQDN: a bucket name (3-63 lowercase letters, digits, hyphens; starting and ending
#: with a letter or digit) then a region slug such as nyc3 or sgp1.
_SPACE = re.compile(
    r"(?P<bucket>[a-z0-9][a-z0-9-]{1,61}[a-z0-9])\.(?P<region>[a-z]{3}[0-9])"
    r"\.digitaloceanspaces\.com"
)
#: C0 controls, DEL, C1 controls (U+0080-U+009F) and surrogates (lone ones: a str holds no pairs).
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_IDNA_HINT = (
    "hostnames are ASCII: give an internationalised name in its IDNA (punycode) form, "
    """e.g. "münchen.example".encode("idna") == b"xn--mnchen-3ya.example\""""
)


# -- the shared rules (also used by the fake server) --------------------------------------------


def hostname_problem(name: str) -> str | None:
    """Why ``name`` (without a trailing dot) is not a fully qualified hostname, or None.

    Labels are RFC 1123 (ASCII letters, digits, hyphens; 1-63 characters, no hyphen at either
    end), at least two of them, 253 characters at most. A name under ``digitaloceanspaces.com``
    must be a Space's FQDN (see ``space_origin_problem``).
    """
    if not name.isascii():
        return _IDNA_HINT
    lower = name.lower()
    labels = lower.split(".")
    if len(name) > 253:
        return "longer than 253 characters"
    if len(labels) < 2:
        return "a fully qualified name has at least two labels (name.example)"
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "each label is 1-63 ASCII letters, digits or hyphens, with no hyphen at either end"
    if lower == SPACES_DOMAIN or lower.endswith("." + SPACES_DOMAIN):
        return space_origin_problem(lower)
    return None


def space_origin_problem(name: str) -> str | None:
    """Why ``name`` is not a Space's FQDN (``<bucket>.<region>.digitaloceanspaces.com``), or None.

    Case-sensitive: a Space's name is lowercase. The bucket follows Spaces' naming rules: 3-63
    lowercase letters, digits and hyphens, starting and ending with a letter or digit.
    """
    if _SPACE.fullmatch(name):
        return None
    return (
        "a name under digitaloceanspaces.com must be a Space's, <bucket>.<region>."
        "digitaloceanspaces.com, the bucket 3-63 lowercase letters, digits or hyphens"
    )


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in its canonical text form (any case)."""
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def is_certificate_id(value: str) -> bool:
    """Whether ``value`` is a certificate UUID or the ``needs-cloudflare-cert`` sentinel."""
    return value == CLOUDFLARE_CERT or is_uuid(value)


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a purge path, or None: empty, or a control character (C0, DEL,
    C1) or a lone surrogate in it."""
    if not path:
        return "is empty"
    bad = _BAD_PATH_CHAR.search(path)
    if bad is None:
        return None
    if "\ud800" <= bad.group() <= "\udfff":
        return f"contains a lone surrogate (U+{ord(bad.group()):04X}), which is not text"
    return f"contains a control character (U+{ord(bad.group()):04X})"


# -- the client's checks -------------------------------------------------------------------------


def ttl(value: object) -> TTL:
    """``value`` as a ``TTL``, or ``ValidationError`` naming the allowed values."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in TTL_SECONDS:
        allowed = ", ".join(str(int(t)) for t in TTL)
        raise ValidationError(f"ttl must be one of {allowed} seconds, got {value!r}")
    return TTL(value)


def hostname(field: str, value: object) -> str:
    """``value``, lowercased and without a trailing dot, if it is a fully qualified ASCII
    hostname (see ``hostname_problem``)."""
    problem = "it must be a non-empty string"
    if isinstance(value, str) and value:
        name = value[:-1] if value.endswith(".") else value
        problem = hostname_problem(name) or ""
        if not problem:
            return name.lower()
    raise ValidationError(
        f"{field} must be a hostname such as static.example.com: {problem}; got {value!r}"
    )


def uuid_str(field: str, value: object) -> str:
    """``value`` if it is a UUID in its canonical text form (so no id can smuggle a path)."""
    if isinstance(value, str) and is_uuid(value):
        return value.lower()
    raise ValidationError(
        f"{field} must be a UUID such as 892071a0-bb95-49bc-8021-3afd67a210bf, got {value!r}"
    )


def certificate_id(value: object) -> str:
    """A certificate UUID, or the API's ``needs-cloudflare-cert`` sentinel."""
    if isinstance(value, str) and is_certificate_id(value):
        return value.lower()
    raise ValidationError(f"certificate_id must be a UUID or {CLOUDFLARE_CERT!r}, got {value!r}")


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
            control characters and lone surrogates (see ``path_problem``).
    """
    out: list[str] = []
    for _ in _files(value, out):
        pass
    return out


async def files_async(value: object) -> list[str]:
    """``files``, yielding to the event loop every ``CHUNK`` paths."""
    out: list[str] = []
    for _ in _files(value, out):
        await asyncio.sleep(0)
    return out


def _files(value: object, out: list[str]) -> Iterator[None]:
    """Check ``value``'s paths into ``out``, yielding after every ``CHUNK`` of them."""
    if isinstance(value, str | bytes):
        raise ValidationError(
            f"files must be a list of paths, not a single string: use [{value!r}]"
        )
    if not isinstance(value, Iterable):
        raise ValidationError(f"files must be a list of paths, got {type(value).__name__}")
    bad = _BAD_PATH_CHAR.search
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValidationError(f"files[{i}] must be a string, got {item!r}")
        if bad(item):
            raise ValidationError(f"files[{i}] {path_problem(item)}: {item!r}")
        path = item.lstrip("/")
        if not path:
            raise ValidationError(f"files[{i}] must be a non-empty path, got {item!r}")
        out.append(path)
        if i % CHUNK == CHUNK - 1:
            yield
    if not out:
        raise ValidationError("files must name at least one path (use ['*'] to purge everything)")
