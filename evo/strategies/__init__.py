"""Strategies: which parents and which operator for the next child.

Build one by name as the CLI does (`make_strategy("evolve", elite=8)`) or construct a class.
"""

from evo.strategies._base import NoParentError, Plan, Strategy
from evo.strategies._evolve import EvolveStrategy
from evo.strategies._greedy import GreedyStrategy
from evo.strategies._random import RandomStrategy
from population.errors import OptionError

STRATEGIES = {"greedy": GreedyStrategy, "evolve": EvolveStrategy, "random": RandomStrategy}


def make_strategy(name: str, **options) -> Strategy:
    """The strategy called `name` with its keyword `options` (only evolve takes any).

    Raises OptionError (a ValueError) for an unknown name or an option the strategy does not take."""
    if name not in STRATEGIES:
        raise OptionError(f"unknown strategy {name!r}: use {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](**options)
    except TypeError:
        raise OptionError(f"strategy {name!r} takes no options {sorted(options)}") from None


__all__ = ["NoParentError", "Plan", "Strategy", "EvolveStrategy", "GreedyStrategy", "RandomStrategy", "STRATEGIES",
           "make_strategy"]
