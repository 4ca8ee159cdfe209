"""``python -m jacserve.cli`` is the ``jacserve`` command."""

import sys

from jacserve.cli import main

sys.exit(main())
