"""The ``cdn_async`` logger, and the ``CDN_ASYNC_LOG`` switch."""

from __future__ import annotations

import logging
import os

from ._constants import LOG_ENV

logger = logging.getLogger("cdn_async")


def setup_from_env() -> None:
    """Turn logging on when ``CDN_ASYNC_LOG`` is ``debug`` or ``info`` (opt-in, like openai's)."""
    level = os.environ.get(LOG_ENV, "").strip().lower()
    if level not in ("debug", "info"):
        return
    logger.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
