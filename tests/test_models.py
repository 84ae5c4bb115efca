"""Models: frozen attrs classes structured by the one cattrs converter."""

from __future__ import annotations

import typing
from datetime import UTC, datetime

import attrs
import pytest

from cdn_async import TTL, CDNEndpoint
from cdn_async._models import converter

from ._support import endpoint_json


def test_endpoint_structures_with_aware_datetime_and_ttl_enum() -> None:
    ep = converter.structure(endpoint_json(ttl=600), CDNEndpoint)
    assert ep.created_at == datetime(2026, 3, 21, 16, 2, 37, tzinfo=UTC)
    assert ep.created_at.tzinfo is not None
    assert ep.ttl is TTL.TEN_MINUTES
    assert ep.certificate_id is None and ep.custom_domain is None


def test_unknown_fields_from_the_server_are_ignored() -> None:
    ep = converter.structure(endpoint_json(brand_new_field={"x": 1}, other=2), CDNEndpoint)
    assert ep.origin == "static.nyc3.digitaloceanspaces.com"


def test_a_ttl_this_version_does_not_know_still_reads() -> None:
    ep = converter.structure(endpoint_json(ttl=1800), CDNEndpoint)
    assert ep.ttl == 1800 and not isinstance(ep.ttl, TTL)


def test_ttl_is_annotated_as_what_it_holds() -> None:
    """Type checkers and IDEs see ``TTL | int``: TTL members for known values, a plain int
    for a value from a newer API (so code that compares with ``TTL`` members type-checks and
    code that must handle unknown values is told so)."""
    hints = typing.get_type_hints(CDNEndpoint)
    assert hints["ttl"] == TTL | int
    assert hints["created_at"] is datetime
    known = converter.structure(endpoint_json(ttl=86400), CDNEndpoint).ttl
    unknown = converter.structure(endpoint_json(ttl=7200), CDNEndpoint).ttl
    assert known is TTL.ONE_DAY
    assert type(unknown) is int and unknown == 7200


def test_empty_custom_domain_and_certificate_read_as_none() -> None:
    ep = converter.structure(endpoint_json(custom_domain="", certificate_id=""), CDNEndpoint)
    assert ep.custom_domain is None and ep.certificate_id is None


def test_cloudflare_sentinel_certificate_reads_as_is() -> None:
    ep = converter.structure(
        endpoint_json(custom_domain="static.example.com", certificate_id="needs-cloudflare-cert"),
        CDNEndpoint,
    )
    assert ep.certificate_id == "needs-cloudflare-cert"


def test_endpoint_is_frozen_and_round_trips() -> None:
    ep = converter.structure(endpoint_json(), CDNEndpoint)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ep.ttl = 60  # type: ignore[misc]
    data = converter.unstructure(ep)
    assert data["created_at"] == "2026-03-21T16:02:37Z"
    assert data["ttl"] == 3600 and type(data["ttl"]) is int
    assert converter.structure(data, CDNEndpoint) == ep
