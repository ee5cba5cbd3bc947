"""Optuna's samplers as proposers: `--proposer tpe`, `cmaes` or `gp` set a child's constants.

A sampler proposer writes no code: its child is the parent with new values for the parent's
tunable constants (numbers, bools and tuples of numbers; strings stay the LLM's), drawn by a
real Optuna sampler (TPESampler, CmaEsSampler, GPSampler) from a real in-memory Optuna study of
the trials it conditions on:

- **What it conditions on**: the search's trials of the parent's code family (`_family`: the same
  code once constants are set aside), at the search's first rung (re-evaluations at a longer
  budget are another objective), each with its recorded constants. A finished trial counts with
  its score; a run that failed within the family (crashed, diverged, ran out of memory or time,
  was pruned) failed because of its constants, so it counts as the family's worst score; a trial
  still running is told to the sampler as running (TPE's constant liar keeps parallel slots
  apart). Trials of other families are never used: a code change can move every constant's best.
- **Warm start of a new family**: a child of new code (an LLM's change) founds a family whose only
  trial is itself; the sampler's first child of it starts from there: TPE and GP from that one
  measured point (`startup` 1: the model is fitted from the first measured trial on, not after
  ten random draws), CMA-ES with its mean at the parent's values (`x0`). The ranges are set by
  the family's first genome (`_ranges`), so every trial of a family is drawn from one space.
- **Ranges**: from each constant's kind, value and name, or the user's `# evo:` comment (`_ranges`).

A drawn child that breaks the target's rules between constants (`whole_multiples`), that the
search already knows, or that equals the parent is told to the sampler as failed and drawn again.
Each trial records the sampler's own state for that draw (`sampler_state`: CMA-ES's generation and
its optimizer when it updated, so a restarted search goes on with the same CMA-ES) and who wrote
what (`wrote`: the code's author and the constants' author).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError
from evo.proposers._family import FAMILY_ATTR, RangeError, Tunable, code_family, tunable_numbers
from evo.proposers._hyperparams import find_hyperparameters, format_value, rewrite
from evo.proposers._offline import keeps_rules
from evo.proposers._ranges import Knob
from population.errors import OptionError
from population.lineage import MAXIMIZE, Lineage
from population.trials import TrialRecord, TrialStatus

__all__ = ["SAMPLERS", "STATE_ATTR", "WROTE_ATTR", "SamplerProposer", "conditioning_trials", "wrote_of"]

SAMPLERS = ("tpe", "cmaes", "gp")
STATE_ATTR = "sampler_state"   # trial attribute: the Optuna system attrs of the sampler's draw
WROTE_ATTR = "wrote"           # trial attribute: {"code": author, "constants": author}
FAILED_RUNS = (TrialStatus.CRASH, TrialStatus.TIMEOUT, TrialStatus.DIVERGED, TrialStatus.NO_METRIC,
               TrialStatus.OOM, TrialStatus.LIMIT, TrialStatus.PRUNED)
CHILD_OPERATORS = ("seed", "mutate", "crossover")

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("optuna").setLevel(logging.WARNING)


def wrote_of(t: TrialRecord | None) -> dict[str, str]:
    """Who wrote a trial's code and its constants (the seed's are "seed"); from `wrote`, else its proposer."""
    if t is None:
        return {"code": "seed", "constants": "seed"}
    wrote = t.attrs.get(WROTE_ATTR)
    if isinstance(wrote, dict) and "code" in wrote and "constants" in wrote:
        return {"code": str(wrote["code"]), "constants": str(wrote["constants"])}
    who = t.proposer or "seed"
    return {"code": who, "constants": who}


def _first_rung(t: TrialRecord) -> bool:
    return t.operator in CHILD_OPERATORS and not t.attrs.get("rung")


def conditioning_trials(lineage: Lineage, family: str) -> list[TrialRecord]:
    """The trials a sampler conditions on for `family` (see the module docstring), by number."""
    return [t for t in lineage.trials if t.attrs.get(FAMILY_ATTR) == family and t.commit and _first_rung(t)]


class SamplerProposer(Proposer):
    """Sets a child's constants with an Optuna sampler (see the module docstring).

    >>> SamplerProposer("tpe")   # doctest: +SKIP

    Args:
        kind: "tpe" (TPESampler, multivariate, constant liar), "cmaes" (CmaEsSampler) or "gp" (GPSampler).
        startup: measured trials of a family before the sampler's model is used (Optuna's
            `n_startup_trials`; before that, its independent sampler draws at random in the ranges).
        attempts: draws before giving up on a child that is valid, new and not the parent.
    """

    remote = False

    def __init__(self, kind: str = "tpe", *, startup: int = 1, attempts: int = 30):
        if kind not in SAMPLERS:
            raise OptionError(f"unknown sampler {kind!r}: use one of {', '.join(SAMPLERS)}")
        self.kind = self.name = kind
        self.startup = startup
        self.attempts = attempts

    def _sampler(self, seed: int, x0: dict[str, Any]) -> optuna.samplers.BaseSampler:
        if self.kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.startup, multivariate=True,
                                              constant_liar=True)
        if self.kind == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=self.startup, x0=x0,
                                                warn_independent_sampling=False)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.startup, warn_independent_sampling=False)

    def preflight(self, parent: Genome, ctx: ProposalContext) -> list[str]:
        try:
            found = tunable_numbers(parent.files, ctx.mutable, ctx.settings.get("profile"))
        except RangeError as e:
            raise ProposerError(str(e)) from None
        if not found:
            raise ProposerError(f"the {self.kind} proposer finds no numeric UPPERCASE constants (NAME = number) in "
                                f"{', '.join(ctx.mutable)} to tune: add some, or use an LLM proposer")
        return []

    # -- the space ------------------------------------------------------------------

    @staticmethod
    def knobs(tunables: list[Tunable], origin: TrialRecord | None) -> dict[str, Knob]:
        """Each knob with the range that the family's first genome (`origin`'s recorded constants) sets."""
        first = origin.params if origin is not None else {}
        return {k.name: k for t in tunables for k in t.knobs_from(first)}

    # -- the study --------------------------------------------------------------------

    def study(self, parent: Genome, trials: list[TrialRecord], knobs: dict[str, Knob], lineage: Lineage,
              seed: int, x0: dict[str, Any]) -> tuple[optuna.Study, int]:
        """An in-memory study holding `trials` as the sampler sees them; and how many were measured."""
        direction = "maximize" if lineage.direction == MAXIMIZE else "minimize"
        study = optuna.create_study(direction=direction, sampler=self._sampler(seed, x0))
        scored = [t.value for t in trials if t.finished_ok]
        worst = (min(scored) if direction == "maximize" else max(scored)) if scored else None
        frozen = []
        for t in trials:
            params = {n: x for n, k in knobs.items() if (x := k.inside(t.params.get(n))) is not None}
            if not params:
                continue
            dists = {n: knobs[n].distribution for n in params}
            state = {k: v for k, v in (t.attrs.get(STATE_ATTR) or {}).items()} if self.kind == "cmaes" else {}
            if t.finished_ok:
                frozen.append(create_trial(params=params, distributions=dists, value=t.value, system_attrs=state,
                                           user_attrs={"evo_trial": t.number}))
            elif t.status in FAILED_RUNS and worst is not None:
                frozen.append(create_trial(params=params, distributions=dists, value=worst, system_attrs=state,
                                           user_attrs={"evo_trial": t.number, "failed": str(t.status)}))
            elif t.state == "RUNNING":
                frozen.append(create_trial(params=params, distributions=dists, state=TrialState.RUNNING,
                                           system_attrs=state, user_attrs={"evo_trial": t.number}))
        study.add_trials(frozen)
        return study, sum(1 for f in frozen if f.state == TrialState.COMPLETE)

    # -- proposing ------------------------------------------------------------------

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        profile, lineage = ctx.settings.get("profile"), ctx.lineage
        try:
            tunables = tunable_numbers(parent.files, ctx.mutable, profile)
        except RangeError as e:
            return Proposal(parent.files, "", ok=False, error=str(e))
        if not tunables:
            return Proposal(parent.files, "", ok=False,
                            error=f"the {self.kind} proposer found no numeric UPPERCASE constants to tune")
        family = code_family(parent.files, ctx.mutable, profile)
        trials = conditioning_trials(lineage, family)
        record = lineage.by_number.get(parent.trial)
        if record is not None and record not in trials and record.finished_ok:
            trials.insert(0, record)   # a search from before families were recorded: start from the parent
        knobs = self.knobs(tunables, trials[0] if trials else None)
        current = {k.name: x for t in tunables for k, x in zip(t.knobs, _elements(t.value))}
        x0 = {n: knobs[n].inside(v) for n, v in current.items()}
        x0 = {n: (x if x is not None else _middle(knobs[n])) for n, x in x0.items()}
        study, measured = self.study(parent, trials, knobs, lineage, ctx.rng.randrange(2 ** 31), x0)
        dists = {n: k.distribution for n, k in knobs.items()}
        for _ in range(self.attempts):
            trial = study.ask(dists)
            values = {n: knobs[n].value(x) for n, x in trial.params.items()}
            child, notes = _rewritten(parent.files, tunables, values, profile)
            if notes and keeps_rules(child, ctx) and not ctx.is_known(child):
                state = study._storage.get_trial(trial._trial_id).system_attrs if self.kind == "cmaes" else {}
                wrote = {"code": wrote_of(record)["code"], "constants": self.kind}
                why = (f"{self.kind} over {measured} measured trial(s) of code family {family}"
                       + (" (a new family: drawn from the parent's values)" if measured <= 1 else ""))
                return Proposal(child, ", ".join(notes), rationale=f"{why}; from #{parent.trial}",
                                attrs={STATE_ATTR: dict(state), WROTE_ATTR: wrote, FAMILY_ATTR: family,
                                       "sampler_conditioned": measured})
            study.tell(trial, state=TrialState.FAIL)
        return Proposal(parent.files, "", ok=False,
                        error=f"{self.kind} drew no valid unseen child of #{parent.trial} in {self.attempts} draws")

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        """A sampler combines through its model, not by mixing two parents: it tunes the first parent."""
        proposal = self.mutate(a, ctx)
        if proposal.ok:
            proposal.rationale += f" (crossover with #{b.trial} asked: a sampler tunes #{a.trial}'s family instead)"
        return proposal


def _elements(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _middle(k: Knob) -> Any:
    d = k.distribution
    if hasattr(d, "choices"):
        return d.choices[0]
    mid = math.sqrt(d.low * d.high) if getattr(d, "log", False) else (d.low + d.high) / 2
    return int(round(mid)) if isinstance(d, optuna.distributions.IntDistribution) else mid


def _rewritten(files: dict[str, str], tunables: list[Tunable], values: dict[str, Any],
               profile: str | None) -> tuple[dict[str, str], list[str]]:
    """The parent's files with the drawn values, and a note per constant that changed."""
    child, notes = dict(files), []
    for t in tunables:
        new = tuple(values.get(k.name, v) for k, v in zip(t.knobs, _elements(t.value)))
        new = new if isinstance(t.value, tuple) else new[0]
        if new == t.value:
            continue
        old_text = find_hyperparameters(child[t.path], profile)[t.name].text
        child[t.path] = rewrite(child[t.path], {t.name: new}, profile)
        notes.append(f"{t.name} {old_text} -> {format_value(new, old_text)}")
    return child, notes
