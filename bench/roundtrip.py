"""Round-trip benchmark (same code as ``carapace bench roundtrip``).

Usage: ``python bench/roundtrip.py [--json] [--n N] [--home DIR] [--write-docs]``
"""

from __future__ import annotations

from carapace.commands.host import roundtrip

if __name__ == "__main__":
    roundtrip()
