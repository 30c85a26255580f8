"""Contract drivers: one module per adapter, each exposing ``DRIVER`` (see ../contract.py)."""
