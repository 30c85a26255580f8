"""Provider keys: the host's environment, else ``<home>/secrets.env`` (owner-only; its
format, checks and ``write_secret`` are in ``carapace.secretsfile``).

Keys never go into the DB, the runner's environment, logs or the sandbox: only the proxy
holds them and adds them to requests on the way out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from carapace.secretsfile import SECRETS_FILE, read_secrets_file, write_secret

# provider -> (the variable holding its key, the variable holding a host-side base URL)
KEY_VARS: dict[str, str] = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
ALT_KEY_VARS: dict[str, str] = {"anthropic": "ANTHROPIC_AUTH_TOKEN"}
BASE_URL_VARS: dict[str, str] = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
SECRET_VARS = (*KEY_VARS.values(), *ALT_KEY_VARS.values())
__all__ = ["SECRETS_FILE", "KeyStore", "read_secrets_file", "write_secret"]


class KeyStore:
    """The host's provider keys and host-side base URLs (env wins over the file)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = {k: v for k, v in values.items() if v}

    @classmethod
    def load(cls, home: Path | None, environ: Mapping[str, str] | None = None) -> KeyStore:
        env = os.environ if environ is None else environ
        values = read_secrets_file(home / SECRETS_FILE) if home is not None else {}
        names = (*SECRET_VARS, *BASE_URL_VARS.values())
        values.update({k: env[k] for k in names if env.get(k)})
        return cls(values)

    def key(self, provider: str) -> str | None:
        name = KEY_VARS.get(provider)
        alt = ALT_KEY_VARS.get(provider)
        return self._values.get(name or "") or self._values.get(alt or "") or None

    def auth_header(self, provider: str) -> tuple[str, str] | None:
        """The header carrying ``provider``'s key, or None when the host has none."""
        if provider == "anthropic":
            if self._values.get("ANTHROPIC_API_KEY"):
                return "x-api-key", self._values["ANTHROPIC_API_KEY"]
            token = self._values.get("ANTHROPIC_AUTH_TOKEN")
            return ("authorization", f"Bearer {token}") if token else None
        key = self.key(provider)
        return ("authorization", f"Bearer {key}") if key else None

    def base_url(self, provider: str) -> str | None:
        return self._values.get(BASE_URL_VARS.get(provider, ""))

    def configured(self) -> list[str]:
        """Providers the host can call (a key or a host-side base URL)."""
        return [p for p in KEY_VARS if self.key(p) or self.base_url(p)]

    def secrets(self) -> list[str]:
        """Every key value (for redaction checks)."""
        return [self._values[k] for k in SECRET_VARS if self._values.get(k)]
