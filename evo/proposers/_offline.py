from __future__ import annotations

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError
from evo.proposers._blocks import inside, marked
from evo.proposers._hyperparams import FROZEN_PREFIXES, find_hyperparameters, format_value, mutate_value, rewrite
from population.genomes import merge_texts


def tunable(files: dict[str, str], mutable: list[str], profile: str | None = None) -> list[tuple[str, str, object]]:
    """(file, name, value) of every knob the offline proposer may turn: UPPERCASE constants of the
    mutable files, inside their EVOLVE-BLOCK regions where a file marks them."""
    return [(path, p.name, p.value) for path in mutable if path in files
            for p in find_hyperparameters(files[path], profile).values()
            if not p.name.startswith(FROZEN_PREFIXES) and inside(files[path], p.span)]


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
                "it has nothing to tune: add some, or use an LLM proposer (--proposer anthropic or openai-compatible)")

    def preflight(self, parent: Genome, ctx: ProposalContext) -> list[str]:
        why = self.nothing_to_tune(parent.files, ctx.mutable, ctx.settings.get("profile"))
        if why:
            raise ProposerError(why)
        return []

    # -- mutation ---------------------------------------------------------------

    def _knobs(self, files: dict[str, str], ctx: ProposalContext) -> list[tuple[str, str, object]]:
        return tunable(files, ctx.mutable, ctx.settings.get("profile"))

    def _valid(self, files: dict[str, str], ctx: ProposalContext) -> bool:
        # The target's hard invariants between knobs (`whole_multiples`): each (knob, per, factor) says
        # the knob must be a whole multiple of the knob `per` times `factor`.
        rules = ctx.settings.get("whole_multiples") or ()
        for path in ctx.mutable if rules else ():
            params = find_hyperparameters(files.get(path, ""), ctx.settings.get("profile"))
            for knob, per, factor in rules:
                whole, part = params.get(knob), params.get(per)
                if whole and part and isinstance(whole.value, int) and isinstance(part.value, int):
                    if whole.value % (part.value * factor) != 0:
                        return False
        return True

    def _mutated(self, files: dict[str, str], ctx: ProposalContext) -> tuple[dict[str, str], list[str]] | None:
        knobs = self._knobs(files, ctx)
        if not knobs:
            return None
        rng, profile = ctx.rng, ctx.settings.get("profile")
        count = 2 if rng.random() < self.two_change_rate and len(knobs) > 1 else 1
        child, notes = dict(files), []
        for path, name, value in rng.sample(knobs, count):
            new = mutate_value(name, value, rng)
            if new is None or new == value:
                continue
            old_text = find_hyperparameters(child[path], profile)[name].text
            child[path] = rewrite(child[path], {name: new}, profile)
            notes.append(f"{name} {old_text} -> {format_value(new, old_text)}")
        return (child, notes) if notes else None

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        if not self._knobs(parent.files, ctx):
            return Proposal(parent.files, "", ok=False,
                            error="the offline proposer found no UPPERCASE hyperparameters to change in the mutable files")
        for _ in range(self.attempts):
            drawn = self._mutated(parent.files, ctx)
            if drawn and self._valid(drawn[0], ctx) and not ctx.is_known(drawn[0]):
                child, notes = drawn
                return Proposal(child, ", ".join(notes), rationale=f"offline step from #{parent.trial}")
        return Proposal(parent.files, "", ok=False,
                        error=f"no unseen hyperparameter change of #{parent.trial} in {self.attempts} draws")

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
