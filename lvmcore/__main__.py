"""``python -m lvmcore``: the same as the ``lvmcore`` command."""

import sys

from .cli import main

sys.exit(main())
