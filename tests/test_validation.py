"""Bad input is refused with a clear ValidationError before anything is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from cdn_async import TTL, CDNClient
from cdn_async import _validation as check
from cdn_async.errors import ValidationError
from cdn_async.testing import FakeCDNServer

ORIGIN = "static.nyc3.digitaloceanspaces.com"
CERT = "892071a0-bb95-49bc-8021-3afd67a210bf"


@pytest.mark.parametrize("value", [60, 600, 3600, 86400, 604800, TTL.ONE_DAY])
def test_ttl_accepts_the_enum(value: int) -> None:
    assert check.ttl(value) == value


@pytest.mark.parametrize("value", [0, 61, 3601, -60, "3600", 3600.0, True, None])
def test_ttl_refuses_others_naming_allowed_values(value: object) -> None:
    with pytest.raises(ValidationError, match=r"ttl must be one of 60, 600, 3600, 86400, 604800"):
        check.ttl(value)


@pytest.mark.parametrize(
    "value",
    [
        "static.nyc3.digitaloceanspaces.com",
        "abc.nyc3.digitaloceanspaces.com",  # the shortest bucket name Spaces allows
        "a" * 63 + ".nyc3.digitaloceanspaces.com",  # the longest
        "a.b",
        "xn--bcher-kva.example",
        "Example.COM.",
    ],
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


# -- each hole of issue 13, through the client: ValidationError, and nothing is sent ----------


@pytest.fixture
async def cdn(fake_cdn: FakeCDNServer) -> AsyncIterator[CDNClient]:
    async with CDNClient(fake_cdn.token, base_url=fake_cdn.url) as client:
        yield client


async def refused(fake_cdn: FakeCDNServer, call: Awaitable[Any], message: str) -> ValidationError:
    with pytest.raises(ValidationError, match=message) as info:
        await call
    assert fake_cdn.journal == []  # nothing reached the server
    return info.value


Call = Callable[[CDNClient], Awaitable[Any]]
IDNA = r"hostnames are ASCII.*IDNA \(punycode\).*encode\(\"idna\"\)"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda c: c.endpoints.create(ORIGIN + "\n"), "origin must be a hostname", id="origin"
        ),
        pytest.param(
            lambda c: c.endpoints.create(
                ORIGIN, custom_domain="cdn.example.com\n", certificate_id=CERT
            ),
            "custom_domain must be a hostname",
            id="custom_domain",
        ),
    ],
)
async def test_a_hostname_with_a_trailing_newline_is_refused(
    cdn: CDNClient, fake_cdn: FakeCDNServer, call: Call, message: str
) -> None:
    """``$`` matches before a final newline; the check must not."""
    await refused(fake_cdn, call(cdn), message)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("\u017ftatic.nyc3.digitaloceanspaces.com", id="long-s"),
        pytest.param("\u212aelvin.nyc3.digitaloceanspaces.com", id="kelvin-sign"),
        pytest.param("\u0130mg.nyc3.digitaloceanspaces.com", id="dotted-capital-i"),
        pytest.param("m\u00fcnchen.nyc3.digitaloceanspaces.com", id="u-umlaut"),
    ],
)
async def test_a_non_ascii_origin_is_refused_pointing_at_idna(
    cdn: CDNClient, fake_cdn: FakeCDNServer, name: str
) -> None:
    """Case-insensitive matching folds these into ASCII letters; hostnames are ASCII."""
    await refused(fake_cdn, cdn.endpoints.create(name), "origin must be a hostname.*" + IDNA)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("\u017ftatic.example.com", id="long-s"),
        pytest.param("\u212aelvin.example.com", id="kelvin-sign"),
        pytest.param("\u0130mg.example.com", id="dotted-capital-i"),
    ],
)
async def test_a_non_ascii_custom_domain_is_refused_pointing_at_idna(
    cdn: CDNClient, fake_cdn: FakeCDNServer, name: str
) -> None:
    call = cdn.endpoints.update(CERT, custom_domain=name, certificate_id=CERT)
    await refused(fake_cdn, call, "custom_domain must be a hostname.*" + IDNA)


def test_the_idna_form_the_error_suggests_is_accepted() -> None:
    name = "m\u00fcnchen.example".encode("idna").decode()
    assert check.hostname("custom_domain", name) == "xn--mnchen-3ya.example"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param("img/a\x85.png", r"control character \(U\+0085\)", id="NEL-x85"),
        pytest.param("img/a\x9b.png", r"control character \(U\+009B\)", id="CSI-x9b"),
        pytest.param("img/\x80", r"control character \(U\+0080\)", id="x80"),
        pytest.param("img/\x9f", r"control character \(U\+009F\)", id="x9f"),
        pytest.param("img/\ud800.png", r"lone surrogate \(U\+D800\)", id="high-surrogate"),
        pytest.param("img/\udc80.png", r"lone surrogate \(U\+DC80\)", id="low-surrogate"),
    ],
)
async def test_a_purge_path_with_a_c1_control_or_lone_surrogate_is_refused(
    cdn: CDNClient, fake_cdn: FakeCDNServer, path: str, message: str
) -> None:
    call = cdn.endpoints.purge(CERT, ["ok.png", path])
    await refused(fake_cdn, call, r"files\[1\] contains an? " + message)


def test_paths_with_non_ascii_text_are_still_purged_as_given() -> None:
    """Only controls and surrogates are refused: file names in any script stay valid."""
    paths = ["img/m\u00fcnchen.png", "\u65e5\u672c/\u00a0x", "emoji/\U0001f600.png"]
    assert check.files(paths) == paths


async def test_a_two_letter_bucket_is_refused(cdn: CDNClient, fake_cdn: FakeCDNServer) -> None:
    """Spaces bucket names are 3-63 characters, so no Space has a 2-letter name."""
    call = cdn.endpoints.create("ab.nyc3.digitaloceanspaces.com")
    await refused(fake_cdn, call, "the bucket 3-63 lowercase letters")


@pytest.mark.parametrize(
    "origin",
    [
        "a" * 64 + ".nyc3.digitaloceanspaces.com",  # 64: a DNS label's limit too
        "static.nyc3.cdn.digitaloceanspaces.com",  # the CDN's hostname, not the Space's
        "static.digitaloceanspaces.com",  # no region
        "digitaloceanspaces.com",
    ],
)
def test_names_under_digitaloceanspaces_com_must_be_a_space(origin: str) -> None:
    with pytest.raises(ValidationError, match="origin must be a hostname"):
        check.hostname("origin", origin)


async def test_files_async_checks_like_files_and_yields_to_the_loop() -> None:
    """The async check gives the same answer, and lets other tasks run between chunks."""
    paths = [f"/img/{i}.png" for i in range(3 * check.CHUNK + 1)]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    assert await check.files_async(paths) == check.files(paths)
    assert ticks - before >= 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ValidationError, match=r"files\[2\] contains a control"):
        await check.files_async(["a", "b", "c\x85"])
