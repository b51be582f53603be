"""``python -m tagloop.cli``: the same as the ``tagloop`` command."""

import sys

from . import main

sys.exit(main())
