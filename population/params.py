"""A genome's UPPERCASE hyperparameters as Optuna params, so Optuna's own tools (optuna-dashboard's
importance, parallel-coordinate and slice plots, `trials_dataframe`) see what each trial tried.

Optuna compares a parameter across trials through its distribution, and its importance
evaluators use only parameters whose distribution is the same in every trial. So each name
gets one distribution for the whole study, fixed the first time the name is seen and kept in
the study's `evo_param_space` attribute: a float around its first value v > 0 on a log scale
from v/10^4 to v*10^4; an int n >= 1 from 1 to 1024*n on a log scale; zero or negative numbers
on a linear scale; a bool as a category. A value outside its name's range (a knob moved by more
than four orders of magnitude) is left out of that trial's params; strings are left out (their
choices are not known in advance); a tuple of numbers becomes NAME_0, NAME_1, ...
"""

from __future__ import annotations

import math
from typing import Any

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json, json_to_distribution)

PARAM_SPACE_ATTR = "evo_param_space"  # study attribute: parameter name -> its distribution (Optuna's JSON)
SPAN = 1e4        # a float's range: its first value divided and multiplied by this
INT_SPAN = 1024   # an int's range: 1 to this times its first value


def flatten(values: dict[str, Any]) -> dict[str, bool | int | float]:
    """The numbers and bools of `values` (name -> value); a tuple of numbers as NAME_0, NAME_1, ..."""
    flat: dict[str, bool | int | float] = {}
    for name, value in values.items():
        if isinstance(value, tuple):
            flat.update({f"{name}_{i}": v for i, v in enumerate(value) if _number(v)})
        elif isinstance(value, bool) or _number(value):
            flat[name] = value
    return flat


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def distribution_for(value: bool | int | float) -> BaseDistribution:
    """The distribution a name gets from its first value (see the module docstring)."""
    if isinstance(value, bool):
        return CategoricalDistribution((False, True))
    if isinstance(value, int):
        if value >= 1:
            return IntDistribution(1, INT_SPAN * value, log=True)
        reach = INT_SPAN * max(1, abs(value))
        return IntDistribution(-reach, reach)
    if value > 0:
        return FloatDistribution(value / SPAN, value * SPAN, log=True)
    reach = SPAN * abs(value) if value else 1.0
    return FloatDistribution(-reach, reach)


def as_params(values: dict[str, Any], space: dict[str, str]) -> tuple[dict, dict, dict[str, str]]:
    """(params, their distributions, names new to the space with their distribution JSON) for one trial.

    `space` is the study's record so far (name -> distribution JSON); a value that does not fit
    its name's distribution, or whose kind differs from it (an int where a float was), is left out."""
    params, distributions, new = {}, {}, {}
    for name, value in flatten(values).items():
        if name in space:
            dist = json_to_distribution(space[name])
        elif name in new:
            dist = json_to_distribution(new[name])
        else:
            dist = distribution_for(value)
            new[name] = distribution_to_json(dist)
        value = _as_kind(value, dist)
        if value is not None and _fits(value, dist):
            params[name], distributions[name] = value, dist
    return params, distributions, new


def _as_kind(value, dist: BaseDistribution):
    """`value` as its distribution's kind, or None when it is another kind."""
    if isinstance(dist, CategoricalDistribution):
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if isinstance(dist, IntDistribution):
        return value if isinstance(value, int) else None
    return float(value)


def _fits(value, dist: BaseDistribution) -> bool:
    """Whether `value` lies in `dist` (0 or less does not on a log scale: left out, not an error)."""
    try:
        return dist._contains(dist.to_internal_repr(value))
    except ValueError:
        return False
