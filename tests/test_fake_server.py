"""FakeCDNServer over real HTTP on loopback, driven by a plain aiohttp client.

Budget tests use an injected manual clock (the server's windows read it; nothing sleeps), so
they are exact and instantaneous. The rest run in virtual time (looptime): latency, purge
duration and window expiry read the event loop's clock, so their sleeps cost no real time and
their checks do not depend on the machine's speed. One expiry test and the ``python -m``
test run in real time: the first shows the default clock is the real one, the second waits
for another process.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest

import cdn_async.testing
from cdn_async.testing import ALL_SCOPES, FakeCDNServer, JournalEntry, serve
from cdn_async.testing._windows import SlidingWindow

from ._support import SPEC_PATH

REPO = Path(__file__).resolve().parents[1]
WALL0 = 1_800_000_000.0
CERT = "892071a0-bb95-49bc-8021-3afd67a210bf"

pytestmark = pytest.mark.looptime


def origin(n: int | str) -> str:
    return f"bucket-{n}.nyc3.digitaloceanspaces.com"


class ManualClock:
    """A clock the test moves; the server's windows and ``ratelimit-reset`` follow it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@attrs.frozen
class Answer:
    method: str
    path: str
    query: Mapping[str, str]
    request_body: bytes
    status: int
    headers: Mapping[str, str]
    content_type: str
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


class Api:
    """A thin raw-HTTP client: the tests check the wire, not the SDK."""

    def __init__(self, server: FakeCDNServer, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "default",
        body: Any = None,
        raw: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        headers = {}
        if token is not None:
            headers["Authorization"] = (
                f"Bearer {self.server.token if token == 'default' else token}"
            )
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        if data:
            headers["Content-Type"] = "application/json"
        async with self.http.request(
            method, self.server.url + path, data=data or None, headers=headers, params=params
        ) as resp:
            content = await resp.read()
            return Answer(
                method,
                resp.url.path,
                dict(resp.url.query),
                data,
                resp.status,
                {k.lower(): v for k, v in resp.headers.items()},
                resp.content_type,
                content,
            )

    async def create(self, n: int | str = 1, **fields: Any) -> Answer:
        return await self.call("POST", "/v2/cdn/endpoints", body={"origin": origin(n), **fields})

    async def purge(self, cdn_id: str, files: list[str], **kw: Any) -> Answer:
        return await self.call(
            "DELETE", f"/v2/cdn/endpoints/{cdn_id}/cache", body={"files": files}, **kw
        )


@pytest.fixture(scope="session")
def openapi() -> Any:
    from openapi_core import OpenAPI

    return OpenAPI.from_file_path(str(SPEC_PATH))


@pytest.fixture
def validate(openapi: Any) -> Any:
    """Validate an answer against the official spec (status, headers, body)."""
    from openapi_core.testing import MockRequest, MockResponse

    def check(answer: Answer) -> None:
        request = MockRequest(
            "https://api.digitalocean.com",
            answer.method,
            answer.path,
            args=dict(answer.query),
            data=answer.request_body,
        )
        response = MockResponse(
            answer.data,
            status_code=answer.status,
            headers=dict(answer.headers),
            content_type=answer.content_type if answer.data else None,  # type: ignore[arg-type]
        )
        openapi.validate_response(request, response)

    return check


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        # aiohttp silently resends an idempotent request once when the server drops the
        # connection; these tests must see the drop itself.
        session._retry_connection = False
        yield session


@pytest.fixture
async def server(clock: ManualClock) -> AsyncIterator[FakeCDNServer]:
    async with FakeCDNServer(clock=clock, wall_clock=clock.wall) as srv:
        yield srv


@pytest.fixture
def api(server: FakeCDNServer, http: aiohttp.ClientSession) -> Api:
    return Api(server, http)


def last(server: FakeCDNServer) -> JournalEntry:
    return server.journal[-1]


# -- surface -------------------------------------------------------------------------------


def test_public_names() -> None:
    """Every name in __all__ exists and reports the public module."""
    assert len(set(cdn_async.testing.__all__)) == len(cdn_async.testing.__all__)
    for name in cdn_async.testing.__all__:
        assert hasattr(cdn_async.testing, name)
    assert FakeCDNServer.__module__ == "cdn_async.testing"


def test_testing_imports_only_the_shared_rules_of_the_sdk() -> None:
    """cdn_async.testing takes the request rules from the client (cdn_async._validation, one
    place for both) and nothing else of the SDK for its behaviour: a fake built on the
    client's code could not catch the client's bugs. (``FakeCDNServer.client()`` only builds a
    client for the user; the fake never calls it.)"""
    client_builder = {
        ("_server.py", "_client"),
        ("_server.py", "_limits"),
        ("__init__.py", "_public"),
    }
    package = Path(cdn_async.testing.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 2:
                    assert node.module == "_validation" or (
                        (module.name, node.module) in client_builder
                    ), (module.name, node.module)
                else:
                    assert node.level == 1 or not (node.module or "").startswith("cdn_async")
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("cdn_async") for a in node.names), module.name


async def test_url_token_and_add_token() -> None:
    """The server listens on a free loopback port and hands out tokens with scopes."""
    async with FakeCDNServer() as srv:
        assert srv.url.startswith("http://127.0.0.1:") and srv.port > 0
        assert srv.token.startswith("dop_v1_")
        tok = srv.add_token(scopes=["cdn:read"])
        assert tok != srv.token and tok.startswith("dop_v1_")


async def test_constructor_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        FakeCDNServer(time_scale=0)
    with pytest.raises(ValueError):
        FakeCDNServer(cdn_budget_scope="region")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FakeCDNServer(header_budget="minute")  # type: ignore[arg-type]


# -- every kind of answer validates against the official spec -------------------------------


async def test_crud_answers_match_the_spec(api: Api, validate: Any) -> None:
    """201 create, 200 get, 200 update, 204 purge, 204 delete: statuses and shapes."""
    created = await api.create(1, ttl=600, custom_domain="static.example.com", certificate_id=CERT)
    assert created.status == 201
    validate(created)
    ep = created.json()["endpoint"]
    assert uuid.UUID(ep["id"]).version == 4
    assert ep["origin"] == origin(1)
    assert ep["endpoint"] == "bucket-1.nyc3.cdn.digitaloceanspaces.com"
    assert ep["ttl"] == 600 and ep["custom_domain"] == "static.example.com"
    assert ep["created_at"].startswith("20") and ep["created_at"].endswith("Z")

    got = await api.call("GET", f"/v2/cdn/endpoints/{ep['id']}")
    assert got.status == 200 and got.json() == {"endpoint": ep}
    validate(got)

    updated = await api.call("PUT", f"/v2/cdn/endpoints/{ep['id']}", body={"ttl": 86400})
    assert updated.status == 200 and updated.json()["endpoint"]["ttl"] == 86400
    validate(updated)

    purged = await api.purge(ep["id"], ["img/a.png", "css/*"])
    assert purged.status == 204 and purged.data == b""
    validate(purged)

    deleted = await api.call("DELETE", f"/v2/cdn/endpoints/{ep['id']}")
    assert deleted.status == 204 and deleted.data == b""
    validate(deleted)


async def test_list_answers_match_the_spec(api: Api, server: FakeCDNServer, validate: Any) -> None:
    """200 list, single page (links {}) and each page of a multi-page listing."""
    empty = await api.call("GET", "/v2/cdn/endpoints")
    assert empty.json() == {"endpoints": [], "links": {}, "meta": {"total": 0}}
    validate(empty)
    for i in range(5):
        server.add_endpoint(origin(i))
    for page in (1, 2, 3):
        answer = await api.call(
            "GET", "/v2/cdn/endpoints", params={"per_page": "2", "page": str(page)}
        )
        assert answer.status == 200
        validate(answer)


async def test_error_answers_match_the_spec(
    api: Api, server: FakeCDNServer, clock: ManualClock, validate: Any
) -> None:
    """400, 401, 403, 404, 409, 422 and 429 all carry {id, message, request_id}."""
    ep = server.add_endpoint(origin("x"))
    server.purge_duration = 0.2
    reader = server.add_token(["cdn:read"])
    answers = {
        400: await api.call("GET", "/v2/cdn/endpoints", params={"per_page": "500"}),
        401: await api.call("GET", "/v2/cdn/endpoints", token="nope"),
        403: await api.call("DELETE", f"/v2/cdn/endpoints/{ep['id']}", token=reader),
        404: await api.call("GET", f"/v2/cdn/endpoints/{uuid.uuid4()}"),
        422: await api.create(1, ttl=5),
    }
    first = asyncio.create_task(api.purge(ep["id"], ["a"]))
    await asyncio.sleep(0.05)
    answers[409] = await api.purge(ep["id"], ["a"])
    assert (await first).status == 204
    server.spend(server.token, "cdn", 5)
    answers[429] = await api.call("GET", "/v2/cdn/endpoints")
    for status, answer in answers.items():
        assert answer.status == status, answer
        body = answer.json()
        assert set(body) == {"id", "message", "request_id"}
        assert body["request_id"] == answer.headers["x-request-id"]
        validate(answer)
    assert answers[429].json()["id"] == "too_many_requests"
    assert answers[409].json()["id"] == "conflict"
    assert answers[401].json()["id"] == "unauthorized"


async def test_the_other_answer_kinds_match_the_spec(
    api: Api, server: FakeCDNServer, clock: ManualClock, validate: Any
) -> None:
    """The kinds the tests above leave out: a 429 of the minute budget (with Retry-After), the
    404 of a just-created endpoint, 422s of update and purge, a 400 for a body that is not
    JSON, JSON 5xx faults before and after the change, and a 405 (which no operation of the
    spec has: validated as the path's error answer, ``default``).

    Deliberately off the spec, so not validated: the HTML 5xx and non-JSON 2xx faults and
    dropped connections (what a proxy in front of the real API can answer), and 404s for
    paths outside the CDN API.
    """
    ep = server.add_endpoint(origin("k"))["id"]
    server.invisible_after_create = 5.0
    hidden = (await api.create("hidden")).json()["endpoint"]["id"]
    answers: dict[str, Answer] = {
        "404 invisible": await api.call("GET", f"/v2/cdn/endpoints/{hidden}"),
        "422 update": await api.call("PUT", f"/v2/cdn/endpoints/{ep}", body={"ttl": 1}),
        "422 purge": await api.purge(ep, ["a", ""]),
    }
    clock.advance(10)
    answers["400 not JSON"] = await api.call("POST", "/v2/cdn/endpoints", raw=b"{nope")
    server.faults.fail_next(1, status=503, when="before")
    answers["503 before"] = await api.call("GET", "/v2/cdn/endpoints")
    server.faults.fail_next(1, status=500, when="after")
    answers["500 after"] = await api.call("DELETE", f"/v2/cdn/endpoints/{ep}")
    clock.advance(10)
    answers["405"] = await api.call("PATCH", f"/v2/cdn/endpoints/{hidden}", body={"ttl": 60})
    server.spend(server.token, "minute", 250)
    answers["429 minute"] = await api.call("GET", "/v2/cdn/endpoints")
    for kind, answer in answers.items():
        assert answer.status == int(kind[:3]), (kind, answer)
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
        validate(attrs.evolve(answer, method="GET") if kind == "405" else answer)
    assert answers["429 minute"].headers["retry-after"].isdigit()
    assert last(server).rule == "rate_limit:minute"


async def test_head_answers_like_get_without_a_body(
    api: Api, server: FakeCDNServer, validate: Any
) -> None:
    """HEAD on the list and on an endpoint: GET's status and headers (so the spec's GET answer
    validates them, with GET's body), no body; counted like the GET it stands for."""
    ep = server.add_endpoint(origin("h"))["id"]
    for path in ("/v2/cdn/endpoints", f"/v2/cdn/endpoints/{ep}"):
        got = await api.call("GET", path)
        head = await api.call("HEAD", path)
        assert head.status == got.status == 200 and head.data == b""
        assert head.content_type == got.content_type == "application/json"
        assert head.headers["content-length"] == got.headers["content-length"]
        validate(attrs.evolve(head, method="GET", data=got.data))
        assert (last(server).method, last(server).op, last(server).counted) == (
            "HEAD",
            "get" if path.endswith(ep) else "list",
            True,
        )
    missing = await api.call("HEAD", f"/v2/cdn/endpoints/{uuid.uuid4()}")
    assert missing.status == 404 and missing.data == b""


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/v2/cdn/endpoints", "GET, HEAD, POST"),
        ("DELETE", "/v2/cdn/endpoints", "GET, HEAD, POST"),
        ("POST", "/v2/cdn/endpoints/{id}", "DELETE, GET, HEAD, PUT"),
        ("GET", "/v2/cdn/endpoints/{id}/cache", "DELETE"),
        ("PUT", "/v2/cdn/endpoints/{id}/cache", "DELETE"),
    ],
)
async def test_a_405_names_the_allowed_methods(
    api: Api, server: FakeCDNServer, method: str, path: str, allow: str
) -> None:
    """RFC 9110: a 405 answer must carry ``Allow``."""
    answer = await api.call(method, path.format(id=server.add_endpoint(origin("m"))["id"]))
    assert answer.status == 405 and answer.json()["id"] == "method_not_allowed"
    assert answer.headers["allow"] == allow


async def test_every_answer_has_request_id_and_ratelimit_headers(api: Api) -> None:
    for answer in (
        await api.call("GET", "/v2/cdn/endpoints"),
        await api.call("GET", "/v2/cdn/endpoints", token=None),
        await api.call("GET", "/v2/account"),
    ):
        uuid.UUID(answer.headers["x-request-id"])
        for h in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"):
            int(answer.headers[h])


# -- pagination ------------------------------------------------------------------------------


async def test_pagination_over_450_endpoints(api: Api, server: FakeCDNServer) -> None:
    """Following links.pages.next visits every endpoint once; links are absolute URLs."""
    ids = [server.add_endpoint(origin(i))["id"] for i in range(450)]
    seen: list[str] = []
    url: str | None = f"{server.url}/v2/cdn/endpoints?per_page=200"
    pages = []
    while url is not None:
        async with api.http.get(url, headers={"Authorization": f"Bearer {server.token}"}) as resp:
            assert resp.status == 200
            body = await resp.json()
        pages.append(body["links"].get("pages", {}))
        assert body["meta"]["total"] == 450
        seen += [e["id"] for e in body["endpoints"]]
        url = body["links"].get("pages", {}).get("next")
    assert seen == ids
    assert [sorted(p) for p in pages] == [
        ["last", "next"],
        ["first", "last", "next", "prev"],
        ["first", "prev"],
    ]
    for p in pages:
        for link in p.values():
            assert link.startswith(server.url + "/v2/cdn/endpoints?")
    assert pages[0]["last"].endswith("page=3&per_page=200")


async def test_default_per_page_is_20(api: Api, server: FakeCDNServer) -> None:
    for i in range(21):
        server.add_endpoint(origin(i))
    body = (await api.call("GET", "/v2/cdn/endpoints")).json()
    assert len(body["endpoints"]) == 20 and body["meta"]["total"] == 21
    assert "per_page=20" in body["links"]["pages"]["next"]


@pytest.mark.parametrize(
    "params",
    [
        {"per_page": "0"},
        {"per_page": "201"},
        {"per_page": "abc"},
        {"per_page": "2.5"},
        {"page": "x"},
        {"page": "0"},
    ],
)
async def test_bad_paging_is_400(api: Api, server: FakeCDNServer, params: dict[str, str]) -> None:
    answer = await api.call("GET", "/v2/cdn/endpoints", params=params)
    assert answer.status == 400 and answer.json()["id"] == "bad_request"
    assert last(server).rule == "bad_request"


async def test_per_page_bounds_are_accepted(api: Api) -> None:
    for per_page in ("1", "200"):
        assert (
            await api.call("GET", "/v2/cdn/endpoints", params={"per_page": per_page})
        ).status == 200


# -- auth and scopes -------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer unknown", "Basic abc"])
async def test_unknown_or_missing_token_is_401(
    http: aiohttp.ClientSession, server: FakeCDNServer, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with http.get(f"{server.url}/v2/cdn/endpoints", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["id"] == "unauthorized"
    entry = last(server)
    assert entry.rule == "auth" and not entry.counted


OPS = {
    "list": ("GET", "/v2/cdn/endpoints", None, "cdn:read"),
    "create": ("POST", "/v2/cdn/endpoints", {"origin": origin("new")}, "cdn:create"),
    "get": ("GET", "/v2/cdn/endpoints/{id}", None, "cdn:read"),
    "update": ("PUT", "/v2/cdn/endpoints/{id}", {"ttl": 60}, "cdn:update"),
    "delete": ("DELETE", "/v2/cdn/endpoints/{id}", None, "cdn:delete"),
    "purge": ("DELETE", "/v2/cdn/endpoints/{id}/cache", {"files": ["a"]}, "cdn:delete"),
}


@pytest.mark.parametrize("op", list(OPS))
async def test_each_operation_needs_its_scope(api: Api, server: FakeCDNServer, op: str) -> None:
    """403 without the scope (even with all the others); success with only that scope."""
    method, path, body, scope = OPS[op]
    path = path.format(id=server.add_endpoint(origin("s"))["id"])
    others = server.add_token([s for s in ALL_SCOPES if s != scope])
    denied = await api.call(method, path, token=others, body=body)
    assert denied.status == 403 and denied.json()["id"] == "forbidden"
    assert last(server).rule == "scope"
    only = server.add_token([scope])
    allowed = await api.call(method, path, token=only, body=body)
    assert allowed.status in (200, 201, 204)


async def test_tokens_option(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with FakeCDNServer(tokens={"reader": ["cdn:read"]}, clock=clock) as srv:
        api = Api(srv, http)
        assert (await api.call("GET", "/v2/cdn/endpoints", token="reader")).status == 200
        denied = await api.call(
            "POST", "/v2/cdn/endpoints", token="reader", body={"origin": origin(1)}
        )
        assert denied.status == 403


# -- 404 and 422 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/cdn/endpoints/{uuid}"),
        ("PUT", "/v2/cdn/endpoints/{uuid}"),
        ("DELETE", "/v2/cdn/endpoints/{uuid}"),
        ("DELETE", "/v2/cdn/endpoints/{uuid}/cache"),
        ("GET", "/v2/cdn/endpoints/not-a-uuid"),
        ("GET", "/v2/droplets"),
    ],
)
async def test_unknown_resource_is_404(
    api: Api, server: FakeCDNServer, method: str, path: str
) -> None:
    body = (
        {"files": ["a"]} if path.endswith("cache") else ({"ttl": 60} if method == "PUT" else None)
    )
    answer = await api.call(method, path.format(uuid=uuid.uuid4()), body=body)
    assert answer.status == 404 and answer.json()["id"] == "not_found"
    assert last(server).rule == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"origin": origin(1), "ttl": 59},
        {"origin": origin(1), "ttl": "3600"},
        {"origin": origin(1), "ttl": True},
        {"origin": origin(1), "ttl": None},  # the spec's ttl is an integer, not nullable
        {"origin": "static.s3.amazonaws.com"},
        {"origin": "example.com"},
        {"origin": "Bucket.nyc3.digitaloceanspaces.com"},
        {"origin": "bucket.nyc3.cdn.digitaloceanspaces.com"},
        {"origin": 42},
        {},
        {"origin": origin(1), "custom_domain": "static.example.com"},
        {"origin": origin(1), "custom_domain": "static.example.com", "certificate_id": "nope"},
        {"origin": origin(1), "custom_domain": "not a host", "certificate_id": CERT},
        [],
    ],
)
async def test_invalid_create_is_422(api: Api, server: FakeCDNServer, body: Any) -> None:
    answer = await api.call("POST", "/v2/cdn/endpoints", body=body)
    assert answer.status == 422, answer
    assert answer.json()["id"] == "unprocessable_entity"
    assert last(server).rule == "validation"
    assert server.endpoints == []


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("origin", "abc.nyc3.digitaloceanspaces.com", True),
        ("origin", "a" * 63 + ".nyc3.digitaloceanspaces.com", True),
        ("origin", "ab.nyc3.digitaloceanspaces.com", False),  # Spaces: 3-63 characters
        ("origin", "a" * 64 + ".nyc3.digitaloceanspaces.com", False),
        ("origin", "abc.nyc3.digitaloceanspaces.com\n", False),
        ("origin", "\u017ftatic.nyc3.digitaloceanspaces.com", False),
        ("origin", "\u212aelvin.nyc3.digitaloceanspaces.com", False),
        ("custom_domain", "cdn.example.com", True),
        ("custom_domain", "xn--mnchen-3ya.example", True),
        ("custom_domain", "cdn.example.com\n", False),
        ("custom_domain", "m\u00fcnchen.example", False),
        ("custom_domain", "\u0130mg.example.com", False),
    ],
)
async def test_the_fake_and_the_client_apply_the_same_rules(
    api: Api, server: FakeCDNServer, field: str, value: str, ok: bool
) -> None:
    """Both take them from cdn_async._validation: what the client refuses before sending,
    the fake refuses with 422, and what it sends, the fake accepts."""
    from cdn_async import _validation as check
    from cdn_async.errors import ValidationError

    try:
        check.hostname(field, value)
        client_ok = True
    except ValidationError:
        client_ok = False
    body = {"origin": value} if field == "origin" else {"origin": origin("r"), field: value}
    if field == "custom_domain":
        body["certificate_id"] = CERT
    answer = await api.call("POST", "/v2/cdn/endpoints", body=body)
    assert (answer.status == 201, client_ok) == (ok, ok), answer


async def test_malformed_json_is_400(api: Api, server: FakeCDNServer) -> None:
    answer = await api.call("POST", "/v2/cdn/endpoints", raw=b"{not json")
    assert answer.status == 400 and last(server).rule == "bad_request"
    assert last(server).body == "{not json"


async def test_origin_with_an_endpoint_is_422_until_deleted(api: Api) -> None:
    ep = (await api.create(1)).json()["endpoint"]
    assert (await api.create(1)).status == 422
    await api.call("DELETE", f"/v2/cdn/endpoints/{ep['id']}")
    assert (await api.create(1)).status == 201


async def test_create_defaults_and_cloudflare_sentinel(api: Api) -> None:
    ep = (await api.create(1)).json()["endpoint"]
    assert ep["ttl"] == 3600 and "custom_domain" not in ep and "certificate_id" not in ep
    ep2 = (
        await api.create(2, custom_domain="cdn.example.com", certificate_id="needs-cloudflare-cert")
    ).json()["endpoint"]
    assert ep2["certificate_id"] == "needs-cloudflare-cert"


async def test_update_changes_only_given_fields(api: Api, clock: ManualClock) -> None:
    ep = (await api.create(1, ttl=60, custom_domain="a.example.com", certificate_id=CERT)).json()[
        "endpoint"
    ]
    path = f"/v2/cdn/endpoints/{ep['id']}"
    got = (await api.call("PUT", path, body={"ttl": 600})).json()["endpoint"]
    assert got == {**ep, "ttl": 600}
    assert (await api.call("PUT", path, body={"ttl": 7})).status == 422
    assert (await api.call("PUT", path, body={"certificate_id": ""})).status == 422
    removed = await api.call("PUT", path, body={"custom_domain": "", "certificate_id": ""})
    assert removed.status == 200
    assert "custom_domain" not in removed.json()["endpoint"]
    clock.advance(10)  # past the 5 / 10 s cdn budget
    assert (await api.call("PUT", path, body={"custom_domain": "b.example.com"})).status == 422
    assert (await api.call("PUT", path, body={"ttl": None})).status == 422  # not nullable


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"files": []},
        {"files": "a"},
        {"files": ["a", 3]},
        {"files": [""]},
        {"files": ["a\x85"]},
        {"files": ["a\x9b"]},
        {"files": ["a\x00"]},
        {"files": ["a\ud800"]},  # a lone surrogate, sent as the JSON escape "\\ud800"
    ],
)
async def test_invalid_purge_is_422(api: Api, server: FakeCDNServer, body: Any) -> None:
    ep = server.add_endpoint(origin(1))
    answer = await api.call("DELETE", f"/v2/cdn/endpoints/{ep['id']}/cache", body=body)
    assert answer.status == 422 and last(server).rule == "validation"


async def test_delete_then_get_is_404(api: Api) -> None:
    ep = (await api.create(1)).json()["endpoint"]
    assert (await api.call("DELETE", f"/v2/cdn/endpoints/{ep['id']}")).status == 204
    assert (await api.call("GET", f"/v2/cdn/endpoints/{ep['id']}")).status == 404


# -- budgets ---------------------------------------------------------------------------------


async def test_cdn_budget_is_an_exact_sliding_window(
    api: Api, server: FakeCDNServer, clock: ManualClock
) -> None:
    """5 per 10 s: each request frees its unit exactly 10 s after it was stamped."""
    statuses = [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(3)]
    clock.advance(5)
    statuses += [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(2)]
    assert statuses == [200] * 5
    clock.advance(4.999)
    refused = await api.call("GET", "/v2/cdn/endpoints")
    assert refused.status == 429 and refused.json()["id"] == "too_many_requests"
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-remaining"] == "0"
    # The oldest counted request was stamped at t0 and expires at t0 + 10 (0.001 s from now).
    assert refused.headers["ratelimit-reset"] == str(math.ceil(clock.wall() + 0.001))
    assert "retry-after" not in refused.headers
    assert last(server).rule == "rate_limit:cdn" and not last(server).counted
    clock.advance(0.001)  # the first three expire together
    again = [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(4)]
    assert again == [200, 200, 200, 429]
    assert server.used(server.token, "cdn") == 5
    assert server.counters.rate_limited == {"cdn": 2}


async def test_headers_describe_the_cdn_window(api: Api, clock: ManualClock) -> None:
    first = await api.call("GET", "/v2/cdn/endpoints")
    assert first.headers["ratelimit-limit"] == "5"
    assert first.headers["ratelimit-remaining"] == "4"
    assert first.headers["ratelimit-reset"] == str(math.ceil(clock.wall() + 10))
    clock.advance(2.5)
    second = await api.call("GET", "/v2/cdn/endpoints")
    assert second.headers["ratelimit-remaining"] == "3"
    assert second.headers["ratelimit-reset"] == str(math.ceil(clock.wall() + 7.5))


async def test_header_budget_hourly(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with FakeCDNServer(header_budget="hourly", clock=clock, wall_clock=clock.wall) as srv:
        answer = await Api(srv, http).call("GET", "/v2/cdn/endpoints")
        assert answer.headers["ratelimit-limit"] == "5000"
        assert answer.headers["ratelimit-remaining"] == "4999"
        assert answer.headers["ratelimit-reset"] == str(math.ceil(clock.wall() + 3600))


async def test_time_scale_multiplies_periods(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with FakeCDNServer(time_scale=0.01, clock=clock, wall_clock=clock.wall) as srv:
        api = Api(srv, http)
        assert [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(6)][-1] == 429
        clock.advance(0.1)
        assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200


@pytest.mark.looptime(False)
async def test_real_time_window_expires(http: aiohttp.ClientSession) -> None:
    """With the default loop clock, a scaled window really empties after its period."""
    async with FakeCDNServer(time_scale=0.02) as srv:  # cdn: 5 per 0.2 s
        api = Api(srv, http)
        first = [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(5)]
        assert first == [200] * 5
        assert 1 <= srv.used(srv.token, "cdn") <= 5
        await asyncio.sleep(0.2)
        assert srv.used(srv.token, "cdn") == 0
        assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200


async def test_minute_budget_429_has_retry_after(
    http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    async with FakeCDNServer(header_budget="hourly", clock=clock, wall_clock=clock.wall) as srv:
        api = Api(srv, http)
        srv.spend(srv.token, "minute", 249)
        clock.advance(20)
        assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200
        clock.advance(0.5)
        refused = await api.call("GET", "/v2/cdn/endpoints")
        assert refused.status == 429
        assert refused.headers["retry-after"] == "40"  # ceil(60 - 20.5) : the phantom units expire
        assert refused.headers["ratelimit-limit"] == "5000"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert srv.counters.rate_limited == {"minute": 1}
        assert srv.used(srv.token, "minute") == 250  # the refused request was not counted


async def test_hourly_budget(api: Api, server: FakeCDNServer, clock: ManualClock) -> None:
    server.spend(server.token, "hourly", 5000)
    refused = await api.call("GET", "/v2/cdn/endpoints")
    assert refused.status == 429 and last(server).rule == "rate_limit:hourly"
    assert "retry-after" not in refused.headers
    clock.advance(3600)
    assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200


async def test_purge_files_budget_counts_paths(
    api: Api, server: FakeCDNServer, clock: ManualClock
) -> None:
    """50 paths per 20 s; a wildcard path is one; a refused purge takes nothing."""
    ep = server.add_endpoint(origin(1))["id"]
    assert (await api.purge(ep, [f"f{i}" for i in range(29)] + ["css/*"])).status == 204
    assert (await api.purge(ep, [f"g{i}" for i in range(21)])).status == 429
    assert last(server).rule == "rate_limit:purge_files"
    assert server.used(server.token, "purge_files") == 30
    assert (await api.purge(ep, [f"g{i}" for i in range(20)])).status == 204
    clock.advance(20)
    assert (await api.purge(ep, ["*"])).status == 204
    assert server.used(server.token, "purge_files") == 1


async def test_cdn_budget_per_endpoint(http: aiohttp.ClientSession, clock: ManualClock) -> None:
    async with FakeCDNServer(
        cdn_budget_scope="endpoint", clock=clock, wall_clock=clock.wall
    ) as srv:
        api = Api(srv, http)
        a, b = srv.add_endpoint(origin("a"))["id"], srv.add_endpoint(origin("b"))["id"]
        got = [(await api.call("GET", f"/v2/cdn/endpoints/{a}")).status for _ in range(6)]
        assert got == [200] * 5 + [429]
        answer = await api.call("GET", f"/v2/cdn/endpoints/{b}")
        assert answer.status == 200 and answer.headers["ratelimit-remaining"] == "4"
        assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200
        srv.spend(srv.token, "cdn", 5, endpoint_id=b)
        assert (await api.call("GET", f"/v2/cdn/endpoints/{b}")).status == 429


async def test_budgets_are_per_token(api: Api, server: FakeCDNServer) -> None:
    server.spend(server.token, "cdn", 5)
    assert (await api.call("GET", "/v2/cdn/endpoints")).status == 429
    other = server.add_token()
    assert (await api.call("GET", "/v2/cdn/endpoints", token=other)).status == 200


async def test_spend_shows_in_headers(api: Api, server: FakeCDNServer) -> None:
    """Another client's spending lowers what the headers say remains."""
    server.spend(server.token, "cdn", 3)
    assert (await api.call("GET", "/v2/cdn/endpoints")).headers["ratelimit-remaining"] == "1"
    with pytest.raises(ValueError):
        server.spend(server.token, "daily", 1)


async def test_non_cdn_paths_skip_the_cdn_budget(api: Api, server: FakeCDNServer) -> None:
    server.spend(server.token, "cdn", 5)
    answer = await api.call("GET", "/v2/account")
    assert answer.status == 404 and answer.headers["ratelimit-limit"] == "5000"


async def test_rejected_requests_still_count(api: Api, server: FakeCDNServer) -> None:
    """Answers other than 401 and 429 (403, 404, 422...) are counted like the API does."""
    reader = server.add_token(["cdn:read"])
    await api.call("POST", "/v2/cdn/endpoints", token=reader, body={"origin": origin(1)})
    await api.call("GET", f"/v2/cdn/endpoints/{uuid.uuid4()}")
    await api.create(1, ttl=1)
    assert server.used(server.token, "cdn") == 2 and server.used(reader, "cdn") == 1
    assert [e.counted for e in server.journal] == [True, True, True]


async def test_concurrent_burst_admits_exactly_the_limit(api: Api, server: FakeCDNServer) -> None:
    answers = await asyncio.gather(*(api.call("GET", "/v2/cdn/endpoints") for _ in range(20)))
    assert sorted(a.status for a in answers) == [200] * 5 + [429] * 15
    assert server.counters.rate_limited == {"cdn": 15}
    assert server.used(server.token, "cdn") == 5


async def test_purge_larger_than_the_file_budget_is_always_429(
    api: Api, server: FakeCDNServer
) -> None:
    ep = server.add_endpoint(origin(1))["id"]
    assert (await api.purge(ep, [f"f{i}" for i in range(51)])).status == 429
    assert server.used(server.token, "purge_files") == 0


async def test_default_clock_is_the_event_loop_clock(http: aiohttp.ClientSession) -> None:
    """Under looptime's virtual time, the documented 10 s cdn window passes instantly."""
    async with FakeCDNServer() as srv:
        api = Api(srv, http)
        got = [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(6)]
        assert got == [200] * 5 + [429]
        await asyncio.sleep(10)
        assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200


def test_sliding_window_unit() -> None:
    w = SlidingWindow(limit=5, period=10.0)
    w.add(3, 0.0)
    w.add(2, 4.0)
    assert (w.used(9.9), w.remaining(9.9), w.fits(1, 9.9)) == (5, 0, False)
    assert w.time_until_fits(1, 9.0) == 1.0
    assert w.time_until_fits(4, 9.0) == 5.0  # the second entry must go too
    assert w.time_until_fits(6, 9.0) == math.inf
    assert w.oldest_expiry(10.0) == 14.0 and w.used(10.0) == 2
    assert w.oldest_expiry(14.0) is None and w.time_until_fits(5, 14.0) == 0.0


# -- identical purges --------------------------------------------------------------------------


async def test_identical_purge_in_progress_is_409(api: Api, server: FakeCDNServer) -> None:
    server.purge_duration = 0.2
    a = server.add_endpoint(origin("a"))["id"]
    b = server.add_endpoint(origin("b"))["id"]
    first = asyncio.create_task(api.purge(a, ["x", "y/*"]))
    await asyncio.sleep(0.05)
    same = await api.purge(a, ["y/*", "x"])  # same set, another order
    assert same.status == 409 and same.json()["id"] == "conflict"
    results = await asyncio.gather(api.purge(a, ["x"]), api.purge(b, ["x", "y/*"]), first)
    assert [r.status for r in results] == [204, 204, 204]
    assert (await api.purge(a, ["x", "y/*"])).status == 204  # the first one has finished
    assert server.counters.conflicts == 1
    assert server.counters.by_rule["conflict"] == 1


# -- faults ------------------------------------------------------------------------------------


async def test_5xx_before_changes_nothing(api: Api, server: FakeCDNServer) -> None:
    server.faults.fail_next(1, status=503, when="before")
    answer = await api.create(1)
    assert answer.status == 503 and answer.json()["id"] == "server_error"
    assert server.endpoints == []
    entry = last(server)
    assert entry.rule == "fault:5xx_before" and entry.counted
    assert (await api.create(1)).status == 201


async def test_5xx_after_the_change_was_applied(api: Api, server: FakeCDNServer) -> None:
    server.faults.fail_next(1, status=500, when="after")
    answer = await api.create(1)
    assert answer.status == 500
    assert [e["origin"] for e in server.endpoints] == [origin(1)]
    assert last(server).rule == "fault:5xx_after"


async def test_5xx_html_body(api: Api, server: FakeCDNServer) -> None:
    server.faults.fail_next(1, status=502, html=True)
    answer = await api.call("GET", "/v2/cdn/endpoints")
    assert answer.status == 502 and answer.content_type == "text/html"
    assert answer.data.startswith(b"<html>")


async def test_after_faults_wait_for_a_successful_request(api: Api, server: FakeCDNServer) -> None:
    server.faults.fail_next(1, when="after")
    assert (await api.create(1, ttl=3)).status == 422
    assert (await api.create(1)).status == 503


@pytest.mark.parametrize(("when", "created"), [("before", False), ("after", True)])
async def test_dropped_connection(
    api: Api, server: FakeCDNServer, when: Any, created: bool
) -> None:
    server.faults.drop_next(1, when=when)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.create(1)
    assert bool(server.endpoints) is created
    entry = last(server)
    assert entry.status is None and entry.rule == f"fault:drop_{when}"
    assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200  # the server lives on


async def test_non_json_body(api: Api, server: FakeCDNServer) -> None:
    server.faults.non_json_next(2)
    answer = await api.create(1)
    assert answer.status == 201 and answer.content_type == "text/html"
    with pytest.raises(ValueError):
        answer.json()
    assert len(server.endpoints) == 1
    deleted = await api.call("DELETE", f"/v2/cdn/endpoints/{server.endpoints[0]['id']}")
    assert deleted.status == 200 and deleted.content_type == "text/html"  # no body in a 204
    assert server.endpoints == []
    assert server.counters.by_rule["fault:non_json"] == 2


async def test_fault_restricted_to_an_operation(api: Api, server: FakeCDNServer) -> None:
    ep = server.add_endpoint(origin(1))["id"]
    server.faults.fail_next(1, op="purge")
    assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200
    assert (await api.purge(ep, ["a"])).status == 503
    assert (await api.purge(ep, ["a"])).status == 204
    with pytest.raises(ValueError):
        server.faults.fail_next(1, op="patch")


async def test_fail_next_counts_down_and_clear(api: Api, server: FakeCDNServer) -> None:
    server.faults.fail_next(2)
    got = [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(3)]
    assert got == [503, 503, 200]
    server.faults.fail_randomly(1.0)
    server.faults.clear()
    assert (await api.call("GET", "/v2/cdn/endpoints")).status == 200


async def test_a_429_does_not_consume_a_fault(api: Api, server: FakeCDNServer) -> None:
    server.spend(server.token, "cdn", 5)
    server.faults.fail_next(1)
    assert (await api.call("GET", "/v2/cdn/endpoints")).status == 429
    assert server.faults.rules[0].remaining == 1


async def _random_statuses(http: aiohttp.ClientSession, seed: int) -> list[int]:
    async with FakeCDNServer(seed=seed, time_scale=1e-9) as srv:
        srv.faults.fail_randomly(0.5, status=500)
        api = Api(srv, http)
        return [(await api.call("GET", "/v2/cdn/endpoints")).status for _ in range(20)]


@pytest.mark.looptime(False)  # windows scaled to nothing empty only as real time passes
async def test_random_faults_are_deterministic_under_a_seed(http: aiohttp.ClientSession) -> None:
    first = await _random_statuses(http, 7)
    assert first == await _random_statuses(http, 7)
    assert set(first) == {200, 500}


async def test_uplink_latency_delays_the_stamp(
    http: aiohttp.ClientSession,
) -> None:
    async with FakeCDNServer() as srv:
        srv.faults.latency(up=0.1)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await Api(srv, http).call("GET", "/v2/cdn/endpoints")
        assert last(srv).arrival - sent >= 0.1


async def test_downlink_latency_delays_the_answer(http: aiohttp.ClientSession) -> None:
    async with FakeCDNServer() as srv:
        srv.faults.latency(down=0.1, jitter=0.05)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        await Api(srv, http).call("GET", "/v2/cdn/endpoints")
        answered = loop.time()
        assert answered - sent >= 0.1
        # Stamped on arrival, before the downlink delay: the answer came at least 0.1 s later.
        assert answered - last(srv).arrival >= 0.1


def test_jitter_is_deterministic_under_a_seed() -> None:
    a, b = FakeCDNServer(seed=3), FakeCDNServer(seed=3)
    for srv in (a, b):
        srv.faults.latency(up=0.01, down=0.02, jitter=0.5)
    delays = [a.faults.delay("up") for _ in range(5)]
    assert delays == [b.faults.delay("up") for _ in range(5)]
    assert all(0.01 <= d <= 0.51 for d in delays) and len(set(delays)) == 5
    with pytest.raises(ValueError):
        a.faults.latency(up=-1)


async def test_new_endpoint_invisible_to_get(
    api: Api, server: FakeCDNServer, clock: ManualClock
) -> None:
    server.invisible_after_create = 3.0
    ep = (await api.create(1)).json()["endpoint"]
    hidden = await api.call("GET", f"/v2/cdn/endpoints/{ep['id']}")
    assert hidden.status == 404 and hidden.json()["id"] == "not_found"
    assert last(server).rule == "invisible"
    clock.advance(3.0)
    assert (await api.call("GET", f"/v2/cdn/endpoints/{ep['id']}")).status == 200


# -- journal and counters ----------------------------------------------------------------------


async def test_journal_records_every_request(
    api: Api, server: FakeCDNServer, clock: ManualClock
) -> None:
    created = await api.create(1, ttl=60)
    clock.advance(1)
    listed = await api.call("GET", "/v2/cdn/endpoints", params={"per_page": "5"})
    first, second = server.journal
    assert (first.method, first.path, first.body, first.status, first.rule, first.op) == (
        "POST",
        "/v2/cdn/endpoints",
        {"origin": origin(1), "ttl": 60},
        201,
        "ok",
        "create",
    )
    assert first.request_id == created.headers["x-request-id"]
    assert (second.query, second.status, second.arrival - first.arrival) == (
        {"per_page": "5"},
        200,
        1.0,
    )
    assert second.request_id == listed.headers["x-request-id"]
    assert server.token not in repr(first)
    assert server.counters.requests == 2 and server.counters.by_status == {201: 1, 200: 1}
    server.reset_journal()
    assert server.journal == [] and server.counters.requests == 0


# -- entry points ------------------------------------------------------------------------------


async def test_fake_cdn_fixture(fake_cdn: FakeCDNServer, http: aiohttp.ClientSession) -> None:
    """The pytest plugin's fixture yields a running server."""
    answer = await Api(fake_cdn, http).call("GET", "/v2/cdn/endpoints")
    assert answer.status == 200


@pytest.mark.fake_cdn(time_scale=0.5, cdn_budget_scope="endpoint")
async def test_fake_cdn_fixture_takes_options_from_marker(fake_cdn: FakeCDNServer) -> None:
    assert fake_cdn.time_scale == 0.5 and fake_cdn.cdn_budget_scope == "endpoint"


async def test_serve_runs_until_cancelled(http: aiohttp.ClientSession) -> None:
    ready: asyncio.Future[FakeCDNServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(port=0, on_ready=ready.set_result, time_scale=0.5))
    srv = await asyncio.wait_for(ready, 5)
    assert srv.time_scale == 0.5
    assert (await Api(srv, http).call("GET", "/v2/cdn/endpoints")).status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.looptime(False)  # it waits for another process
async def test_python_m_cdn_async_testing(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cdn_async.testing",
        "--port",
        "0",
        "--token",
        "secret-token",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        url = line.split(" at ")[1].strip()
        async with http.get(
            f"{url}/v2/cdn/endpoints", headers={"Authorization": "Bearer secret-token"}
        ) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        await proc.wait()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1, written under ``tmp_path``."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_serves_https_when_given_an_ssl_context(tmp_path: Path) -> None:
    """With ``ssl_context`` the server listens over TLS and ``url`` is ``https://``."""
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with FakeCDNServer(ssl_context=server_ctx) as server:
        assert server.url.startswith("https://127.0.0.1:")
        connector = aiohttp.TCPConnector(ssl=client_ctx)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(
                f"{server.url}/v2/cdn/endpoints",
                headers={"Authorization": f"Bearer {server.token}"},
            ) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["meta"] == {"total": 0}
