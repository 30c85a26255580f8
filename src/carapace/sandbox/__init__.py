"""Sandboxes for runners: the ``bwrap`` backend and the mount allowlist (DESIGN §2, §5)."""

from __future__ import annotations

from carapace.sandbox.bwrap import (
    BwrapBackend,
    BwrapHandle,
    SandboxSpec,
    bwrap_argv,
    bwrap_available,
    bwrap_unusable_reason,
    choose_backend,
)
from carapace.sandbox.mounts import (
    AllowedRoot,
    Mount,
    MountRequest,
    load_allowlist,
    parse_allowlist,
    validate_mount,
    validate_mounts,
)

__all__ = [
    "AllowedRoot",
    "BwrapBackend",
    "BwrapHandle",
    "Mount",
    "MountRequest",
    "SandboxSpec",
    "bwrap_argv",
    "bwrap_available",
    "bwrap_unusable_reason",
    "choose_backend",
    "load_allowlist",
    "parse_allowlist",
    "validate_mount",
    "validate_mounts",
]
