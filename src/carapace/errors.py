"""The one exception root of carapace.

CarapaceError
├── ConfigError          bad home, bad config file, unwritable folder
├── ValidationError      bad input from a user, a channel or an agent (nothing was changed)
│   └── InvariantError   the change would break a data-model invariant
├── NotFoundError        an id that matches nothing
├── ConflictError        the row exists already / other rows depend on it
├── MigrationError       a central-DB migration failed (rolled back whole)
├── DeliveryError        a channel could not send (retryable unless ``permanent``)
├── StoreError           a session DB refused a row that is not a duplicate
└── ProviderError        the model provider failed
"""

from __future__ import annotations

import errno


class CarapaceError(Exception):
    """Root of every error carapace raises on purpose."""

    code = "internal"


class ConfigError(CarapaceError):
    code = "config"


class ValidationError(CarapaceError):
    code = "invalid-args"


class InvariantError(ValidationError):
    code = "invariant"


class NotFoundError(CarapaceError):
    code = "not-found"


class ConflictError(CarapaceError):
    code = "conflict"


class MigrationError(CarapaceError):
    code = "migration"


class DeliveryError(CarapaceError):
    code = "delivery"

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class StoreError(CarapaceError):
    """A session's ``inbound.db`` refused a new row for a reason other than its id being
    there already (a constraint or trigger that should not exist, a clashing seq): the row
    is not stored and the sender must hear so, never read it as a harmless duplicate."""

    code = "store"


class ProviderError(CarapaceError):
    code = "provider"


def no_space(exc: BaseException) -> bool:
    """A write failed for want of space: SQLite's "database or disk is full", or ENOSPC,
    EDQUOT or EFBIG (a file-size limit) from the OS; also a ``CarapaceError`` caused by one."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    if "database or disk is full" in str(exc):
        return True
    return isinstance(exc, CarapaceError) and exc.__cause__ is not None and no_space(exc.__cause__)
