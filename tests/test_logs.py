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


def test_every_record_has_the_call_fields_so_a_format_can_name_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Outside any call (a store's warning, say) the fields are there, as None: a format or a
    # JSON handler naming them never fails.
    import logging

    from cdn_async._logs import logger

    caplog.set_level(logging.INFO, logger="cdn_async")
    logger.warning("outside any call")
    logger.info("with its own", extra={"request_id": "r-1"})
    fmt = logging.Formatter("%(call_id)s %(client)s %(request_id)s %(message)s")
    assert [fmt.format(r) for r in caplog.records] == [
        "None None None outside any call",
        "None None r-1 with its own",
    ]
