"""``python -m servegate`` → the CLI."""

import sys

from servegate.cli import main

sys.exit(main())
