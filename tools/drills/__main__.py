import sys

from tools.drills.cli import main

sys.exit(main())
