"""The best lineage: the chain of changes from the seed to the best genome, the story of what worked.

The chain follows first parents (a crossover continues its first parent's line and
brings in the second's changes); each step carries the change's description, operator,
the genome's score, the change in score from the step before, and the diff against that
step's genome.

>>> for step in best_lineage(search.lineage(), diff=search.repo.diff):   # doctest: +SKIP
...     print(step.trial, step.description, step.delta)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from population.lineage import Lineage, gain


@dataclass(frozen=True)
class Step:
    """One genome on the path from the seed to the best."""

    trial: int
    operator: str
    description: str
    parents: tuple[int, ...]
    proposer: str
    score: float | None          # the genome's mean val_bpb
    evaluations: int             # how many evaluations the mean is over
    delta: float | None          # score minus the previous step's score (raw; its sign depends on the direction)
    gain: float | None           # how much better than the previous step: positive is better, in either direction
    commit: str
    parent_commit: str           # the previous step's commit ("" for the first step)
    diff: str | None             # unified diff from the previous step (None: first step or not available)


def best_lineage(lineage: Lineage, *, diff: Callable[[str, str], str] | None = None,
                 target: int | None = None) -> list[Step]:
    """The steps from the seed to the best genome (or to `target`).

    Args:
        lineage: the search's lineage.
        diff: a function (old commit, new commit) -> unified diff, usually
            `search.repo.diff`; None leaves the diffs out. A commit the repository does
            not hold (an imported search) gives diff None for that step.
        target: the trial to end at instead of the best genome's.

    Returns:
        The steps, seed first; empty when the search has no successful trial.
    """
    end = target if target is not None else (lineage.best.trial if lineage.best else None)
    if end is None:
        return []
    steps: list[Step] = []
    previous = None
    for number in lineage.path_to(end):
        t = lineage.by_number[number]
        ind = lineage.individual(number)
        score = ind.score if ind else None
        known = previous is not None and score is not None and previous.score is not None
        delta = score - previous.score if known else None
        step_gain = gain(previous.score, score, lineage.direction) if known else None
        text = None
        if diff is not None and previous is not None and previous.commit and t.commit:
            try:
                text = diff(previous.commit, t.commit)
            except Exception:  # the genome is not in git (imported results): the walk goes on without it
                text = None
        step = Step(trial=number, operator=t.operator, description=t.description, parents=tuple(t.parents),
                    proposer=t.proposer, score=score, evaluations=len(ind.values) if ind else 0, delta=delta, gain=step_gain,
                    commit=t.commit, parent_commit=previous.commit if previous else "", diff=text)
        steps.append(step)
        previous = step
    return steps


def render_walk(steps: list[Step], *, diffs: bool = False) -> str:
    """The walk as plain text, one line per step (and the diffs when asked): the score and the gain
    over the step before, positive when it got better (as everywhere in the report).

    Args:
        steps: from `best_lineage`.
        diffs: include each step's diff under its line.
    """
    lines = [f"{'trial':6s} {'operator':22s} {'score':>9} {'gain':>10}  change"] if steps else []
    for s in steps:
        score = f"{s.score:.6f}" if s.score is not None else "-"
        delta = f"{s.gain:+.6f}" if s.gain is not None else ""
        via = f" of {' x '.join('#' + str(p) for p in s.parents)}" if s.parents else ""
        lines.append(f"#{s.trial:<5} {s.operator + via:22s} {score:>9} {delta:>10}  {s.description}")
        if diffs and s.diff:
            lines += ["    " + line for line in s.diff.rstrip().splitlines()]
    return "\n".join(lines)
