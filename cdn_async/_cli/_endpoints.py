"""``cdn-async endpoints``: list, get, create, update and delete CDN endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import click

from .. import CDNClient, CDNEndpoint
from .._sentinel import NotGiven
from ._app import ApiOptions, api_options, given, json_option, run_command
from ._output import EXIT_API_ERROR, EXIT_OK, dump, endpoint_json, endpoint_table, err, out
from ._output import stdout_console as console

_TTL_HELP = "Edge cache lifetime in seconds: 60, 600, 3600, 86400 or 604800."


@click.group()
def endpoints() -> None:
    """List, show, create, update and delete CDN endpoints."""


@endpoints.command("list")
@click.option(
    "--per-page",
    type=click.IntRange(1, 200),
    default=200,
    show_default=True,
    help="Endpoints per request (200 spends the least budget).",
)
@json_option
@api_options
def list_(api: ApiOptions, per_page: int, as_json: bool) -> int:
    """List every CDN endpoint of the account."""
    return run_command(lambda stop: _list(api, per_page=per_page, as_json=as_json), as_json=as_json)


@endpoints.command("get")
@click.argument("endpoint_id")
@json_option
@api_options
def get(api: ApiOptions, endpoint_id: str, as_json: bool) -> int:
    """Show one CDN endpoint."""
    return run_command(
        lambda stop: _one(api, lambda cdn: cdn.endpoints.get(endpoint_id), as_json=as_json),
        as_json=as_json,
    )


@endpoints.command("create", short_help="Create a CDN endpoint for a Space.")
@click.argument("origin")
@click.option("--ttl", type=int, help=_TTL_HELP + " The API defaults to 3600.")
@click.option("--custom-domain", metavar="FQDN", help="Serve on this custom subdomain.")
@click.option(
    "--certificate-id",
    metavar="ID",
    help="The custom domain's certificate UUID, or needs-cloudflare-cert.",
)
@json_option
@api_options
def create(
    api: ApiOptions,
    origin: str,
    ttl: int | None,
    custom_domain: str | None,
    certificate_id: str | None,
    as_json: bool,
) -> int:
    """Create a CDN endpoint for the Space ORIGIN (name.region.digitaloceanspaces.com)."""
    return run_command(
        lambda stop: _one(
            api,
            lambda cdn: cdn.endpoints.create(
                origin,
                ttl=given(ttl),
                custom_domain=given(custom_domain),
                certificate_id=given(certificate_id),
            ),
            as_json=as_json,
        ),
        as_json=as_json,
    )


@endpoints.command("update")
@click.argument("endpoint_id")
@click.option("--ttl", type=int, help=_TTL_HELP)
@click.option("--custom-domain", metavar="FQDN", help="A new custom subdomain.")
@click.option("--certificate-id", metavar="ID", help="A new certificate UUID.")
@click.option(
    "--remove-custom-domain",
    is_flag=True,
    help="Remove the custom domain and its certificate.",
)
@json_option
@api_options
def update(
    api: ApiOptions,
    endpoint_id: str,
    ttl: int | None,
    custom_domain: str | None,
    certificate_id: str | None,
    remove_custom_domain: bool,
    as_json: bool,
) -> int:
    """Change a CDN endpoint; only the options given are sent."""
    if remove_custom_domain and (custom_domain or certificate_id):
        raise click.UsageError(
            "--remove-custom-domain cannot be combined with --custom-domain or --certificate-id"
        )
    domain: str | NotGiven | None = given(custom_domain)
    cert: str | NotGiven | None = given(certificate_id)
    if remove_custom_domain:
        domain = cert = None
    return run_command(
        lambda stop: _one(
            api,
            lambda cdn: cdn.endpoints.update(
                endpoint_id, ttl=given(ttl), custom_domain=domain, certificate_id=cert
            ),
            as_json=as_json,
        ),
        as_json=as_json,
    )


@endpoints.command("delete")
@click.argument("endpoint_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@api_options
def delete(api: ApiOptions, endpoint_id: str, yes: bool, as_json: bool) -> int:
    """Delete a CDN endpoint (asks first unless --yes)."""
    if not yes and not click.confirm(
        f"Delete CDN endpoint {endpoint_id}?", default=False, err=True
    ):
        err("Not deleted.")
        return EXIT_API_ERROR
    return run_command(lambda stop: _delete(api, endpoint_id, as_json=as_json), as_json=as_json)


async def _list(api: ApiOptions, *, per_page: int, as_json: bool) -> int:
    async with api.connect() as (cdn, _):
        found = [ep async for ep in cdn.endpoints.list(per_page=per_page)]
    if as_json:
        dump([endpoint_json(ep) for ep in found])
    elif found:
        console().print(endpoint_table(found))
    else:
        out("No CDN endpoints.")
    return EXIT_OK


async def _one(
    api: ApiOptions, call: Callable[[CDNClient], Awaitable[CDNEndpoint]], *, as_json: bool
) -> int:
    async with api.connect() as (cdn, _):
        endpoint = await call(cdn)
    if as_json:
        dump(endpoint_json(endpoint))
    else:
        console().print(endpoint_table([endpoint]))
    return EXIT_OK


async def _delete(api: ApiOptions, cdn_id: str, *, as_json: bool) -> int:
    async with api.connect() as (cdn, _):
        await cdn.endpoints.delete(cdn_id)
    if as_json:
        dump({"deleted": cdn_id})
    else:
        out(f"Deleted CDN endpoint {cdn_id}.")
    return EXIT_OK
