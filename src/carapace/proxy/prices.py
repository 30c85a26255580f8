"""Estimated cost: US dollars per million tokens, by model name prefix (longest match).

The shipped table holds list prices as published by the providers in late 2025; they are
estimates, not invoices. ``carapace.toml`` overrides or adds entries::

    [prices."claude-sonnet-4"]
    input = 3.0          # $ per million input tokens
    output = 15.0
    cache_read = 0.3     # optional
    cache_write = 3.75   # optional

A model with no matching entry costs 0 and is reported as ``unpriced``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from carapace.errors import ConfigError


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0


DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4-6": Price(5.0, 25.0, 0.5, 6.25),
    "claude-opus-4": Price(15.0, 75.0, 1.5, 18.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.3, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.3, 3.75),
    "claude-haiku-4": Price(1.0, 5.0, 0.1, 1.25),
    "claude-3-5-haiku": Price(0.8, 4.0, 0.08, 1.0),
    "gpt-5-nano": Price(0.05, 0.4, 0.005),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-4.1-nano": Price(0.1, 0.4, 0.025),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "gpt-4o-mini": Price(0.15, 0.6, 0.075),
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "o4-mini": Price(1.1, 4.4, 0.275),
    "o3": Price(2.0, 8.0, 0.5),
}


class PriceTable:
    def __init__(self, entries: Mapping[str, Price] | None = None) -> None:
        self.entries = dict(DEFAULT_PRICES if entries is None else entries)
        self._order = sorted(self.entries, key=len, reverse=True)

    @classmethod
    def from_settings(cls, extra: Mapping[str, Any]) -> PriceTable:
        """The shipped table with ``carapace.toml``'s ``[prices.*]`` on top."""
        entries = dict(DEFAULT_PRICES)
        raw = extra.get("prices") or {}
        if not isinstance(raw, dict):
            raise ConfigError("carapace.toml: [prices] must be a table of model prefixes")
        for model, spec in raw.items():
            if not isinstance(spec, dict):
                raise ConfigError(f"carapace.toml: prices.{model} must be a table")
            try:
                values = {k: float(spec[k]) for k in ("input", "output")}
                for k in ("cache_read", "cache_write"):
                    values[k] = float(spec.get(k, 0.0))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"carapace.toml: prices.{model} needs numeric input and output ({exc})"
                )
            if any(v < 0 for v in values.values()):
                raise ConfigError(f"carapace.toml: prices.{model} has a negative price")
            entries[str(model)] = Price(**values)
        return cls(entries)

    def find(self, model: str) -> Price | None:
        for prefix in self._order:
            if model.startswith(prefix):
                return self.entries[prefix]
        return None

    def cost(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
    ) -> float | None:
        """Dollars for one call, None when the model is not priced. OpenAI counts cached
        tokens inside its input tokens; Anthropic reports them apart."""
        price = self.find(model)
        if price is None:
            return None
        plain = input_tokens - cache_read if provider == "openai" else input_tokens
        total = (
            max(0, plain) * price.input
            + output_tokens * price.output
            + cache_read * (price.cache_read or price.input)
            + cache_write * (price.cache_write or price.input)
        )
        return total / 1_000_000
