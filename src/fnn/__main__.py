"""``python -m fnn``: the ``fnn`` command."""

import sys

from fnn.cli.main import main

sys.exit(main())
