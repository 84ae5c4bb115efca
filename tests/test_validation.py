"""Bad input is refused with a clear ValidationError before anything is sent."""

from __future__ import annotations

import pytest

from cdn_async import TTL
from cdn_async import _validation as check
from cdn_async.errors import ValidationError


@pytest.mark.parametrize("value", [60, 600, 3600, 86400, 604800, TTL.ONE_DAY])
def test_ttl_accepts_the_enum(value: int) -> None:
    assert check.ttl(value) == value


@pytest.mark.parametrize("value", [0, 61, 3601, -60, "3600", 3600.0, True, None])
def test_ttl_refuses_others_naming_allowed_values(value: object) -> None:
    with pytest.raises(ValidationError, match=r"ttl must be one of 60, 600, 3600, 86400, 604800"):
        check.ttl(value)


@pytest.mark.parametrize(
    "value", ["static.nyc3.digitaloceanspaces.com", "a.b", "xn--bcher-kva.example", "Example.COM."]
)
def test_hostname_accepts_fqdns(value: str) -> None:
    assert check.hostname("origin", value) == value.rstrip(".").lower()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "localhost",
        "a..b",
        "-a.b",
        "a-.b",
        "a b.c",
        "a/b.c",
        "http://a.b",
        "a.b/../x",
        "a" * 64 + ".b",
        5,
        None,
    ],
)
def test_hostname_refuses_non_hostnames_naming_the_field(value: object) -> None:
    with pytest.raises(ValidationError, match="custom_domain must be a hostname"):
        check.hostname("custom_domain", value)


def test_uuid_accepts_canonical_form() -> None:
    value = "892071a0-bb95-49bc-8021-3afd67a210bf"
    assert check.uuid_str("cdn_id", value.upper()) == value


@pytest.mark.parametrize(
    "value",
    [
        "892071a0bb9549bc80213afd67a210bf",  # hex without dashes: not how the API spells ids
        "892071a0-bb95-49bc-8021-3afd67a210bf/cache",
        "../endpoints",
        "{892071a0-bb95-49bc-8021-3afd67a210bf}",
        "",
        None,
    ],
)
def test_uuid_refuses_anything_that_could_smuggle_a_path(value: object) -> None:
    with pytest.raises(ValidationError, match="cdn_id must be a UUID"):
        check.uuid_str("cdn_id", value)


def test_certificate_id_accepts_uuid_and_cloudflare_sentinel() -> None:
    assert check.certificate_id("needs-cloudflare-cert") == "needs-cloudflare-cert"
    assert check.certificate_id("892071a0-bb95-49bc-8021-3afd67a210bf")
    with pytest.raises(ValidationError, match="needs-cloudflare-cert"):
        check.certificate_id("cert-1")


@pytest.mark.parametrize("value", [1, 20, 200])
def test_per_page_in_range(value: int) -> None:
    assert check.per_page(value) == value


@pytest.mark.parametrize("value", [0, 201, -1, "20", 2.0, True])
def test_per_page_out_of_range(value: object) -> None:
    with pytest.raises(ValidationError, match="per_page must be an int from 1 to 200"):
        check.per_page(value)


def test_files_normalise_leading_slash_and_keep_order() -> None:
    assert check.files(["/img/a.png", "css/*", "//b"]) == ["img/a.png", "css/*", "b"]


def test_files_takes_any_iterable() -> None:
    assert check.files(p for p in ["a", "b"]) == ["a", "b"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("img/a.png", "not a single string"),
        (b"img", "not a single string"),
        ([], "at least one path"),
        ([""], "non-empty path"),
        (["/"], "non-empty path"),
        (["a", 3], r"files\[1\] must be a string"),
        (["a\nb"], "control character"),
        (["a\x00"], "control character"),
        (42, "must be a list of paths"),
    ],
)
def test_files_refuses_bad_lists(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check.files(value)


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)
