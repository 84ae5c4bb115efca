"""CDNClient: configuration, token handling, lifetime, copies."""

from __future__ import annotations

import aiohttp
import pytest
from aioresponses import aioresponses

import cdn_async
from cdn_async import CDNClient, RateLimits
from cdn_async.errors import ValidationError

from ._support import BASE, TOKEN, endpoint_json

ID = "892071a0-bb95-49bc-8021-3afd67a210bf"


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", TOKEN)
    client = CDNClient(base_url=BASE)
    assert client._session._headers["Authorization"] == f"Bearer {TOKEN}"


def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    with pytest.raises(
        ValidationError, match=r"no API token: pass token=\.\.\. or set \$DIGITALOCEAN_TOKEN"
    ):
        CDNClient()


@pytest.mark.parametrize(
    "url",
    [
        "https://api.digitalocean.com",
        "http://127.0.0.1:8080",
        "http://127.9.9.9",
        "http://[::1]:81",
        "http://localhost:1",
    ],
)
def test_https_or_loopback_http_accepted(url: str) -> None:
    CDNClient(TOKEN, base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.digitalocean.com",
        "http://10.0.0.1",
        "http://192.168.1.1:80",
        "ftp://x.y",
        "api.digitalocean.com",
    ],
)
def test_plain_http_to_other_hosts_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="base_url must be https://"):
        CDNClient(TOKEN, base_url=url)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": -1}, "timeout must be"),
        ({"max_retries": -1}, "max_retries must be"),
        ({"max_retries": 1.5}, "max_retries must be"),
        ({"max_rate_limit_wait": -1}, "max_rate_limit_wait must be"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CDNClient(TOKEN, **kwargs)  # type: ignore[arg-type]


def test_repr_shows_base_url_not_token() -> None:
    client = CDNClient(TOKEN, base_url=BASE)
    assert repr(client) == f"<CDNClient base_url='{BASE}'>"


async def test_a_users_own_aiohttp_session_is_used_and_not_closed() -> None:
    async with aiohttp.ClientSession() as http:
        with aioresponses() as m:
            m.get(f"{BASE}/v2/cdn/endpoints/{ID}", payload={"endpoint": endpoint_json(id=ID)})
            async with CDNClient(TOKEN, base_url=BASE, session=http) as cdn:
                await cdn.endpoints.get(ID)
        assert not http.closed


async def test_close_closes_the_pool_it_opened() -> None:
    cdn = CDNClient(TOKEN, base_url=BASE)
    with aioresponses() as m:
        m.get(f"{BASE}/v2/cdn/endpoints/{ID}", payload={"endpoint": endpoint_json(id=ID)})
        await cdn.endpoints.get(ID)
    http = cdn._session._pool.get()
    await cdn.close()
    assert http.closed
    await cdn.close()  # idempotent


async def test_with_options_shares_pool_and_budgets_and_keeps_the_original() -> None:
    async with CDNClient(TOKEN, base_url=BASE, limits=RateLimits.documented()) as cdn:
        fast = cdn.with_options(timeout=5, max_retries=0)
        assert fast._session.options.timeout == 5 and fast._session.options.max_retries == 0
        assert cdn._session.options.timeout == 30.0 and cdn._session.options.max_retries == 3
        assert fast._session.store is cdn._session.store
        assert fast._session._pool is cdn._session._pool
        with aioresponses() as m:
            m.get(f"{BASE}/v2/cdn/endpoints/{ID}", payload={"endpoint": endpoint_json(id=ID)})
            await fast.endpoints.get(ID)
        await fast.close()  # a copy closes nothing
        assert not cdn._session._pool.get().closed
        # Both draw on one budget: the copy's request shows in the original's snapshot.
        assert cdn.budget_snapshot().budgets["cdn"].used == 1


def test_public_names_are_exported_and_documented() -> None:
    assert len(set(cdn_async.__all__)) == len(cdn_async.__all__)
    modules = {"errors", "testing", "redis", "events", "otel"}
    public = {n for n in dir(cdn_async) if not n.startswith("_")} - modules
    assert public <= set(cdn_async.__all__), "a public name is missing from __all__"
    for name in cdn_async.__all__:
        obj = getattr(cdn_async, name)
        if isinstance(obj, type):
            # The errors are documented (as a tree) in cdn_async.errors, and named from there.
            home = "cdn_async.errors" if issubclass(obj, cdn_async.CDNError) else "cdn_async"
            assert obj.__module__ == home, name
            assert obj.__doc__, name


def test_the_whole_error_tree_is_importable_from_the_top_and_from_errors() -> None:
    from cdn_async import errors

    exported = [n for n in errors.__all__ if n != "RateLimitInfo"]
    assert exported and all(getattr(cdn_async, n) is getattr(errors, n) for n in exported)
    from cdn_async import BudgetWaitTimeout, PurgeError  # what users try first

    assert issubclass(PurgeError, cdn_async.CDNError)
    assert issubclass(BudgetWaitTimeout, cdn_async.RateLimitedError)


@pytest.mark.parametrize("token", [TOKEN + "\n", " " + TOKEN, TOKEN[:10] + "\x00" + TOKEN[10:]])
def test_a_token_with_whitespace_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ValidationError) as info:
        CDNClient(token, base_url=BASE)
    assert TOKEN[7:] not in str(info.value)


async def test_a_budget_store_passed_in_is_shared_and_left_open() -> None:
    from cdn_async._budgets import MemoryBudgetStore

    store = MemoryBudgetStore()
    a = CDNClient(TOKEN, base_url=BASE, budget_store=store)
    b = CDNClient(TOKEN, base_url=BASE, budget_store=store)
    with aioresponses() as m:
        m.get(
            f"{BASE}/v2/cdn/endpoints/{ID}", payload={"endpoint": endpoint_json(id=ID)}, repeat=True
        )
        await a.endpoints.get(ID)
        await a.close()
        await b.endpoints.get(ID)  # still works: a did not close the shared store
        assert b.budget_snapshot().budgets["cdn"].used == 2  # one budget for both
    await b.close()
    await store.aclose()


def test_update_refuses_a_certificate_with_a_removal() -> None:
    cdn = CDNClient(TOKEN, base_url=BASE)
    with pytest.raises(ValidationError, match="do not pass a certificate_id"):
        cdn.endpoints.update(ID, custom_domain=None, certificate_id=ID).send(None)


async def test_budget_snapshot_lists_every_budget_even_when_idle() -> None:
    async with CDNClient(TOKEN, base_url=BASE) as cdn:
        snapshot = cdn.budget_snapshot().budgets
        assert set(snapshot) == {"hourly", "minute", "cdn", "purge_files"}
        assert snapshot["cdn"].remaining == 5 and snapshot["cdn"].next_free_in == 0.0
    async with CDNClient(TOKEN, base_url=BASE, reserve=0.2) as cdn:
        assert cdn.budget_snapshot().budgets["purge_files"].remaining == 40


async def test_base_url_comes_from_the_environment_like_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CDN_ASYNC_BASE_URL", "http://127.0.0.1:8080/")
    async with CDNClient(TOKEN) as cdn:
        assert repr(cdn) == "<CDNClient base_url='http://127.0.0.1:8080'>"
    async with CDNClient(TOKEN, base_url=BASE) as cdn:  # an argument wins
        assert BASE in repr(cdn)
    monkeypatch.setenv("CDN_ASYNC_BASE_URL", "http://example.com")  # plain http, not loopback
    with pytest.raises(ValidationError):
        CDNClient(TOKEN)
