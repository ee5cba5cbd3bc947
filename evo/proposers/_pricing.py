"""What an LLM call costs: a price table per model, overridable, and the cost of one call's usage.

Prices are USD per million tokens, as providers publish them. The built-in table holds
Anthropic's list prices (checked Nov 2026 on platform.claude.com); a JSON file given with
``--prices`` or the ``EVO_PRICES`` environment variable adds models or overrides them::

    {"claude-sonnet-5-5": {"input": 2, "output": 10, "cache_write": 2.5, "cache_read": 0.2},
     "qwen3-coder": {"input": 0, "output": 0}}

A missing ``cache_write`` or ``cache_read`` defaults to 1.25x and 0.1x the input price,
which is how Anthropic prices its 5-minute prompt cache.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from population.errors import OptionError

PRICES_ENV = "EVO_PRICES"


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind a call is billed for.

    input: uncached input tokens.
    output: generated tokens (thinking included).
    cache_write: input tokens written to the prompt cache (default 1.25x input).
    cache_read: input tokens read from the prompt cache (default 0.1x input).
    """

    input: float
    output: float
    cache_write: float | None = None
    cache_read: float | None = None

    def cost(self, *, input_tokens: int = 0, output_tokens: int = 0, cache_write_tokens: int = 0,
             cache_read_tokens: int = 0) -> float:
        """USD for one call's token counts."""
        write = self.input * 1.25 if self.cache_write is None else self.cache_write
        read = self.input * 0.1 if self.cache_read is None else self.cache_read
        return (input_tokens * self.input + output_tokens * self.output + cache_write_tokens * write
                + cache_read_tokens * read) / 1e6


# Anthropic list prices, standard tier, 5-minute cache writes.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price(10, 50, 12.5, 0.25),
    "claude-fable-5": Price(10, 50, 12.5, 1.0),
    "claude-opus-5-5": Price(4, 20, 5, 0.20),
    "claude-opus-5": Price(5, 25, 6.25, 0.50),
    "claude-opus-4-8": Price(5, 25, 6.25, 0.50),
    "claude-opus-4-7": Price(5, 25, 6.25, 0.50),
    "claude-opus-4-6": Price(5, 25, 6.25, 0.50),
    "claude-opus-4-5": Price(5, 25, 6.25, 0.50),
    "claude-sonnet-5-5": Price(2, 10, 2.5, 0.20),
    "claude-sonnet-5": Price(2, 10, 2.5, 0.20),
    "claude-sonnet-4-6": Price(3, 15, 3.75, 0.30),
    "claude-sonnet-4-5": Price(3, 15, 3.75, 0.30),
    "claude-haiku-4-5": Price(1, 5, 1.25, 0.10),
}


def load_prices(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> dict[str, Price]:
    """The built-in table updated from a JSON file: `path`, else the file named by $EVO_PRICES.

    Raises OptionError (a ValueError) with a one-line reason when the file is missing or malformed."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(PRICES_ENV) or None
    prices = dict(DEFAULT_PRICES)
    if path is None:
        return prices
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise OptionError(f"cannot read the price file {path}: {e.strerror or e}")
    except json.JSONDecodeError as e:
        raise OptionError(f"price file {path} is not valid JSON: {e}")
    if not isinstance(data, dict):
        raise OptionError(f"price file {path} must hold an object of model -> {{input, output, ...}}")
    for model, entry in data.items():
        if not isinstance(entry, dict) or not {"input", "output"} <= entry.keys():
            raise OptionError(f"price file {path}: {model!r} needs at least input and output (USD per million tokens)")
        unknown = set(entry) - {"input", "output", "cache_write", "cache_read"}
        if unknown:
            raise OptionError(f"price file {path}: {model!r} has unknown keys {sorted(unknown)}")
        values = {}
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise OptionError(f"price file {path}: {model!r} {key} must be a number >= 0, not {value!r}")
            values[key] = float(value)
        prices[model] = Price(**values)
    return prices


def price_for(model: str, prices: dict[str, Price]) -> Price | None:
    """The price of `model`: an exact entry, else the longest entry it starts with (dated ids), else None."""
    if model in prices:
        return prices[model]
    stems = [name for name in prices if model.startswith(name + "-")]
    return prices[max(stems, key=len)] if stems else None
