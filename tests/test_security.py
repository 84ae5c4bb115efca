"""The API token never reaches a repr, a log record, an exception or its repr."""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from cdn_async import CDNClient, RateLimits
from cdn_async.errors import CDNError

from ._support import BASE, endpoint_json

pytestmark = pytest.mark.looptime

SECRET = "dop_v1_PLANTED" + "7" * 50
ID = "892071a0-bb95-49bc-8021-3afd67a210bf"
ANY_CDN = re.compile(rf"^{re.escape(BASE)}/v2/cdn/endpoints.*$")


def leaky_request_info() -> aiohttp.RequestInfo:
    """What aiohttp attaches to its response errors: the request's headers, token included."""
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    url = URL(f"{BASE}/v2/cdn/endpoints/{ID}")
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {SECRET}"}))
    return aiohttp.RequestInfo(url, "GET", headers, url)


def texts_of(exc: BaseException) -> list[str]:
    out = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for value in vars(exc).values():
        out.append(repr(value))
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            out += texts_of(linked)
    return out


async def test_token_never_appears_in_reprs_logs_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    ep = endpoint_json(id=ID)
    async with CDNClient(
        SECRET,
        base_url=BASE,
        limits=RateLimits.documented().scaled(0.001),
        event_hooks=[lambda event: seen.append(repr(event))],
    ) as cdn:
        seen += [repr(cdn), repr(cdn._session), repr(cdn.endpoints), repr(cdn.budget_snapshot())]
        seen += [repr(cdn.with_options(timeout=1))]
        with aioresponses() as m:
            m.get(ANY_CDN, payload={"endpoints": [ep], "meta": {"total": 1}})
            m.post(ANY_CDN, status=201, payload={"endpoint": ep})
            m.get(ANY_CDN, payload={"endpoint": ep})
            m.put(ANY_CDN, payload={"endpoint": ep})
            m.delete(ANY_CDN, status=204)
            m.delete(ANY_CDN, status=204)
            seen += [repr([e async for e in cdn.endpoints.list()])]
            seen += [repr(await cdn.endpoints.create(ep["origin"]))]
            seen += [repr(await cdn.endpoints.get(ID))]
            seen += [repr(await cdn.endpoints.update(ID, ttl=60))]
            seen += [repr(await cdn.endpoints.purge(ID, ["a"]))]
            await cdn.endpoints.delete(ID)

        failures: list[tuple[str, dict[str, Any]]] = [
            (
                "get",
                {
                    "status": 401,
                    "payload": {"id": "unauthorized", "message": "Unable to authenticate you"},
                },
            ),
            ("get", {"status": 404, "body": "<html>Not Found</html>"}),
            ("put", {"status": 422, "payload": {"id": "unprocessable_entity", "message": "bad"}}),
            ("post", {"status": 500, "payload": {"id": "server_error", "message": "x"}}),
            (
                "delete",
                {
                    "status": 429,
                    "payload": {"id": "too_many_requests", "message": "x"},
                    "headers": {"retry-after": "999"},
                },
            ),
            ("get", {"exception": aiohttp.ClientConnectionError("connection reset")}),
            ("get", {"status": 200, "body": "not json"}),
            ("get", {"status": 302, "headers": {"Location": f"{BASE}/v2/cdn/endpoints/{ID}"}}),
            ("get", {"exception": aiohttp.TooManyRedirects(leaky_request_info(), ())}),
        ]
    for method, kwargs in failures:
        # A fresh client each: the 429 case pauses its budgets, which would stop the rest.
        async with CDNClient(SECRET, base_url=BASE, max_retries=0) as fresh:
            eps = fresh.endpoints
            with aioresponses() as m:
                getattr(m, method)(ANY_CDN, repeat=True, **kwargs)
                with pytest.raises(CDNError) as info:
                    if method == "get":
                        await eps.get(ID)
                    elif method == "put":
                        await eps.update(ID, ttl=60)
                    elif method == "post":
                        await eps.create("static.nyc3.digitaloceanspaces.com")
                    else:
                        await eps.delete(ID)
                seen += texts_of(info.value)

    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    seen += [repr(vars(r)) for r in caplog.records]  # the structured fields too
    assert any("ResponseReceived" in t for t in seen)  # the hook saw the calls
    assert len(caplog.records) > 10  # the DEBUG lines were really produced
    for text in seen:
        assert SECRET not in text
        assert "PLANTED" not in text
