"""``python -m shoal ARGS``: the same as the ``shoal`` command."""

import sys

from ._cli import main

sys.exit(main())
