"""Path routing of the fake CDN API and the replies it builds (errors, fault answers)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._faults import FaultRule

#: The scope each operation needs (purge is a DELETE, hence ``cdn:delete``, as in the spec).
SCOPE_OF: Mapping[str, str] = {
    "list": "cdn:read",
    "get": "cdn:read",
    "create": "cdn:create",
    "update": "cdn:update",
    "delete": "cdn:delete",
    "purge": "cdn:delete",
}
#: The success status of each operation.
SUCCESS_STATUS: Mapping[str, int] = {
    "list": 200,
    "get": 200,
    "create": 201,
    "update": 200,
    "delete": 204,
    "purge": 204,
}

_PREFIX = "/v2/cdn/endpoints"
_ITEM = re.compile(r"/v2/cdn/endpoints/(?P<id>[^/]+)(?P<cache>/cache)?")
_HTML_ERROR = (
    "<html><head><title>{status} Service Unavailable</title></head>"
    "<body><center><h1>{status} Service Unavailable</h1></center></body></html>"
)
_HTML_OK = "<html><body><p>OK</p></body></html>"


@attrs.frozen
class _Route:
    """What a method and path address."""

    op: str | None  # None: outside the six operations
    cdn_id: str | None
    is_cdn: bool  # under /v2/cdn/endpoints: the cdn budget applies
    #: The methods the path answers (the 405's ``Allow`` header); empty: no such path.
    allowed: tuple[str, ...] = ()

    @property
    def method_allowed(self) -> bool:
        return self.op is not None or not self.allowed


_COLLECTION = {"GET": "list", "HEAD": "list", "POST": "create"}
_ENDPOINT = {"GET": "get", "HEAD": "get", "PUT": "update", "DELETE": "delete"}
_CACHE = {"DELETE": "purge"}


def _route(method: str, path: str) -> _Route:
    # HEAD is GET without the body: same operation, budgets and headers (aiohttp leaves the
    # body out of a HEAD answer and keeps its Content-Length).
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path == _PREFIX:
        return _Route(_COLLECTION.get(method), None, True, tuple(sorted(_COLLECTION)))
    m = _ITEM.fullmatch(path)
    if m is None:
        return _Route(None, None, path.startswith(_PREFIX + "/"))
    table = _CACHE if m["cache"] else _ENDPOINT
    return _Route(table.get(method), m["id"], True, tuple(sorted(table)))


@attrs.define
class _Reply:
    """An answer being built (or a dropped connection)."""

    status: int
    rule: str
    body: Any = None  # dict -> JSON; str -> HTML; None -> empty
    retry_after: int | None = None
    drop: bool = False
    headers: dict[str, str] = attrs.Factory(dict)


def _error(status: int, error_id: str, message: str, rule: str) -> _Reply:
    return _Reply(status, rule, {"id": error_id, "message": message})


_NOT_FOUND = ("not_found", "The resource you requested could not be found.")


def _fault_reply(rule: FaultRule, route: _Route) -> _Reply:
    if rule.kind == "drop":
        return _Reply(0, f"fault:drop_{rule.when}", drop=True)
    if rule.kind == "non_json":
        status = rule.status or SUCCESS_STATUS.get(route.op or "", 200)
        return _Reply(200 if status == 204 else status, "fault:non_json", _HTML_OK)
    status = rule.status or 503
    if rule.html:
        return _Reply(status, f"fault:5xx_{rule.when}", _HTML_ERROR.format(status=status))
    return _error(status, "server_error", "Unexpected server-side error", f"fault:5xx_{rule.when}")
