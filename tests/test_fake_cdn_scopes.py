"""``fake_cdn_fixture``: one fake for a whole module, on the module's event loop, or on a
thread of its own that answers sync and async tests alike."""

from __future__ import annotations

import httpx

from cdn_async.testing import FakeCDNServer, fake_cdn_fixture

ORIGIN = "static.nyc3.digitaloceanspaces.com"

threaded = fake_cdn_fixture(scope="module", in_thread=True, time_scale=0.01)
seen: list[str] = []


def test_a_sync_test_reaches_the_threaded_fake(threaded: FakeCDNServer) -> None:
    seen.append(threaded.url)
    threaded.add_endpoint(ORIGIN)
    # A blocking client from the test's own thread: the fake answers on its own loop.
    resp = httpx.get(
        f"{threaded.url}/v2/cdn/endpoints", headers={"Authorization": f"Bearer {threaded.token}"}
    )
    assert resp.status_code == 200 and len(resp.json()["endpoints"]) == 1


async def test_an_async_test_reaches_the_same_threaded_fake(threaded: FakeCDNServer) -> None:
    seen.append(threaded.url)
    assert len(set(seen)) == 1  # one server for the module
    async with threaded.client() as cdn:
        assert [e.origin async for e in cdn.endpoints.list()] == [ORIGIN]
