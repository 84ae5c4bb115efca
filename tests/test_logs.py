"""CDN_ASYNC_LOG switches the cdn_async logger on without touching the user's logging setup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import logging, cdn_async\n"
    "log = logging.getLogger('cdn_async')\n"
    "print(log.level, len(log.handlers), logging.getLogger().level)\n"
)


def probe(value: str | None) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k != "CDN_ASYNC_LOG"}
    if value is not None:
        env["CDN_ASYNC_LOG"] = value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return [int(x) for x in out.stdout.split()]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, [0, 0, 30]),  # off by default: the library stays silent
        ("debug", [10, 1, 30]),
        ("DEBUG", [10, 1, 30]),
        ("info", [20, 1, 30]),
        ("nonsense", [0, 0, 30]),
    ],
)
def test_cdn_async_log_switch(value: str | None, expected: list[int]) -> None:
    assert probe(value) == expected
