"""``python -m cdn_async.testing --port N``: serve a fake CDN API (see ``_main``)."""

import sys

from ._main import main

sys.exit(main())
