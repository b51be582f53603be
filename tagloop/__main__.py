"""``python -m tagloop``: the same as the ``tagloop`` command."""

import sys

from .cli import main

sys.exit(main())
