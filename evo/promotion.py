"""Promotion to larger scales: a ladder of rungs, and which genome climbs next.

Every trial starts at rung 0, the search's own scale (its budget, its environment). A
ladder names the larger scales above it, cheapest first:

    budget*5                  rung 1: the budget five times over
    budget*3,budget*9         rungs 1 and 2
    budget*4+env:DEPTH=8      rung 1: four times the budget, and DEPTH=8 in the trial's environment

As in asynchronous successive halving (Li et al., "A System for Massively Parallel
Hyperparameter Tuning", 2018), a genome is promoted from rung r to r+1 as soon as it is in
the top `top` fraction of the genomes scored at rung r (the top third by default: at least
three genomes must be scored at a rung before the first climbs). Parents are chosen by the
highest rung where they have a score (`population.lineage`), and the report shows how well
each rung's ranking predicted the next one's.

A promoted trial records its rung's budget and environment, so a re-run after a crash runs
at the same scale even if a later `evo run` has no ladder.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from population.errors import ConfigError
from population.lineage import Individual, Lineage, sign
from population.search import SearchConfig

# The attributes of a promoted trial (copied to its re-run).
RUNG_ATTRS = ("rung", "rung_budget", "rung_env", "rung_label")
# The study attribute that fixes a search's ladder once a run has used it.
LADDER_ATTR = "promotion_ladder"
MAX_RUNGS = 5
MAX_FACTOR = 1000.0
DEFAULT_TOP = 1 / 3
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
_BUDGET = re.compile(r"budget\s*[*x]\s*([0-9.]+)$")


class LadderError(ConfigError, ValueError):
    """A ladder that does not parse or cannot run here; the message is one line with the fix."""


@dataclass(frozen=True)
class Rung:
    """One scale above the search's own: a budget factor and environment overrides."""

    budget_factor: float = 1.0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        parts = [f"budget*{self.budget_factor:g}"] if self.budget_factor != 1 else []
        return "+".join(parts + [f"env:{k}={v}" for k, v in self.env.items()])

    def attrs(self, number: int, config: SearchConfig) -> dict:
        """The attributes of a trial at this rung (`number`, counted from 1) of a search."""
        return {"rung": number, "rung_budget": config.budget * self.budget_factor, "rung_env": dict(self.env),
                "rung_label": self.label}


def parse_ladder(spec: str) -> tuple[Rung, ...]:
    """The rungs of a `--promote` ladder (see the module docstring). Raises LadderError."""
    rungs = tuple(_parse_rung(part.strip()) for part in spec.split(",") if part.strip())
    if not rungs:
        raise LadderError(f"`promote` {spec!r} names no rung; give e.g. `promote` budget*5")
    if len(rungs) > MAX_RUNGS:
        raise LadderError(f"`promote` has {len(rungs)} rungs; at most {MAX_RUNGS} (each costs more than the last)")
    factors = [r.budget_factor for r in rungs]
    if any(b < a for a, b in zip(factors, factors[1:])):
        raise LadderError(f"`promote` {spec!r}: the budget must not shrink from one rung to the next")
    return rungs


def _parse_rung(text: str) -> Rung:
    factor, env = 1.0, {}
    for part in (p.strip() for p in text.split("+")):
        if m := _BUDGET.match(part):
            try:
                factor = float(m.group(1))
            except ValueError:
                raise LadderError(f"`promote`: {part!r} is not budget*NUMBER") from None
            if not 1 < factor <= MAX_FACTOR or not math.isfinite(factor):
                raise LadderError(f"`promote`: {part!r}: a rung's budget factor must be above 1 and at most "
                                  f"{MAX_FACTOR:g}")
        elif part.startswith("env:") and "=" in part:
            name, value = part[4:].split("=", 1)
            if not _ENV_NAME.match(name):
                raise LadderError(f"`promote`: {name!r} is not an environment variable name")
            env[name] = value
        else:
            raise LadderError(f"`promote`: cannot read rung part {part!r}; write budget*K or env:NAME=VALUE, "
                              "joined with + (rungs separated by commas), e.g. budget*5,budget*25")
    if factor == 1 and not env:
        raise LadderError(f"`promote`: rung {text!r} is the search's own scale; make it larger")
    return Rung(budget_factor=factor, env=env)


def check_fits(ladder: tuple[Rung, ...], *, budget: float, startup: float = 0.0, hours: float | None) -> None:
    """Raise LadderError for a rung whose trials could never finish in this run's time limit."""
    for number, rung in enumerate(ladder, 1):
        seconds = budget * rung.budget_factor + startup
        if hours is not None and seconds > hours * 3600:
            raise LadderError(f"`promote` rung {number} ({rung.label}) needs {seconds:.0f} s per trial, more than "
                              f"`hours` {hours:g} allows; lower its factor or raise `hours`")


def describe(ladder: tuple[Rung, ...]) -> str:
    return ",".join(r.label for r in ladder)


def next_promotion(lineage: Lineage, ladder: tuple[Rung, ...], *, top: float, taken) -> tuple[Individual, int] | None:
    """The genome to promote next and the rung it climbs to, or None.

    Higher rungs go first (they are closest to an answer). `taken(ind, rung)` says whether a
    trial of that genome at that rung exists or is queued (a failed one counts: a genome
    that crashes at a larger scale is not retried)."""
    s = sign(lineage.direction)
    for rung in range(len(ladder) - 1, -1, -1):
        scored = [i for i in lineage.individuals if i.feasible and i.score_at(rung) is not None]
        quota = math.floor(len(scored) * top + 1e-9)
        # Several objectives: at the search's own scale the front climbs first (rungs score the metric alone).
        front = (lambda i: lineage.pareto(i)[0]) if rung == 0 and lineage.multi else (lambda i: 0)
        for ind in sorted(scored, key=lambda i: (front(i), s * i.score_at(rung), i.trial))[:quota]:
            if not taken(ind, rung + 1):
                return ind, rung + 1
    return None
