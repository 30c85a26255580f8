"""carapace: a personal AI-assistant host. Sandboxed agents, SQLite everywhere, nothing lost."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
