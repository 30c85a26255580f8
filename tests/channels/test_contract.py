"""Runs the adapter contract (``contract.py``) over every driver in ``drivers/``."""

from __future__ import annotations

from .contract import *  # noqa: F403  (the cases and the driver_factory fixture)
