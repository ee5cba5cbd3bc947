"""Strategies on a synthetic landscape: how many trials does evolve need to reach greedy's final best?

    python bench/strategy_landscape.py                          # 20 landscapes x 200 trials, 3 strategies
    python bench/strategy_landscape.py --trials 300 --noise 0.003 --min-gain auto --noise-runs 3
    python bench/strategy_landscape.py --devices 8              # 8 trials in flight, as on 8 GPUs

Runs the real strategies (`evo.strategies`), the real offline proposer (mutation and
crossover on the text of the seed `train.py`) and the real `Lineage` (best, kept, min gain),
but no git and no training: a genome is scored by reading its UPPERCASE hyperparameters
(`find_hyperparameters`, profile gpu) into a model of a 300 s GPU run:

- size and speed: DEPTH, ASPECT_RATIO and HEAD_DIM set the width and the parameter count N;
  FLOPs per token, an MFU that depends on width, head size and micro-batch, and the window
  pattern set the tokens D trained in the budget; the loss is E + a (N/N0)^-0.34 + b (D/D0)^-0.28
  (a Chinchilla-shaped trade-off: a larger model learns more per token but sees fewer);
  DEVICE_BATCH_SIZE too large for 80 GB crashes the trial, as an out-of-memory would;
- optimisation: each learning rate, weight decay, the betas, the Muon momentum and its
  warm-up, the softcap and the schedule have an optimum and a quadratic penalty in log
  distance from it, with couplings: the matrix and unembedding rates move with batch size
  and width, the momentum with batch size, the warm-down with the final LR fraction, the
  number of optimizer steps (tokens / TOTAL_BATCH_SIZE) with a penalty below ~600; a matrix
  rate 5x past its optimum diverges (a crash);
- every landscape draws its own optima (log-normal offsets around the seed's values) and
  its own size/data balance, so neither the seed nor any strategy's favourite move is the
  answer by construction; a measurement adds Gaussian noise (`--noise`, sd in bpb, seeded by
  the landscape, the genome and the trial seed, as a re-run on a new seed would).

The seed sits ~0.02-0.04 bpb above each landscape's best (autoresearch's 83 runs went 0.998
-> 0.977) and typical single-knob gains are 0.001-0.01, so the default noise of 0.0015 bpb
is of the size of the gains a search keeps. Every search is one device unless `--devices`
says more (then trials are planned from the results known when a device frees, as the loop
does). The "true" best is the landscape's noiseless value of the genome the search calls
best: what a user would get by taking its answer. Prints one line per strategy and the ratio
of trials evolve needs to reach greedy's final (true) best, per landscape, as a median.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import heapq
import json
import math
import os
import random
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.stats import bootstrap_ci, verdict  # noqa: E402
from evo.loop import LimitSpec, NoiseSpec, RunOptions  # noqa: E402
from evo.proposers import Genome, OfflineProposer, ProposalContext  # noqa: E402
from evo.proposers._hyperparams import find_hyperparameters  # noqa: E402
from evo.strategies import NoParentError, make_strategy  # noqa: E402
from evo.targets import HarnessTarget  # noqa: E402
from population.genomes import genome_hash  # noqa: E402
from population.lineage import MIN_GAIN_ATTR, Lineage  # noqa: E402
from population.search import SearchConfig  # noqa: E402
from population.store import TrialRecord  # noqa: E402

PROFILE, SEQ_LEN, BUDGET, VOCAB = "gpu", 2048, 300.0, 8192
PEAK_FLOPS, GPU_GB = 989e12, 80.0
T0 = dt.datetime(2026, 1, 1)


# -- the landscape -----------------------------------------------------------------------------

class Landscape:
    """One random instance: a noiseless val_bpb for any genome, and a noisy measurement of it."""

    # Penalty weights (bpb per unit of squared log distance from the optimum).
    WEIGHTS = {"MATRIX_LR": 0.012, "EMBEDDING_LR": 0.003, "UNEMBEDDING_LR": 0.006, "SCALAR_LR": 0.0015,
               "WEIGHT_DECAY": 0.004, "BETA1": 0.002, "BETA2": 0.002, "MUON_MOMENTUM": 0.004,
               "MUON_MOMENTUM_WARMUP": 0.001, "LOGIT_SOFTCAP": 0.0015}

    def __init__(self, index: int, *, noise: float):
        rng = random.Random(f"landscape:{index}")
        self.index, self.noise = index, noise
        self.shift = {name: rng.gauss(0, 0.45) for name in self.WEIGHTS}       # log offsets of the optima
        self.warmdown = min(0.85, max(0.2, rng.gauss(0.55, 0.15)))
        self.final_frac = max(0.0, rng.gauss(0.05, 0.05))
        self.window_cost = rng.uniform(0.001, 0.006)                           # quality lost per S layer share
        seed = find_hyperparameters((ROOT / "train.py").read_text(), PROFILE)
        self.seed = {k: v.value for k, v in seed.items()}
        n0, d0, _ = self._size(self.seed)
        self.n0, self.d0 = n0, d0
        # Balance of model size against data: where the compute-optimal size lies differs per landscape.
        self.a = 0.11 * math.exp(rng.gauss(0, 0.3))
        self.b = 0.11 * math.exp(rng.gauss(0, 0.3))
        self.floor = 0.998 - self.a - self.b

    def _size(self, p: dict) -> tuple[float, float, float]:
        """(parameters, tokens trained in the budget, peak memory in GB) of a configuration."""
        depth, head = max(1, int(p["DEPTH"])), max(8, int(p["HEAD_DIM"]))
        dim = max(head, math.ceil(depth * int(p["ASPECT_RATIO"]) / head) * head)
        n = 12 * depth * dim ** 2 + 2 * VOCAB * dim
        pattern = str(p.get("WINDOW_PATTERN") or "L").upper()
        short = pattern.count("S") / len(pattern)
        context = SEQ_LEN * (1 - 0.5 * short)
        flops = 6 * n + 6 * depth * dim * context
        head_eff = {32: 0.55, 64: 0.85, 128: 1.0, 256: 0.93}.get(head, 0.5)
        batch = int(p["DEVICE_BATCH_SIZE"])
        mfu = 0.45 * min(1.0, (dim / 768) ** 0.3) * head_eff * min(1.0, (batch / 64) ** 0.12)
        tokens = BUDGET * PEAK_FLOPS * mfu / flops
        memory = 45.0 * (batch / 128) * (dim / 512) * (depth / 8) * (context / SEQ_LEN) ** 0.5 + 16 * n / 1e9
        return n, tokens, memory

    def true(self, p: dict) -> float | None:
        """The noiseless val_bpb of a configuration (None: it crashes)."""
        n, tokens, memory = self._size(p)
        if memory > GPU_GB:
            return None  # out of memory
        steps = tokens / int(p["TOTAL_BATCH_SIZE"])
        dim = n ** 0.5  # only ratios of it matter below
        dim0 = self.n0 ** 0.5
        batch_scale = int(p["TOTAL_BATCH_SIZE"]) / 2 ** 19
        optimum = {
            "MATRIX_LR": 0.04 * batch_scale ** 0.5,
            "EMBEDDING_LR": 0.6,
            "UNEMBEDDING_LR": 0.004 * (dim0 / dim) ** 0.5 * batch_scale ** 0.5,
            "SCALAR_LR": 0.5,
            "WEIGHT_DECAY": 0.2,
            "BETA1": 0.2, "BETA2": 0.05,               # as 1 - beta
            "MUON_MOMENTUM": 0.05 * batch_scale ** 0.5,  # as 1 - momentum: larger batches want less
            "MUON_MOMENTUM_WARMUP": 0.3 * steps,
            "LOGIT_SOFTCAP": 15.0,
        }
        value = {"MATRIX_LR": p["MATRIX_LR"], "EMBEDDING_LR": p["EMBEDDING_LR"], "UNEMBEDDING_LR": p["UNEMBEDDING_LR"],
                 "SCALAR_LR": p["SCALAR_LR"], "WEIGHT_DECAY": p["WEIGHT_DECAY"] + 0.02,
                 "BETA1": 1 - p["ADAM_BETAS"][0], "BETA2": 1 - p["ADAM_BETAS"][1],
                 "MUON_MOMENTUM": 1 - p["MUON_MOMENTUM"], "MUON_MOMENTUM_WARMUP": p["MUON_MOMENTUM_WARMUP"] + 10,
                 "LOGIT_SOFTCAP": p["LOGIT_SOFTCAP"]}
        optimum["WEIGHT_DECAY"] += 0.02
        optimum["MUON_MOMENTUM_WARMUP"] += 10
        penalty = 0.0
        for name, weight in self.WEIGHTS.items():
            if value[name] <= 0:
                return None
            distance = math.log(value[name] / (optimum[name] * math.exp(self.shift[name])))
            if name == "MATRIX_LR" and distance > math.log(5):
                return None  # diverged
            penalty += weight * distance ** 2
        anneal = p["WARMDOWN_RATIO"] * (1 - 0.6 * p["FINAL_LR_FRAC"])
        penalty += 0.03 * (anneal - self.warmdown) ** 2 + 0.02 * (p["FINAL_LR_FRAC"] - self.final_frac) ** 2
        penalty += 0.015 * max(0.0, p["WARMUP_RATIO"] - 0.02) ** 2 + 0.004 * max(0.0, math.log(600 / steps)) ** 2
        pattern = str(p.get("WINDOW_PATTERN") or "L").upper()
        penalty += self.window_cost * pattern.count("S") / len(pattern)
        return self.floor + self.a * (n / self.n0) ** -0.34 + self.b * (tokens / self.d0) ** -0.28 + penalty

    def measure(self, p: dict, *, tree: str, seed: int) -> float | None:
        """One trial's val_bpb: the true value plus noise drawn from (landscape, genome, trial seed)."""
        value = self.true(p)
        if value is None or not self.noise:
            return value
        return value + self.noise * random.Random(f"{self.index}:{tree}:{seed}").gauss(0, 1)


def params_of(files: dict[str, str]) -> dict:
    return {k: v.value for k, v in find_hyperparameters(files["train.py"], PROFILE).items()}


# -- one search, without git or training --------------------------------------------------------

@dataclass
class Job:
    strategy: str
    landscape: int
    trials: int
    noise: float
    devices: int
    noise_runs: int
    min_gain: float | str
    reeval: int
    options: dict


def merge_base(lineage: Lineage, a: int, b: int) -> int | None:
    """The latest common ancestor of two trials (what git merge-base finds in the population)."""
    common = (lineage.ancestors(a) | {a}) & (lineage.ancestors(b) | {b})
    return max(common) if common else None


class Simulation:
    """A search loop in memory: re-evaluations first (noise runs of the seed, then the best), then plans."""

    def __init__(self, job: Job):
        self.job = job
        self.land = Landscape(job.landscape, noise=job.noise)
        self.strategy = make_strategy(job.strategy, **(job.options if job.strategy == "evolve" else {}))
        self.proposer = OfflineProposer()
        self.options = RunOptions(limits=LimitSpec(trials=job.trials),
                                  noise=NoiseSpec(noise_runs=job.noise_runs, min_gain=job.min_gain, reeval=job.reeval))
        self.records: list[TrialRecord] = []
        self.files: dict[int, dict[str, str]] = {}
        self.truth: dict[str, float | None] = {}
        self.known: set[str] = set()
        self.running: list[tuple[float, int, TrialRecord]] = []   # (finish time, number, record) heap
        self.clock = 0.0
        self.rng = random.Random(f"sim:{job.landscape}:{job.strategy}")
        self.curve: list[float] = []   # true val_bpb of the search's best after each finished trial
        self.tag = ""                  # tells apart the draws of searches on one landscape (bench/memory_payoff.py)

    def run(self) -> list[float]:
        """The true val_bpb of the search's best genome after each finished trial."""
        seed_files = {"train.py": (ROOT / "train.py").read_text()}
        self._start(0, "seed", [], seed_files, seed=0)
        started = 1
        while self.running:
            self._finish_next()
            while started < self.job.trials and len(self.running) < self.job.devices:
                if not self._plan(started):
                    break
                started += 1
        return self.curve

    def _true_best(self) -> float:
        best = Lineage(self.records).best
        return self.truth[best.tree] if best else math.inf

    def _plan(self, number: int) -> bool:
        done = Lineage(self.records)
        if self.job.noise_runs or self.job.reeval:
            reeval = self._reeval(done, Lineage(self.records + [r for _, _, r in self.running]))
            if reeval is not None:
                self._start(number, "reeval", [reeval[0]], self.files[reeval[0]], seed=reeval[1])
                return True
            if self._measuring(done):
                return False
        rng = random.Random(f"{self.job.landscape}:{number}{self.tag}")
        try:
            plan = self.strategy.plan(done, rng)
        except NoParentError:
            return False
        ctx = ProposalContext(program="", mutable=["train.py"], lineage=done, rng=rng,
                              settings=HarnessTarget(SearchConfig(name="landscape", profile=PROFILE, budget=BUDGET,
                                                                  mutable=["train.py"], data="",
                                                                  seq_len=SEQ_LEN)).proposer_settings(),
                              is_known=lambda files: genome_hash(files) in self.known,
                              memory=self.memory(done))
        parents = [Genome(trial=n, commit="", files=self.files[n]) for n in plan.parents]
        if plan.operator == "crossover":
            base = merge_base(done, *plan.parents)
            base_genome = Genome(trial=base, commit="", files=self.files[base]) if base is not None else None
            proposal = self.proposer.crossover(parents[0], parents[1], base_genome, ctx)
        else:
            proposal = self.proposer.mutate(parents[0], ctx)
        if not proposal.ok:
            self._record(number, plan.operator, list(plan.parents), None, tree="", seed=0, island=plan.island,
                         status="invalid_proposal")
            return True
        self._start(number, plan.operator, list(plan.parents), proposal.files, seed=0, island=plan.island)
        return True

    def memory(self, done: Lineage):
        """What the proposer gets from the lab notebook (none here; see bench/memory_payoff.py)."""
        return None

    def _evaluations(self, lineage: Lineage, ind) -> int:
        return sum(1 for t in lineage.trials if t.tree == ind.tree and (t.number == ind.trial or t.operator == "reeval"))

    def _reeval(self, done: Lineage, everything: Lineage) -> tuple[int, int] | None:
        seed = done.seed
        seed_ind = done.individual(seed.number) if seed is not None and seed.finished_ok else None
        for ind, wanted in ((seed_ind, 1 + self.job.noise_runs), (done.best, 1 + self.job.reeval)):
            if ind is not None and wanted > 1:
                have = self._evaluations(everything, ind)
                if have < wanted:
                    return ind.trial, have
        return None

    def _measuring(self, done: Lineage) -> bool:
        seed = done.seed
        if self.job.noise_runs < 1 or seed is None or not seed.finished_ok:
            return False
        return self._evaluations(done, done.individual(seed.number)) < 1 + self.job.noise_runs

    def _start(self, number: int, operator: str, parents: list[int], files: dict, *, seed: int, island: int = 0) -> None:
        tree = genome_hash(files)
        self.files[number] = files
        self.known.add(tree)
        if tree not in self.truth:
            self.truth[tree] = self.land.true(params_of(files))
        attrs = {"operator": operator, "parents": parents, "tree": tree, "status": "running", "seed": seed,
                 "island": island, "strategy": self.job.strategy}
        record = TrialRecord(number=number, state="RUNNING", value=None, attrs=attrs)
        heapq.heappush(self.running, (self.clock + 1 + 0.2 * self.rng.random(), number, record))

    def _finish_next(self) -> None:
        self.clock, number, record = heapq.heappop(self.running)
        value = self.land.measure(params_of(self.files[number]), tree=record.tree, seed=record.seed)
        lineage = Lineage(self.records)
        min_gain = self.options.noise.min_gain_now(lineage)
        kept = lineage.would_keep(value, operator=record.operator, feasible=True, min_gain=min_gain, key=record.tree)
        self._record(number, record.operator, record.parents, value, tree=record.tree, seed=record.seed,
                     island=int(record.attrs["island"]), status="ok" if value is not None else "crash",
                     extra={MIN_GAIN_ATTR: min_gain, "kept": kept})

    def _record(self, number, operator, parents, value, *, tree, seed, island, status, extra=None) -> None:
        when = T0 + dt.timedelta(seconds=self.clock * 360 + number * 1e-3)
        self.records.append(TrialRecord(
            number=number, state="COMPLETE" if value is not None else "FAIL", value=value,
            attrs={"operator": operator, "parents": parents, "tree": tree, "status": status, "seed": seed,
                   "island": island, "strategy": self.job.strategy, **(extra or {})},
            started=when - dt.timedelta(seconds=300), finished=when))
        self.curve.append(self._true_best())


def run_job(job: Job, cache: str | None = None) -> tuple[str, int, list[float], float]:
    path = None
    if cache and job.strategy != "evolve":  # only evolve has options worth sweeping; the others repeat exactly
        key = dataclasses.replace(job, options={})
        path = Path(cache) / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", repr(key)) + ".json")
        if path.exists():
            return tuple(json.loads(path.read_text()))
    curve = Simulation(job).run()
    land = Landscape(job.landscape, noise=0)
    result = (job.strategy, job.landscape, curve, land.true(land.seed))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    return result


# -- the report -----------------------------------------------------------------------------------

def reach(curve: list[float], target: float) -> int | None:
    """Trials (1-based, seed included) until the true best is at or below `target` (None: never)."""
    return next((i for i, v in enumerate(curve, start=1) if v <= target + 1e-12), None)


def mean_gain_curve(curves: list[list[float]], seeds: list[float]) -> list[float]:
    """The mean over landscapes of (seed's true val_bpb - true val_bpb of the search's best) after each trial."""
    length = min(len(c) for c in curves)
    return [statistics.fmean(seed - c[t] for c, seed in zip(curves, seeds)) for t in range(length)]


def trials_ratio(curves: list[list[float]], greedy: list[list[float]], seeds: list[float]) -> float:
    """Trials the strategy's mean gain curve needs to reach greedy's final mean gain, over the trials greedy's
    own curve needed (inf: never within the trials run). Curves averaged first, as two lines on one plot."""
    mine, theirs = mean_gain_curve(curves, seeds), mean_gain_curve(greedy, seeds)
    target = theirs[-1]
    needed = next(t for t, g in enumerate(theirs, start=1) if g >= target - 1e-12)
    hit = next((t for t, g in enumerate(mine, start=1) if g >= target - 1e-12), None)
    return hit / needed if hit is not None else math.inf


def ratio_ci(curves, greedy, seeds, *, resamples: int = 1000) -> tuple[float, float]:
    """A bootstrap 95% interval of `trials_ratio` over landscapes (resampled in pairs)."""
    rng = random.Random(0)
    values = []
    for _ in range(resamples):
        pick = [rng.randrange(len(seeds)) for _ in seeds]
        values.append(trials_ratio([curves[i] for i in pick], [greedy[i] for i in pick], [seeds[i] for i in pick]))
    values.sort()
    return values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def report(results: dict[str, dict[int, list[float]]], seeds: dict[int, float], args) -> None:
    strategies = list(results)
    landscapes = sorted(seeds)
    base = [seeds[k] for k in landscapes]
    print(f"{'strategy':9s} {'final true best (mean [95% CI])':>32} {'gain over seed':>15} "
          f"{'reach greedy final: median trials':>34} {'landscapes':>10}")
    greedy = results.get("greedy")
    for name in strategies:
        finals = [results[name][k][-1] for k in landscapes]
        ci = bootstrap_ci(finals)
        gain = statistics.fmean(seeds[k] - results[name][k][-1] for k in landscapes)
        interval = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{'[one landscape]':16s}"  # no interval from one
        line = f"{name:9s} {statistics.fmean(finals):>15.4f} {interval} {gain:>15.4f}"
        if greedy is not None:
            hits = [reach(results[name][k], greedy[k][-1]) for k in landscapes]
            med = statistics.median([h if h is not None else math.inf for h in hits])
            line += f" {med:>34} {sum(h is not None for h in hits):>7}/{len(hits)}"
        print(line)
    if greedy is None:
        return
    greedy_curves = [greedy[k] for k in landscapes]
    for name in strategies:
        if name == "greedy":
            continue
        curves = [results[name][k] for k in landscapes]
        ratio = trials_ratio(curves, greedy_curves, base)
        low, high = ratio_ci(curves, greedy_curves, base)
        print(f"ratio {name}/greedy = {ratio:.2f} [95% CI {low:.2f}, {high:.2f}]: trials {name}'s mean gain curve "
              f"needs to reach greedy's final mean gain ({mean_gain_curve(greedy_curves, base)[-1]:.4f} bpb), "
              f"over the trials greedy's own curve needed")
        finals = [results[name][k][-1] for k in landscapes]
        print(f"  at {args.trials} trials: " + verdict(name, finals, "greedy", [greedy[k][-1] for k in landscapes]).sentence)
    if args.save:
        Path(args.save).write_text(json.dumps({"seeds": seeds, "results": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="greedy,evolve,random")
    parser.add_argument("--seeds", type=int, default=20, help="landscapes (each strategy runs once on each)")
    parser.add_argument("--first", type=int, default=0, help="index of the first landscape")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.0015, help="sd of a measurement, in bpb")
    parser.add_argument("--devices", type=int, default=1, help="trials in flight at once")
    parser.add_argument("--noise-runs", type=int, default=0)
    parser.add_argument("--min-gain", default="0", help="a number or auto (as evo run --min-gain)")
    parser.add_argument("--reeval", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--save", help="write every curve to this JSON file")
    parser.add_argument("--cache", help="folder to keep greedy's and random's curves in, to sweep evolve's options "
                        "faster (clear it when a strategy's code changes)")
    for name, default in (("elite", None), ("tournament", None), ("crossover-rate", None), ("islands", None),
                          ("migration-rate", None)):
        parser.add_argument(f"--{name}", type=float, default=default, help="evolve option (default: the strategy's)")
    parser.add_argument("--cross-from", choices=("best", "tournament"), help="evolve option (default: the strategy's)")
    args = parser.parse_args()
    evolve = {k.replace("-", "_"): (int(v) if k in ("elite", "tournament", "islands") else v)
              for k in ("elite", "tournament", "crossover-rate", "islands", "migration-rate", "cross-from")
              if (v := getattr(args, k.replace("-", "_"))) is not None}
    min_gain = "auto" if args.min_gain == "auto" else float(args.min_gain)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    jobs = [Job(s, k, args.trials, args.noise, args.devices, args.noise_runs, min_gain, args.reeval, evolve)
            for k in range(args.first, args.first + args.seeds) for s in strategies]
    described = make_strategy("evolve", **evolve).describe() if "evolve" in strategies else ""
    print(f"strategy landscape: {args.seeds} landscapes x {args.trials} trials, noise sd {args.noise:g} bpb, "
          f"{args.devices} device(s), noise runs {args.noise_runs}, min gain {args.min_gain}, reeval {args.reeval}; "
          f"offline proposer on train.py ({PROFILE}); {described}")
    t0 = time.time()
    results: dict[str, dict[int, list[float]]] = {s: {} for s in strategies}
    seeds: dict[int, float] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for strategy, k, curve, seed in pool.map(functools.partial(run_job, cache=args.cache), jobs):
            results[strategy][k] = curve
            seeds[k] = seed
    print(f"seed genome: true val_bpb {statistics.fmean(seeds.values()):.4f} on average "
          f"({time.time() - t0:.0f} s for {len(jobs)} searches, {args.jobs} processes)")
    report(results, seeds, args)


if __name__ == "__main__":
    main()
