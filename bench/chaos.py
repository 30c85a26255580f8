"""The chaos harness lives in the package (``carapace bench chaos``); this script runs it
from a checkout: ``python bench/chaos.py [options]`` (see ``carapace bench chaos --help``)."""

from __future__ import annotations

import sys

from carapace.bench.chaos import main

if __name__ == "__main__":
    sys.exit(main())
