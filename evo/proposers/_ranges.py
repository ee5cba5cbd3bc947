"""The range a sampler proposer searches for each UPPERCASE constant, from its kind and value.

A sampler (`evo.proposers._sampler`) needs a bounded range per constant. Optuna's params of the
study (`population.params`) span eight orders of magnitude, so that any value an LLM writes can be
recorded; a sampler drawing from that would waste every trial. Here a constant's range is what a
person tuning it would try, decided from its first value in the family and its name:

- a bool: False or True;
- an int that is a power of two, 8 or more (batch sizes, widths): the powers of two from a quarter to
  four times it (the sampler draws the exponent);
- a depth or layer count, or a small int (16 or less): from half of it to twice it (at least +2), >= 1;
- another positive int (step counts): a quarter to four times it, on a log scale;
- a float in (0, 1) named like a momentum or a beta: its distance to 1 from a quarter to four times
  what it is, on a log scale (0.95 -> 0.8 .. 0.9875);
- a float named like a ratio or a fraction (RATIO, FRAC), or a float in [0, 1] that is 0: 0 to 1;
- a learning rate (LR in its name) or another positive float: a tenth to ten times it, log scale;
- a negative number: from twice it to 0;
- a string, or a tuple's non-number: not the sampler's (strings stay the LLM's).

A tuple of numbers is one range per element (NAME_0, NAME_1, ... as in the study's params).

A user overrides any of these with a trailing comment on the constant's line in the genome, which
the sampler reads (and an LLM sees):

    MATRIX_LR = 0.04          # transformer matrices (Muon)  evo: log 0.005..0.2
    DEPTH = per_profile(tiny=2, cpu=4, gpu=8)   # layers  evo: int 1..6
    WINDOW_PATTERN = "L"      # evo: fixed

`evo: [log|int|log int] LOW..HIGH` sets the range (log for a log scale, int for whole numbers; the
kind of the value decides when neither is said), `evo: fixed` keeps the sampler off the constant.
For a tuple, `evo:` gives every element the same range. A bad `evo:` comment is a one-line
error of the proposal naming the line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from population.errors import ProposalError

__all__ = ["Knob", "RangeError", "knob_for", "override_of"]

_OVERRIDE = re.compile(r"#.*?\bevo:\s*(?P<spec>[^#]*?)\s*$")
_RANGE = re.compile(r"^(?P<kind>(?:log\s+int|int\s+log|log|int)\s+)?(?P<low>[-+0-9.eE_*]+)\s*\.\.\s*(?P<high>[-+0-9.eE_*]+)$")


class RangeError(ProposalError, ValueError):
    """An `evo:` range comment the sampler cannot read."""


@dataclass(frozen=True)
class Knob:
    """One number a sampler tunes: its param name (NAME or NAME_i), the distribution it is drawn
    from (in the sampler's own space: a power of two's exponent, a momentum's distance to 1) and
    how to read a value into that space and back.

    kind: "bool", "pow2", "one_minus" (distance to 1), "int" or "float".
    """

    name: str
    distribution: BaseDistribution
    kind: str

    def inside(self, value: Any) -> Any | None:
        """`value` in the sampler's space, or None when it is not in this knob's range or kind."""
        if self.kind == "bool":
            return value if isinstance(value, bool) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        if self.kind == "pow2":
            if not isinstance(value, int) or value <= 0 or value & (value - 1):
                return None
            x: Any = value.bit_length() - 1
        elif self.kind == "one_minus":
            x = 1.0 - float(value)
        elif self.kind == "int":
            if not isinstance(value, int):
                return None
            x = value
        else:
            x = float(value)
        d = self.distribution
        return x if d.low <= x <= d.high else None

    def value(self, x: Any) -> Any:
        """The genome's value for the sampler's `x`."""
        if self.kind == "pow2":
            return 2 ** int(x)
        if self.kind == "one_minus":
            return _round(1.0 - x)
        if self.kind == "float":
            return _round(x)
        return x


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def override_of(line: str) -> str | None:
    """The `evo:` spec of a constant's source line (its trailing comment), or None."""
    match = _OVERRIDE.search(line)
    return match.group("spec").strip() if match else None


def knob_for(name: str, value: Any, override: str | None = None) -> Knob | None:
    """The knob of one number (a bool, int or float; a tuple's element is named NAME_i), or None when
    the sampler leaves it alone (`evo: fixed`). `override` is the constant's `evo:` spec."""
    if override is not None:
        return _overridden(name, value, override)
    if isinstance(value, bool):
        return Knob(name, CategoricalDistribution((False, True)), "bool")
    upper = name.upper()
    if isinstance(value, int):
        if value >= 8 and value & (value - 1) == 0:
            k = value.bit_length() - 1
            return Knob(name, IntDistribution(max(0, k - 2), k + 2), "pow2")
        if value <= 0:
            return Knob(name, IntDistribution(2 * value if value else 0, 0 if value else 4), "int")
        if value <= 16 or "DEPTH" in upper or "LAYER" in upper:
            return Knob(name, IntDistribution(max(1, value // 2), max(2 * value, value + 2)), "int")
        return Knob(name, IntDistribution(max(1, value // 4), 4 * value, log=True), "int")
    value = float(value)
    if ("MOMENTUM" in upper or "BETA" in upper) and 0 < value < 1:
        gap = 1.0 - value
        return Knob(name, FloatDistribution(gap / 4, min(1.0, gap * 4), log=True), "one_minus")
    if "RATIO" in upper or "FRAC" in upper:
        if 0 <= value <= 1:
            return Knob(name, FloatDistribution(0.0, 1.0), "float")
    if value == 0:
        return Knob(name, FloatDistribution(0.0, 1.0), "float")
    if value < 0:
        return Knob(name, FloatDistribution(2 * value, 0.0), "float")
    return Knob(name, FloatDistribution(value / 10, value * 10, log=True), "float")


def _number(text: str, name: str, spec: str) -> float:
    try:
        if "**" in text:
            base, _, power = text.partition("**")
            return float(base) ** float(power)
        return float(text.replace("_", ""))
    except (ValueError, OverflowError):
        raise RangeError(f"{name}'s range comment `evo: {spec}` has {text!r}, not a number: write e.g. "
                         "`# evo: log 1e-3..0.3`, `# evo: int 1..8` or `# evo: fixed`") from None


def _overridden(name: str, value: Any, spec: str) -> Knob | None:
    if spec == "fixed":
        return None
    hint = "write e.g. `# evo: log 1e-3..0.3`, `# evo: int 1..8` or `# evo: fixed`"
    match = _RANGE.match(spec)
    if not match:
        raise RangeError(f"{name}'s range comment `evo: {spec}` is not a range: {hint}")
    words = (match.group("kind") or "").split()
    low, high = (_number(match.group(g), name, spec) for g in ("low", "high"))
    log = "log" in words
    whole = "int" in words or (not words or words == ["log"]) and isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, bool):
        raise RangeError(f"{name} is a bool: a range comment cannot bound it ({hint})")
    if not low < high or (log and low <= 0):
        raise RangeError(f"{name}'s range `evo: {spec}` needs LOW < HIGH{' and LOW > 0 on a log scale' if log else ''}: {hint}")
    if whole:
        if low != int(low) or high != int(high):
            raise RangeError(f"{name}'s range `evo: {spec}` is whole numbers: give whole LOW and HIGH ({hint})")
        return Knob(name, IntDistribution(int(low), int(high), log=log), "int")
    return Knob(name, FloatDistribution(low, high, log=log), "float")
