"""``python -m fnn.cli``: the ``fnn`` command, as ``python -m fnn``."""

import sys

from fnn.cli.main import main

sys.exit(main())
