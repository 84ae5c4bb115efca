"""Small helpers shared by the SDK's unit tests (not fixtures: plain functions)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: DigitalOcean's official OpenAPI document for the CDN endpoints (see openapi/SOURCE.md).
SPEC_PATH = Path(__file__).parent / "openapi" / "cdn-endpoints.bundled.json"
BASE = "https://api.example.test"
TOKEN = "dop_v1_" + "f" * 56  # a throwaway, never a real token


def endpoint_json(**overrides: Any) -> dict[str, Any]:
    """An endpoint object as the API returns it."""
    data: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "origin": "static.nyc3.digitaloceanspaces.com",
        "endpoint": "static.nyc3.cdn.digitaloceanspaces.com",
        "ttl": 3600,
        "created_at": "2026-03-21T16:02:37Z",
    }
    data.update(overrides)
    return data


def rl_headers(limit: int = 5, remaining: int = 4, reset: float = 0) -> dict[str, str]:
    return {
        "ratelimit-limit": str(limit),
        "ratelimit-remaining": str(remaining),
        "ratelimit-reset": str(int(reset)),
    }


def max_in_window(stamps: Sequence[tuple[float, int]], period: float) -> int:
    """The most units stamped in any half-open window ``[t, t + period)``."""
    ordered = sorted(stamps)
    best = 0
    for i, (start, _) in enumerate(ordered):
        best = max(best, sum(u for t, u in ordered[i:] if t < start + period))
    return best
