"""A genome's code family and its tunable numbers: what a sampler proposer conditions on.

Two genomes are of one code family when their mutable files are the same program once the values
of their tunable constants are set aside: the same Python code (comments and layout aside, as
`ast` reads it), the same strings, the same constants. A sampler's trials are comparable only
within a family: a code change can move every constant's best value, so a sampler conditions
on the trials of its parent's family alone. The engine records each trial's family as the
trial attribute `code_family` (FAMILY_ATTR).
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from typing import Any

from evo import safe_ast
from evo.proposers._blocks import inside
from evo.proposers._hyperparams import FROZEN_PREFIXES, find_hyperparameters
from evo.proposers._ranges import Knob, RangeError, knob_for, override_of

__all__ = ["FAMILY_ATTR", "Tunable", "code_family", "tunable_numbers"]

FAMILY_ATTR = "code_family"   # trial attribute: the genome's code family (`code_family`)
_HOLE = "__evo_constant__"


@dataclass(frozen=True)
class Tunable:
    """One constant a sampler sets: where it is, its value, and its knobs (one, or one per tuple element)."""

    path: str
    name: str
    value: Any
    knobs: tuple[Knob, ...]
    override: str | None = None   # its `evo:` comment

    def knobs_from(self, first: dict[str, Any]) -> tuple[Knob, ...]:
        """Its knobs with the ranges that the values in `first` (NAME or NAME_i -> value: the family's first
        genome's) set; an element `first` lacks, or has as another kind, keeps the range of this value."""
        out = []
        for k, v in zip(self.knobs, self.value if isinstance(self.value, tuple) else (self.value,)):
            v0 = first.get(k.name)
            redone = knob_for(k.name, v0, self.override) if type(v0) is type(v) else None
            out.append(redone if redone is not None and redone.kind == k.kind else k)
        return tuple(out)


def _numeric(value: Any) -> bool:
    if isinstance(value, tuple):
        return bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, (int, float))


def _line_of(source: str, offset: int) -> str:
    start = source.rfind("\n", 0, offset) + 1
    end = source.find("\n", offset)
    return source[start:] if end < 0 else source[start:end]


def _constants(files: dict[str, str], mutable: list[str], profile: str | None):
    for path in mutable:
        source = files.get(path)
        if source is None or not path.endswith(".py"):
            continue
        for p in find_hyperparameters(source, profile).values():
            if not p.name.startswith(FROZEN_PREFIXES) and inside(source, p.span) and _numeric(p.value):
                yield path, p


def tunable_numbers(files: dict[str, str], mutable: list[str], profile: str | None = None) -> list[Tunable]:
    """The constants of the mutable files a sampler may set (numbers, bools, tuples of numbers; inside
    EVOLVE-BLOCK regions where marked; not EVAL_*; not `evo: fixed`), each with its knobs.

    Raises:
        RangeError: an `evo:` comment that does not read as a range, naming the constant.
    """
    found = []
    for path, p in _constants(files, mutable, profile):
        override = override_of(_line_of(files[path], p.span[1]))
        if isinstance(p.value, tuple):
            knobs = [knob_for(f"{p.name}_{i}", v, override) for i, v in enumerate(p.value)]
        else:
            knobs = [knob_for(p.name, p.value, override)]
        if any(k is None for k in knobs):
            continue
        found.append(Tunable(path, p.name, p.value, tuple(knobs), override))
    return found


def code_family(files: dict[str, str], mutable: list[str], profile: str | None = None) -> str:
    """A short hash naming the genome's code family (see the module docstring)."""
    digest = hashlib.sha256()
    for path in sorted(mutable):
        source = files.get(path, "")
        holes = sorted((p.span for q, p in _constants(files, [path], profile)), reverse=True)
        for start, end in holes:
            source = source[:start] + _HOLE + source[end:]
        try:
            text = ast.dump(safe_ast.parse(source)) if path.endswith(".py") else source
        except SyntaxError:
            text = source
        digest.update(f"{path}\0{len(text)}\0".encode() + text.encode("utf-8", "replace"))
    return digest.hexdigest()[:16]


__all__ += ["RangeError"]
