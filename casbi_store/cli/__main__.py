"""``python -m casbi_store.cli``."""

import sys

from . import main

sys.exit(main())
