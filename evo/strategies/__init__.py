"""Strategies: which parents and which operator for the next child."""

from evo.strategies._base import NoParentError, Plan, Strategy
from evo.strategies._evolve import EvolveStrategy
from evo.strategies._greedy import GreedyStrategy
from evo.strategies._random import RandomStrategy

STRATEGIES = {"greedy": GreedyStrategy, "evolve": EvolveStrategy, "random": RandomStrategy}

__all__ = ["NoParentError", "Plan", "Strategy", "EvolveStrategy", "GreedyStrategy", "RandomStrategy", "STRATEGIES"]
