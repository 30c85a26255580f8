"""The one exception root of carapace.

CarapaceError
├── ConfigError          bad home, bad config file, unwritable folder
├── ValidationError      bad input from a user, a channel or an agent (nothing was changed)
│   └── InvariantError   the change would break a data-model invariant
├── NotFoundError        an id that matches nothing
├── ConflictError        the row exists already / other rows depend on it
├── MigrationError       a central-DB migration failed (rolled back whole)
├── DeliveryError        a channel could not send (retryable unless ``permanent``)
└── ProviderError        the model provider failed
"""

from __future__ import annotations


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


class ProviderError(CarapaceError):
    code = "provider"
