"""``python -m servegate_operator`` (also ``servegate operator``): run the kopf operator."""

from __future__ import annotations

import sys

from servegate_operator.main import main

sys.exit(main())
