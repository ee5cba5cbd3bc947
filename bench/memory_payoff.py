"""Does the lab notebook pay, and does an adaptive mix? Trials-to-target on synthetic landscapes.

    python bench/memory_payoff.py                          # 10 landscapes x 80 trials
    python bench/memory_payoff.py --seeds 1 --trials 12 --jobs 1

Runs on the landscapes of bench/strategy_landscape.py (the real strategy, the real offline
proposer on the seed train.py, the real `Lineage` and notebook rows, no git or training), each
search on one device:

1. **Memory.** On each landscape a first search runs without memory, as every search did before
   the notebook; the true val_bpb of its final best is the *target*. A second search on the same
   landscape, with draws of its own, then runs twice from the same random state: with the first
   search's notebook (and its own rows, as `evo run` hands them over) and without (`--no-memory`).
2. **Adaptive mix.** The offline proposer mixed with a useless member (every child it proposes
   is invalid, a wasted trial) at fixed equal weights, against the same two under `adaptive:`.
   The target is the true best an offline-only search reaches at half the trials.

Trials-to-target counts trials (seed included) until the search's best is truly at or below the
target; a search that never gets there counts as trials + 1 (so its mean is a lower bound). For each
pair the bench prints the mean trials-to-target with a bootstrap 95% interval over landscapes, the
ratio of the means with a paired bootstrap interval, and the permutation test `evo compare` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from analysis.stats import bootstrap_ci, verdict  # noqa: E402
from evo.proposers import AdaptiveProposer, MixedProposer, OfflineProposer, Proposal, Proposer  # noqa: E402
from population.lineage import Lineage  # noqa: E402
from population.notebook import Idea, Recall, idea_of, is_idea  # noqa: E402
from population.params import flatten  # noqa: E402
from population.search import SearchConfig  # noqa: E402
from strategy_landscape import BUDGET, PROFILE, Job, Simulation, params_of, reach  # noqa: E402


class Useless(Proposer):
    """A member that never pays: every child it proposes is invalid (a trial spent on nothing)."""

    name = "useless"
    remote = False

    def mutate(self, parent, ctx) -> Proposal:
        return Proposal(parent.files, "", ok=False, error="useless by design")

    def crossover(self, a, b, base, ctx) -> Proposal:
        return self.mutate(a, ctx)


class Recording(Proposer):
    """Passes proposals through, remembering who wrote the last one (the simulation records it)."""

    def __init__(self, inner: Proposer):
        self.inner, self.name, self.last = inner, inner.name, None

    def mutate(self, parent, ctx) -> Proposal:
        return self._seen(self.inner.mutate(parent, ctx))

    def crossover(self, a, b, base, ctx) -> Proposal:
        return self._seen(self.inner.crossover(a, b, base, ctx))

    def _seen(self, proposal: Proposal) -> Proposal:
        self.last = proposal.proposer or self.inner.name
        return proposal


class NotebookSimulation(Simulation):
    """A simulated search whose trials carry params and proposer, as the store's do, and whose proposer
    gets the notebook: `earlier` rows of other searches plus its own finished ideas (unless `memory` is off)."""

    def __init__(self, job: Job, *, tag: str, memory: bool = False, earlier: list[Idea] = (),
                 proposer: Proposer | None = None):
        super().__init__(job)
        self.tag, self.use_memory, self.earlier = tag, memory, list(earlier)
        self.proposer = Recording(proposer or OfflineProposer())
        self.config = SearchConfig(name=f"landscape{job.landscape}{tag}", profile=PROFILE, budget=BUDGET,
                                   mutable=["train.py"], data="synthetic", created=tag)
        self.own: dict[int, Idea] = {}
        self.proposer_of: dict[int, str] = {}

    def memory(self, done: Lineage):
        if not self.use_memory:
            return None
        noise = done.noise_sd()
        for t in done.trials:
            if is_idea(t) and t.number not in self.own:
                self.own[t.number] = idea_of(t, done, self.config, noise_sd=noise)
        return Recall.of(self.earlier + list(self.own.values()))

    def ideas(self) -> list[Idea]:
        done = Lineage(self.records)
        return [idea_of(t, done, self.config, noise_sd=done.noise_sd()) for t in done.trials if is_idea(t)]

    def _start(self, number, operator, parents, files, *, seed, island=0) -> None:
        self._claim(number)
        super()._start(number, operator, parents, files, seed=seed, island=island)

    def _claim(self, number: int) -> None:
        if self.proposer.last is not None:
            self.proposer_of[number], self.proposer.last = self.proposer.last, None

    def _record(self, number, operator, parents, value, *, tree, seed, island, status, extra=None) -> None:
        self._claim(number)
        super()._record(number, operator, parents, value, tree=tree, seed=seed, island=island, status=status,
                        extra={**(extra or {}), "proposer": self.proposer_of.get(number, "")})
        files = self.files.get(number) if status != "invalid_proposal" else None
        if files is not None:
            self.records[-1] = dataclasses.replace(self.records[-1], params=flatten(params_of(files)))


def one_landscape(job: Job) -> dict[str, int]:
    """Trials-to-target of each search of the two experiments on one landscape."""
    cap = job.trials + 1
    first = NotebookSimulation(job, tag=":first")
    target = first.run()[-1]
    notebook = first.ideas()
    out = {}
    for name, memory in (("with notebook", True), ("without", False)):
        curve = NotebookSimulation(job, tag=":second", memory=memory, earlier=notebook).run()
        out[name] = reach(curve, target) or cap
    reference = NotebookSimulation(job, tag=":reference").run()
    target = reference[max(0, job.trials // 2 - 1)]
    for name, mix in (("fixed 50/50", MixedProposer), ("adaptive", AdaptiveProposer)):
        proposer = mix([(OfflineProposer(), 1.0), (Useless(), 1.0)])
        curve = NotebookSimulation(job, tag=":mix", proposer=proposer).run()
        out[name] = reach(curve, target) or cap
    return out


def paired_ratio(a: list[int], b: list[int], *, resamples: int = 2000) -> tuple[float, float, float]:
    """mean(a) / mean(b), and a bootstrap 95% interval of it resampling landscapes in pairs."""
    rng = random.Random(0)
    ratios = []
    for _ in range(resamples):
        pick = [rng.randrange(len(a)) for _ in a]
        ratios.append(statistics.fmean(a[i] for i in pick) / statistics.fmean(b[i] for i in pick))
    ratios.sort()
    return statistics.fmean(a) / statistics.fmean(b), ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def report(results: list[dict[str, int]], args) -> None:
    for label, other, what in (("with notebook", "without", "memory: a second search with the first's notebook"),
                               ("adaptive", "fixed 50/50", "mix of offline + a useless member")):
        mine, theirs = [r[label] for r in results], [r[other] for r in results]
        print(f"\n{what} (target: {'the first search' if label != 'adaptive' else 'offline alone at half the trials'})")
        for name, values in ((label, mine), (other, theirs)):
            ci = bootstrap_ci(values)
            interval = f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "[one landscape]"
            missed = sum(v > args.trials for v in values)
            print(f"  {name:14s} trials to target: mean {statistics.fmean(values):6.1f} {interval:>16}  "
                  f"never reached: {missed}/{len(values)}")
        ratio, low, high = paired_ratio(mine, theirs)
        print(f"  ratio {label} / {other} = {ratio:.2f} [95% CI {low:.2f}, {high:.2f}] (below 1: fewer trials)")
        print("  " + verdict(label, mine, other, theirs, unit="trials").sentence)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="landscapes")
    parser.add_argument("--first", type=int, default=0, help="index of the first landscape")
    parser.add_argument("--trials", type=int, default=80, help="trials per search, seed included")
    parser.add_argument("--noise", type=float, default=0.0015, help="sd of a measurement, in bpb")
    parser.add_argument("--strategy", default="evolve", choices=("evolve", "greedy", "random"))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    args = parser.parse_args()
    jobs = [Job(args.strategy, k, args.trials, args.noise, 1, 0, 0.0, 0, {})
            for k in range(args.first, args.first + args.seeds)]
    print(f"memory payoff: {args.seeds} landscapes x {args.trials} trials, {args.strategy}, noise sd {args.noise:g} "
          f"bpb, offline proposer on train.py ({PROFILE}), one device")
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one_landscape, jobs))
    print(f"({time.time() - t0:.0f} s for {6 * len(jobs)} searches, {args.jobs} processes)")
    report(results, args)


if __name__ == "__main__":
    main()
