"""Whether a proposed child repeats an idea the lab notebook already measured (issue 31).

Before a child is trained its change is compared with the notebook's rows of the same task measured
at the same profile and budget, this search's and earlier searches' (`population.repeats` says when
two ideas are the same). Of the rows that match and have a score:

- measured **worse** beyond the noise (the mean effect, by the offline proposer's rule `Moves.verdict`):
  refused, on any parent: the search already paid to learn that it hurts;
- measured **on this very parent** in this search (a reformatted copy of a child it has): refused,
  whatever it measured: training it again measures the same thing;
- measured **better**, or inside the noise: trained. It is a *new combination*: the idea has not been
  measured on this parent genome in this search (on another parent, or only in another search, whose
  genome this search cannot build on without measuring it itself). The child's record says so.

Ideas with no score (crashed, invalid) are not judged: a crash may be the machine's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from evo.proposers._hyperparams import hyperparameter_values
from evo.proposers._offline import Moves
from population.lineage import Lineage, auto_min_gain
from population.notebook import Idea, Recall, changes_between, search_id_of
from population.params import flatten
from population.repeats import IdeaKey, diff_lines, idea_key, key_of

WORSE, HERE, BETTER, UNCLEAR = "worse", "measured on this parent", "better", "inside the noise"
LISTED = 4   # tries a reason names (the rest are counted)


@dataclass(frozen=True)
class Judgement:
    """What the notebook says of a proposed child's idea.

    verdict: WORSE, HERE, BETTER or UNCLEAR; refuse: whether the child is not to be trained.
    idea: the idea as the notebook names it; tries: the matching rows with a score, the newest last."""

    verdict: str
    refuse: bool
    idea: str
    tries: tuple[Idea, ...]
    noise_sd: float | None
    metric: str
    search_id: str
    parents: tuple[int, ...]

    @property
    def effect(self) -> float:
        return statistics.fmean(i.effect for i in self.tries)

    def _where(self) -> str:
        named = [f"#{i.trial}" + ("" if i.search_id == self.search_id else f" of search {i.search}")
                 for i in self.tries[-LISTED:]]
        more = len(self.tries) - len(named)
        return ", ".join(named) + (f" and {more} more" if more > 0 else "")

    def reason(self) -> str:
        """What was measured and what follows, in one paragraph (for the record and for a model)."""
        n = len(self.tries)
        measured = (f"{self.metric} effect {self.effect:+.4f} against its parent (positive = better), "
                    + (f"the mean of {n} tries ({self._where()})" if n > 1 else f"in {self._where()}"))
        noise = (f"; the noise floor is sd {self.noise_sd:.4f}, so a mean under "
                 f"{auto_min_gain(self.noise_sd) / n ** 0.5:.4f} is no evidence" if self.noise_sd else "")
        if self.verdict == WORSE:
            return f"`{self.idea}` was measured worse beyond the noise: {measured}{noise}"
        if self.verdict == HERE:
            return (f"`{self.idea}` was already measured on this very parent ({', '.join(f'#{p}' for p in self.parents)})"
                    f": {measured}; training it again measures nothing new")
        return (f"`{self.idea}` was measured {'better' if self.verdict == BETTER else 'inside the noise'}: "
                f"{measured}{noise}; trained as a new combination (not measured on this parent in this search)")


class KnownIdeas:
    """The notebook's measured ideas, ready to judge the children of one proposal.

    Args:
        recall: the notebook's rows of this task (`ProposalContext.memory`).
        lineage: this search so far (its trees say which parents are the same genome).
        config: this search's configuration (its id, profile, budget and metric).
        parents: the trial numbers the child is bred from, and `parent_files` their mutable files.
    """

    def __init__(self, recall: Recall, lineage: Lineage, config, parents: list[int], parent_files: list[dict]):
        self.search_id, self.metric = search_id_of(config), config.metric
        self.profile = config.profile
        self.parents, self.parent_files = tuple(parents), [dict(f) for f in parent_files]
        self.trees = tuple(lineage.by_number[p].tree if p in lineage.by_number else None for p in parents)
        self.lineage = lineage
        self.moves = Moves(recall)
        self.index: dict[IdeaKey, list[Idea]] = {}
        for i in recall.scored():
            if i.profile == config.profile and i.budget == float(config.budget):
                key = key_of(i)
                if key:
                    self.index.setdefault(key, []).append(i)

    def key(self, files: dict[str, str]) -> IdeaKey:
        """The key of a child with these mutable files (against this proposal's parents)."""
        first = self.parent_files[0] if self.parent_files else {}
        old = flatten(hyperparameter_values(first, self.profile))
        new = flatten(hyperparameter_values(files, self.profile))
        return idea_key(changes_between(old, new) if old and new else (), diff_lines(self.parent_files, files))

    def judge(self, files: dict[str, str]) -> Judgement | None:
        """What the notebook measured of this child's idea; None when it measured nothing of it."""
        key = self.key(files)
        tries = self.index.get(key) if key else None
        if not tries:
            return None
        verdict = self.moves.verdict([i.effect for i in tries])
        here = [i for i in tries if i.search_id == self.search_id and self._same_parents(i)]
        kind = WORSE if verdict < 0 else HERE if here else BETTER if verdict > 0 else UNCLEAR
        newest = tries[-1]
        return Judgement(kind, kind in (WORSE, HERE), newest.move or newest.description or "(no description)",
                         tuple(tries), self.moves.noise_sd, self.metric, self.search_id, self.parents)

    def _same_parents(self, idea: Idea) -> bool:
        trees = tuple(self.lineage.by_number[p].tree if p in self.lineage.by_number else None for p in idea.parents)
        return None not in self.trees and trees == self.trees


def ask_again_message(reason: str) -> str:
    """The extra turn a model gets when its proposal repeats an idea measured worse (or already measured here)."""
    return ("Your proposal was not trained: it repeats an idea the lab notebook has already measured.\n\n"
            + reason + "\n\nPropose a different idea, complete (description, rationale and all edits), written "
            "against the same starting files as before: nothing of the previous attempt was applied.")
