"""``python -m cdn_async``: the ``cdn-async`` command (needs ``pip install 'cdn-async[cli]'``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
