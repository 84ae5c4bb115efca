"""The ``cdn_async`` logger, and the ``CDN_ASYNC_LOG`` switch."""

from __future__ import annotations

import logging
import os

from ._call import CALL
from ._constants import LOG_ENV

logger = logging.getLogger("cdn_async")


class _CallFields(logging.Filter):
    """Puts the current call's ``call_id``, ``client`` and (once known) ``request_id`` on
    every record of the ``cdn_async`` logger, unless the record sets them itself: the lines
    of one call join up in any log store, whichever layer wrote them."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = CALL.get()
        fields = record.__dict__
        if call is None:
            fields.setdefault("call_id", None)
            fields.setdefault("client", None)
            fields.setdefault("request_id", None)
        else:
            fields.setdefault("call_id", call.id)
            fields.setdefault("client", call.client)
            if fields.get("request_id") is None:
                fields["request_id"] = call.request_id
        return True


logger.addFilter(_CallFields())


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
