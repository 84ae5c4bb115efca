"""``fake_cdn_fixture(scope="module")``: one fake on pytest-asyncio's module loop, for tests
that run on that loop too."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cdn_async import CDNClient
from cdn_async.testing import FakeCDNServer, fake_cdn_fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

ORIGIN = "static.nyc3.digitaloceanspaces.com"

fake_api = fake_cdn_fixture(scope="module", time_scale=0.01)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cdn(fake_api: FakeCDNServer) -> AsyncIterator[CDNClient]:
    async with fake_api.client() as client:
        yield client


async def test_first_test_creates(fake_api: FakeCDNServer, cdn: CDNClient) -> None:
    await cdn.endpoints.create(ORIGIN)
    assert len(fake_api.journal) == 1


async def test_second_test_sees_the_same_fake_and_client(
    fake_api: FakeCDNServer, cdn: CDNClient
) -> None:
    assert [e.origin async for e in cdn.endpoints.list()] == [ORIGIN]
    assert [e.op for e in fake_api.journal] == ["create", "list"]
