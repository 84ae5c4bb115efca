"""The resource methods build exactly the requests the official spec describes.

Each request the SDK sends is captured (aioresponses) and validated with openapi-core
against the official bundled OpenAPI document.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aioresponses import aioresponses
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest

from cdn_async import TTL, CDNClient, RateLimits
from cdn_async.errors import ValidationError

from ._support import BASE, SPEC_PATH, TOKEN, endpoint_json

pytestmark = pytest.mark.looptime

ID = "892071a0-bb95-49bc-8021-3afd67a210bf"
CERT = "2e8c8dc6-9d0c-4fd7-8b83-3e3c0c4ad2d2"


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


@pytest.fixture
async def cdn() -> Any:
    async with CDNClient(
        TOKEN, base_url=BASE, limits=RateLimits.documented().scaled(0.001)
    ) as client:
        yield client


def sent(m: aioresponses) -> list[tuple[str, str, Any, Any]]:
    """(method, path, params, json) of every request sent, in order of the mock's keys."""
    out = []
    for (method, url), cs in m.requests.items():
        for c in cs:
            out.append((method, url.path, dict(url.query), c.kwargs.get("json")))
    return out


def check_against_spec(
    spec: OpenAPI, method: str, path: str, query: dict[str, str], body: Any
) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = MockRequest(
        "https://api.digitalocean.com",
        method.lower(),
        path,
        args=query,
        data=data,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    spec.validate_request(request)


async def test_list_follows_next_links_lazily_with_200_per_page(
    cdn: CDNClient, spec: OpenAPI
) -> None:
    first = [endpoint_json() for _ in range(2)]
    second = [endpoint_json()]
    with aioresponses() as m:
        m.get(
            f"{BASE}/v2/cdn/endpoints?page=1&per_page=200",
            payload={
                "endpoints": first,
                "links": {
                    "pages": {"next": f"{BASE}/v2/cdn/endpoints?page=2&per_page=200", "last": "x"}
                },
                "meta": {"total": 3},
            },
        )
        m.get(
            f"{BASE}/v2/cdn/endpoints?page=2&per_page=200",
            payload={
                "endpoints": second,
                "links": {"pages": {"first": "a", "prev": "b"}},
                "meta": {"total": 3},
            },
        )
        agen = cdn.endpoints.list()
        got = [await agen.__anext__()]
        assert len(sent(m)) == 1  # lazy: the second page is not fetched yet
        got += [ep async for ep in agen]
        requests = sent(m)
    assert [e.id for e in got] == [e["id"] for e in first + second]
    for method, path, query, body in requests:
        assert query["per_page"] == "200"
        check_against_spec(spec, method, path, query, body)


@pytest.mark.parametrize("links", [None, {}, {"pages": {}}, {"pages": {"last": "x"}}])
async def test_list_stops_when_there_is_no_next_link(cdn: CDNClient, links: Any) -> None:
    payload: dict[str, Any] = {"endpoints": [endpoint_json()], "meta": {"total": 1}}
    if links is not None:
        payload["links"] = links
    with aioresponses() as m:
        m.get(re.compile(r".*/v2/cdn/endpoints\?.*"), payload=payload)
        got = [ep async for ep in cdn.endpoints.list(per_page=5)]
    assert len(got) == 1


async def test_pages_carry_meta_total(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(
            re.compile(r".*/v2/cdn/endpoints\?.*"),
            payload={"endpoints": [endpoint_json()], "links": {}, "meta": {"total": 1}},
        )
        pages = [p async for p in cdn.endpoints.pages(per_page=1)]
    assert [(p.total, p.page, p.has_next, len(p.endpoints)) for p in pages] == [(1, 1, False, 1)]


async def test_next_link_to_another_host_is_never_followed(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.get(
            f"{BASE}/v2/cdn/endpoints?page=1&per_page=200",
            payload={
                "endpoints": [endpoint_json()],
                "links": {"pages": {"next": "https://evil.example/steal?page=2"}},
                "meta": {"total": 2},
            },
        )
        m.get(
            f"{BASE}/v2/cdn/endpoints?page=2&per_page=200",
            payload={"endpoints": [], "meta": {"total": 2}},
        )
        [ep async for ep in cdn.endpoints.list()]
        hosts = {url.host for (_, url) in m.requests}
    assert hosts == {"api.example.test"}


async def test_create_omits_ttl_when_not_given(cdn: CDNClient, spec: OpenAPI) -> None:
    with aioresponses() as m:
        m.post(f"{BASE}/v2/cdn/endpoints", status=201, payload={"endpoint": endpoint_json()})
        await cdn.endpoints.create("static.nyc3.digitaloceanspaces.com")
        [(method, path, query, body)] = sent(m)
    assert body == {"origin": "static.nyc3.digitaloceanspaces.com"}
    check_against_spec(spec, method, path, query, body)


async def test_create_with_every_field(cdn: CDNClient, spec: OpenAPI) -> None:
    with aioresponses() as m:
        m.post(f"{BASE}/v2/cdn/endpoints", status=201, payload={"endpoint": endpoint_json()})
        await cdn.endpoints.create(
            "static.nyc3.digitaloceanspaces.com",
            ttl=TTL.ONE_DAY,
            custom_domain="static.example.com",
            certificate_id=CERT,
        )
        [(method, path, query, body)] = sent(m)
    assert body == {
        "origin": "static.nyc3.digitaloceanspaces.com",
        "ttl": 86400,
        "custom_domain": "static.example.com",
        "certificate_id": CERT,
    }
    check_against_spec(spec, method, path, query, body)


async def test_update_sends_only_the_fields_given(cdn: CDNClient, spec: OpenAPI) -> None:
    with aioresponses() as m:
        m.put(f"{BASE}/v2/cdn/endpoints/{ID}", payload={"endpoint": endpoint_json(id=ID, ttl=600)})
        ep = await cdn.endpoints.update(ID, ttl=600)
        [(method, path, query, body)] = sent(m)
    assert body == {"ttl": 600}
    assert ep.ttl == TTL.TEN_MINUTES
    check_against_spec(spec, method, path, query, body)


async def test_update_removing_custom_domain_sends_empty_strings(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.put(f"{BASE}/v2/cdn/endpoints/{ID}", payload={"endpoint": endpoint_json(id=ID)})
        await cdn.endpoints.update(ID, custom_domain=None)
        [(_, _, _, body)] = sent(m)
    assert body == {"custom_domain": "", "certificate_id": ""}


async def test_update_with_cloudflare_certificate(cdn: CDNClient) -> None:
    with aioresponses() as m:
        m.put(f"{BASE}/v2/cdn/endpoints/{ID}", payload={"endpoint": endpoint_json(id=ID)})
        await cdn.endpoints.update(
            ID, custom_domain="cdn.example.com", certificate_id="needs-cloudflare-cert"
        )
        [(_, _, _, body)] = sent(m)
    assert body == {"custom_domain": "cdn.example.com", "certificate_id": "needs-cloudflare-cert"}


async def test_delete_and_purge_requests_match_the_spec(cdn: CDNClient, spec: OpenAPI) -> None:
    with aioresponses() as m:
        m.delete(f"{BASE}/v2/cdn/endpoints/{ID}/cache", status=204)
        m.delete(f"{BASE}/v2/cdn/endpoints/{ID}", status=204)
        report = await cdn.endpoints.purge(ID, ["/img/a.png", "css/*"])
        await cdn.endpoints.delete(ID)
        requests = sent(m)
    assert report.purged == ("img/a.png", "css/*") and report.ok and report.requests == 1
    assert requests[0][3] == {"files": ["img/a.png", "css/*"]}
    for method, path, query, body in requests:
        check_against_spec(spec, method, path, query, body)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda c: c.endpoints.create("static.nyc3.digitaloceanspaces.com", ttl=42),
            "ttl must be one of",
        ),
        (lambda c: c.endpoints.create("not a host"), "origin must be a hostname"),
        (
            lambda c: c.endpoints.create(
                "static.nyc3.digitaloceanspaces.com", custom_domain="cdn.example.com"
            ),
            "custom_domain needs certificate_id",
        ),
        (
            lambda c: c.endpoints.create(
                "static.nyc3.digitaloceanspaces.com", custom_domain="x.y", certificate_id="no"
            ),
            "certificate_id must be a UUID",
        ),
        (lambda c: c.endpoints.get("../../account"), "cdn_id must be a UUID"),
        (lambda c: c.endpoints.update(ID), "update needs at least one"),
        (lambda c: c.endpoints.update(ID, ttl=5), "ttl must be one of"),
        (lambda c: c.endpoints.delete(ID + "/cache"), "cdn_id must be a UUID"),
        (lambda c: c.endpoints.purge(ID, "img/a.png"), "not a single string"),
        (lambda c: c.endpoints.purge(ID, []), "at least one path"),
        (
            lambda c: c.endpoints.list(per_page=201).__anext__(),
            "per_page must be an int from 1 to 200",
        ),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    cdn: CDNClient, call: Any, message: str
) -> None:
    with aioresponses() as m:
        with pytest.raises(ValidationError, match=message):
            await call(cdn)
        assert not m.requests
