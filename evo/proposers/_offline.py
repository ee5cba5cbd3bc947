from __future__ import annotations

import statistics

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError
from evo.proposers._blocks import inside, marked
from evo.proposers._hyperparams import FROZEN_PREFIXES, find_hyperparameters, format_value, mutate_value, rewrite
from population.genomes import merge_texts
from population.lineage import auto_min_gain, pooled_sd
from population.notebook import Change, Recall
from population.params import flatten

# With memory, the share of mutations drawn as without it (among moves not measured worse), so
# moves the notebook knows nothing good about still get tried.
EXPLORE = 0.25
# Mutations drawn before memory picks one of them (the one measured best, see `Moves`).
CANDIDATES = 4
# What a move measured in the same direction (NAME up or down, from another value) counts for,
# relative to the same move measured exactly.
TREND_WEIGHT = 0.5


class Moves:
    """What the notebook measured of each constant's moves: effects of ideas that changed only it.

    An idea that changed several constants is left out: its effect cannot be shared among them.
    A move counts as better or worse only where its mean effect is beyond the noise (`verdict`)."""

    def __init__(self, recall: Recall):
        self.exact: dict[tuple, list[float]] = {}
        self.trend: dict[tuple, list[float]] = {}
        for idea in recall.scored():
            if len(idea.changes) == 1:
                c = idea.changes[0]
                self.exact.setdefault((c.name, c.old, c.new), []).append(idea.effect)
                self.trend.setdefault((c.name, c.direction), []).append(idea.effect)
        # The searches' noise floor; where none was measured (no --noise-runs), the spread of the same move's
        # effects measured more than once: each is a difference of two measurements, so sqrt(2) floors wide.
        spread = pooled_sd(self.exact.values())
        self.noise_sd = recall.noise_sd or (spread / 2 ** 0.5 if spread else None)

    def verdict(self, effects: list[float] | None) -> int:
        """+1 better, -1 worse, 0 not known to differ: the mean effect beyond the gain `--min-gain auto` asks
        of a better result, shrunk by the square root of the times it was measured. With no noise floor
        known at all, one measurement is no evidence: it takes two, all on the same side."""
        if not effects:
            return 0
        mean = statistics.fmean(effects)
        if self.noise_sd:
            margin = auto_min_gain(self.noise_sd) / len(effects) ** 0.5
            return 1 if mean > margin else -1 if mean < -margin else 0
        if len(effects) < 2:
            return 0
        return 1 if min(effects) > 0 else -1 if max(effects) < 0 else 0

    def worse(self, change: Change) -> bool:
        """Whether `change` was measured worse beyond the noise."""
        return self.verdict(self.exact.get((change.name, change.old, change.new))) < 0

    def helped(self) -> list[tuple[str, object, object]]:
        """(name, old, new) of the moves measured better beyond the noise, the best first."""
        better = [key for key, effects in self.exact.items() if self.verdict(effects) > 0]
        return sorted(better, key=lambda key: -statistics.fmean(self.exact[key]))

    def value(self, change: Change) -> float:
        """The effect expected of `change`: its mean where measured beyond the noise, else a share of its
        direction's (NAME up or down, from any value) where that is, else 0."""
        effects = self.exact.get((change.name, change.old, change.new))
        if self.verdict(effects):
            return statistics.fmean(effects)
        trend = self.trend.get((change.name, change.direction))
        return TREND_WEIGHT * statistics.fmean(trend) if self.verdict(trend) else 0.0


def changes_of(moves: list[tuple[str, object, object]]) -> list[Change]:
    """A mutation's (name, old, new) moves as the notebook records constants (tuples element by element)."""
    out = []
    for name, old, new in moves:
        before, after = flatten({name: old}), flatten({name: new})
        out += [Change(n, before.get(n), after.get(n)) for n in sorted(set(before) | set(after))
                if before.get(n) != after.get(n)]
    return out


def tunable(files: dict[str, str], mutable: list[str], profile: str | None = None) -> list[tuple[str, str, object]]:
    """(file, name, value) of every knob the offline proposer may turn: UPPERCASE constants of the
    mutable files, inside their EVOLVE-BLOCK regions where a file marks them."""
    return [(path, p.name, p.value) for path in mutable if path in files
            for p in find_hyperparameters(files[path], profile).values()
            if not p.name.startswith(FROZEN_PREFIXES) and inside(files[path], p.span)]


def keeps_rules(files: dict[str, str], ctx: ProposalContext) -> bool:
    """Whether `files` keep the target's hard invariants between knobs (`whole_multiples`): each
    (knob, per, factor) says the knob must be a whole multiple of the knob `per` times `factor`."""
    rules = ctx.settings.get("whole_multiples") or ()
    for path in ctx.mutable if rules else ():
        params = find_hyperparameters(files.get(path, ""), ctx.settings.get("profile"))
        for knob, per, factor in rules:
            whole, part = params.get(knob), params.get(per)
            if whole and part and isinstance(whole.value, int) and isinstance(part.value, int):
                if whole.value % (part.value * factor) != 0:
                    return False
    return True


class OfflineProposer(Proposer):
    """A mutator that needs no network: it turns the knobs of the hyperparameter block.

    Mutation perturbs one (sometimes two) UPPERCASE constants in a way that respects
    their kind and rewrites only those values, described as ``MATRIX_LR 0.04 -> 0.05``.
    Crossover takes each differing constant from one parent or the other, then merges
    the rest of the two parents' code three-way from their merge base; where that merge
    conflicts it keeps the first parent's code for that file and says so. It never
    proposes a genome the search already knows (it redraws), and it is reproducible:
    all randomness comes from the context's seeded rng.

    Args:
        two_change_rate: probability that a mutation changes two constants instead of one.
        attempts: redraws before giving up on finding a genome the search has not seen.
    """

    name = "offline"
    remote = False

    def __init__(self, *, two_change_rate: float = 0.3, attempts: int = 30):
        self.two_change_rate = two_change_rate
        self.attempts = attempts

    def nothing_to_tune(self, files: dict[str, str], mutable: list[str], profile: str | None = None) -> str | None:
        """One line when the genome gives the offline proposer nothing to turn (every child it proposed
        would fail); None when it has knobs."""
        if tunable(files, mutable, profile):
            return None
        where = " inside their EVOLVE-BLOCK regions" if any(marked(files.get(p, "")) for p in mutable) else ""
        return (f"the offline proposer finds no UPPERCASE constants (NAME = number) in {', '.join(mutable)}{where}, so "
                "it has nothing to tune: add some, or use an LLM proposer (`proposer` anthropic or openai-compatible)")

    def preflight(self, parent: Genome, ctx: ProposalContext) -> list[str]:
        why = self.nothing_to_tune(parent.files, ctx.mutable, ctx.settings.get("profile"))
        if why:
            raise ProposerError(why)
        return []

    # -- mutation ---------------------------------------------------------------

    def _knobs(self, files: dict[str, str], ctx: ProposalContext) -> list[tuple[str, str, object]]:
        return tunable(files, ctx.mutable, ctx.settings.get("profile"))

    def _valid(self, files: dict[str, str], ctx: ProposalContext) -> bool:
        return keeps_rules(files, ctx)

    def _mutated(self, files: dict[str, str], ctx: ProposalContext) -> tuple[dict[str, str], list[str], list] | None:
        """One random mutation: (the child's files, its notes, its (name, old, new) moves), or None."""
        knobs = self._knobs(files, ctx)
        if not knobs:
            return None
        rng, profile = ctx.rng, ctx.settings.get("profile")
        count = 2 if rng.random() < self.two_change_rate and len(knobs) > 1 else 1
        child, notes, moves = dict(files), [], []
        for path, name, value in rng.sample(knobs, count):
            new = mutate_value(name, value, rng)
            if new is None or new == value:
                continue
            old_text = find_hyperparameters(child[path], profile)[name].text
            child[path] = rewrite(child[path], {name: new}, profile)
            notes.append(f"{name} {old_text} -> {format_value(new, old_text)}")
            moves.append((name, value, new))
        return (child, notes, moves) if notes else None

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        if not self._knobs(parent.files, ctx):
            return Proposal(parent.files, "", ok=False,
                            error="the offline proposer found no UPPERCASE hyperparameters to change in the mutable files")
        moves = Moves(ctx.memory) if ctx.memory is not None and ctx.memory.ideas else None
        drawn_ok = []
        for _ in range(self.attempts):
            drawn = self._mutated(parent.files, ctx)
            if drawn and self._valid(drawn[0], ctx) and not ctx.is_known(drawn[0]):
                if moves is None:
                    return Proposal(drawn[0], ", ".join(drawn[1]), rationale=f"offline step from #{parent.trial}")
                drawn_ok.append(drawn)
                if sum(1 for d in drawn_ok if not _worse(d, moves)) >= CANDIDATES:
                    break
        if moves is not None:  # after the random draws, which exploration takes the first of
            drawn_ok += self._recalled(parent.files, moves, ctx)
        if drawn_ok:
            child, notes, why = _remembered(drawn_ok, moves, ctx)
            return Proposal(child, ", ".join(notes), rationale=f"offline step from #{parent.trial}{why}")
        return Proposal(parent.files, "", ok=False,
                        error=f"no unseen hyperparameter change of #{parent.trial} in {self.attempts} draws")

    def _recalled(self, files: dict[str, str], moves: Moves, ctx: ProposalContext) -> list[tuple]:
        """The moves the notebook measured as improvements that apply to `files` as they are (the constant
        still has the value the move started from), as drawn mutations."""
        profile, found = ctx.settings.get("profile"), []
        knobs = {name: (path, value) for path, name, value in self._knobs(files, ctx)}
        for name, old, new in moves.helped():
            if name not in knobs or knobs[name][1] != old or isinstance(old, tuple):
                continue
            path = knobs[name][0]
            old_text = find_hyperparameters(files[path], profile)[name].text
            child = {**files, path: rewrite(files[path], {name: new}, profile)}
            if self._valid(child, ctx) and not ctx.is_known(child):
                found.append((child, [f"{name} {old_text} -> {format_value(new, old_text)}"], [(name, old, new)]))
        return found

    # -- crossover --------------------------------------------------------------

    def _cross_once(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> tuple[dict[str, str], list[str]]:
        rng, profile = ctx.rng, ctx.settings.get("profile")
        child, notes = {}, []
        for path in ctx.mutable:
            text_a, text_b = a.files.get(path, ""), b.files.get(path, "")
            text_base = base.files.get(path, text_a) if base else text_a
            pa, pb = find_hyperparameters(text_a, profile), find_hyperparameters(text_b, profile)
            differing = sorted(n for n in pa.keys() & pb.keys() if pa[n].value != pb[n].value
                               and inside(text_a, pa[n].span) and inside(text_b, pb[n].span))
            # Agree on every differing constant first, so the code merge never sees them conflict.
            pick = {n: (pa[n].value if rng.random() < 0.5 else pb[n].value) for n in differing}
            aligned_a, aligned_b = rewrite(text_a, pick, profile), rewrite(text_b, pick, profile)
            for n in differing:
                notes.append(f"{n} {format_value(pick[n], pa[n].text)} from #{a.trial if pick[n] == pa[n].value else b.trial}")
            merged, conflict = merge_texts(text_base, aligned_a, aligned_b,
                                           labels=(f"#{a.trial}", "merge base", f"#{b.trial}"))
            if conflict:
                merged = aligned_a
                notes.append(f"code of {path} conflicts, kept #{a.trial}'s")
            child[path] = merged
        return child, notes

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        for _ in range(self.attempts):
            child, notes = self._cross_once(a, b, base, ctx)
            if self._valid(child, ctx) and not ctx.is_known(child):
                return Proposal(child, f"cross #{a.trial} x #{b.trial}: " + ("; ".join(notes) or "merged code"),
                                rationale="offline crossover: constants from either parent, other code merged three-way")
        # Every combination is known: step away from one of them instead.
        for _ in range(self.attempts):
            child, _notes = self._cross_once(a, b, base, ctx)
            drawn = self._mutated(child, ctx)
            if drawn and self._valid(drawn[0], ctx) and not ctx.is_known(drawn[0]):
                return Proposal(drawn[0], f"cross #{a.trial} x #{b.trial} then " + ", ".join(drawn[1]),
                                rationale="every crossover of the two parents is known; mutated one")
        return Proposal(a.files, "", ok=False, error=f"no unseen crossover of #{a.trial} and #{b.trial} in {self.attempts} draws")


def _worse(drawn: tuple, moves: "Moves") -> bool:
    return any(moves.worse(c) for c in changes_of(drawn[2]))


def _remembered(drawn: list[tuple], moves: "Moves", ctx: ProposalContext) -> tuple[dict[str, str], list[str], str]:
    """Of several mutations drawn, the one memory prefers: never one measured worse beyond the noise
    while another is left; the one expected to help most, or (EXPLORE of the time) the first drawn.
    Returns its files, notes and what memory said (for the rationale)."""
    allowed = [d for d in drawn if not _worse(d, moves)]
    if not allowed:  # every unseen move was measured worse: the least bad one
        pick = max(drawn, key=lambda d: sum(moves.value(c) for c in changes_of(d[2])))
        return pick[0], pick[1], "; every move left was measured worse in the lab notebook, this one least"
    avoided = len(drawn) - len(allowed)
    note = f"; the lab notebook ruled out {avoided} move(s) measured worse" if avoided else ""
    if ctx.rng.random() < EXPLORE:
        return allowed[0][0], allowed[0][1], note
    values = [sum(moves.value(c) for c in changes_of(d[2])) for d in allowed]
    best = max(range(len(allowed)), key=lambda i: (values[i], -i))
    if values[best] > 0:
        note += f"; measured to help by {values[best]:+.4g} in the lab notebook"
    return allowed[best][0], allowed[best][1], note
