"""Entry point: ``python3 -m tools.localcloud``."""

import sys

from .cli import main

sys.exit(main())
