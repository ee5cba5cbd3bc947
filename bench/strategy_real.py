"""Strategies on the real task: tiny GPT trials with a step-fixed budget, greedy vs evolve vs random.

    python bench/strategy_real.py                              # 3 strategies x 5 seeds x 16 trials, 30 steps
    python bench/strategy_real.py --steps 60 --trials 24 --seeds 8 --devices cpu:2

Every trial is a real `evo` trial (sandbox, harness scorer, the seed train.py mutated by the
offline proposer) on the `tiny` profile, but its budget counts optimizer steps
(EVO_STEP_BUDGET) instead of seconds: the same genome on the same seed trains exactly as far
on any machine and under any load, so scores repeat and differences between strategies are
the strategies', not the machine's. The synthetic landscape (bench/strategy_landscape.py)
is the fast loop for tuning a strategy; this one checks its verdict on the real thing.

Runs `evo compare` (resumable: run it again with the same --name to finish an interrupted
run) and prints its table, then the ratio of trials each strategy's mean gain curve needs to
reach greedy's final mean gain (the gain: the seed's val_bpb minus the search's best so far).
Our goal for evolve is <= 0.5. Wall time: about trials x seeds x strategies x the time of one
trial (~10 s at 30 steps on one CPU core, start-up and scoring included).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from analysis.compare import load_runs  # noqa: E402
from evo.compare import Comparison  # noqa: E402
from strategy_landscape import ratio_ci, trials_ratio  # noqa: E402


def gain_curves(runs) -> tuple[list[list[float]], list[float]]:
    """Per search: the best val_bpb after each counted trial, and the seed genome's val_bpb."""
    curves, seeds = [], []
    for run in runs:
        history = run.progress.points
        if not history or history[0].trial.value is None:
            continue
        seeds.append(history[0].trial.value)
        curves.append([p.best for p in history])
    return curves, seeds


def reach_of(curve: list[float], target: float, trials: int) -> int:
    """Trials (seed included) until a search's best is at or below `target`; trials + 1 when never."""
    return next((i for i, v in enumerate(curve, start=1) if v <= target + 1e-12), trials + 1)


def paired_permutation_p(mine: list[int], theirs: list[int]) -> float:
    """One-sided p of a paired sign-flip permutation test that `mine` needs fewer trials than `theirs`
    (exact over every flip of the per-seed differences)."""
    diffs = [a - b for a, b in zip(mine, theirs)]
    observed = sum(diffs)
    flips = [sum(d * s for d, s in zip(diffs, signs)) for signs in itertools.product((1, -1), repeat=len(diffs))]
    return sum(1 for f in flips if f <= observed + 1e-12) / len(flips)


def run_arm(label: str, proposer: str, strategies: str, args, env) -> list:
    """Run (or resume) the comparison of one proposer and return its runs, labelled strategy+proposer."""
    name = f"{args.name}-{proposer.replace(':', '_').replace(',', '_')}"
    cmd = [sys.executable, "-m", "evo.cli", "compare", name, "--root", args.root, "--strategies", strategies,
           "--seeds", str(args.seeds), "--trials", str(args.trials), "--profile", "tiny", "--budget", "600",
           "--devices", args.devices, "--proposer", proposer, "--quiet"]
    if Comparison.exists(name, root=args.root):
        cmd = [sys.executable, "-m", "evo.cli", "compare", name, "--root", args.root, "--devices", args.devices,
               "--quiet"]
    if not args.table_only:
        proc = subprocess.run(cmd, cwd=ROOT, env=env)
        if proc.returncode != 0:
            sys.exit(proc.returncode)
    comparison = Comparison.open(name, root=args.root)
    runs = load_runs(comparison.groups(), root=args.root)
    return [(f"{run.label}+{proposer}", run) for run in runs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per trial (default: 30)")
    p.add_argument("--trials", type=int, default=16, help="trials per search, seed included (default: 16)")
    p.add_argument("--seeds", type=int, default=5, help="searches per strategy (default: 5)")
    p.add_argument("--strategies", default="greedy,evolve,random")
    p.add_argument("--arms", default=None,
                   help="strategy+proposer arms instead, e.g. greedy+offline,evolve+offline,evolve+tpe: one "
                   "comparison per proposer; the first arm is the reference")
    p.add_argument("--table-only", action="store_true", help="print the table of what has run, run nothing")
    p.add_argument("--devices", default="cpu", help="evo's --devices (default: one CPU slot)")
    p.add_argument("--name", default=None, help="comparison name (default: real-<steps>s-<trials>t)")
    p.add_argument("--root", default=str(ROOT / "runs" / "bench"), help="where the searches go")
    args = p.parse_args()
    name = args.name or f"real-{args.steps}s-{args.trials}t"
    args.name = name
    env = {**os.environ, "EVO_STEP_BUDGET": str(args.steps)}
    started = time.time()
    if args.arms:
        arms_main(args, env, started)
        return
    # The time budget only bounds a trial; the step budget decides how far it trains.
    cmd = [sys.executable, "-m", "evo.cli", "compare", name, "--root", args.root, "--strategies", args.strategies,
           "--seeds", str(args.seeds), "--trials", str(args.trials), "--profile", "tiny", "--budget", "600",
           "--devices", args.devices]
    if Comparison.exists(name, root=args.root):
        cmd = [sys.executable, "-m", "evo.cli", "compare", name, "--root", args.root, "--devices", args.devices]
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    comparison = Comparison.open(name, root=args.root)
    runs = load_runs(comparison.groups(), root=args.root)
    by_label: dict[str, list] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    greedy, greedy_seeds = gain_curves(by_label.get("greedy", []))
    print(f"\n{args.steps} steps per trial, {args.trials} trials x {args.seeds} seeds; "
          f"{(time.time() - started) / 60:.1f} min this run")
    for label, group in by_label.items():
        if label == "greedy" or not greedy:
            continue
        curves, seeds = gain_curves(group)
        if len(curves) != len(greedy) or seeds != greedy_seeds:
            print(f"{label}: not paired with greedy's searches (seed scores differ); no ratio")
            continue
        ratio = trials_ratio(curves, greedy, seeds)
        low, high = ratio_ci(curves, greedy, seeds)
        shown = "never" if math.isinf(ratio) else f"{ratio:.2f}"
        print(f"ratio {label}/greedy = {shown} [95% CI {low:.2f}, {high:.2f}]: trials {label}'s mean gain curve needs "
              "to reach greedy's final mean gain, over greedy's (goal for evolve: <= 0.5)")



def arms_main(args, env, started: float) -> None:
    """Strategy+proposer arms: each proposer's comparison run in turn, then one table against the first arm."""
    arms = [a.strip() for a in args.arms.split(",")]
    by_proposer: dict[str, list[str]] = {}
    for arm in arms:
        strategy, _, proposer = arm.partition("+")
        by_proposer.setdefault(proposer or "offline", []).append(strategy)
    labelled = []
    for proposer, strategies in by_proposer.items():
        labelled += run_arm(proposer, proposer, ",".join(strategies), args, env)
    groups: dict[str, list] = {}
    for label, run in labelled:
        groups.setdefault(label, []).append(run)
    reference = arms[0] if "+" in arms[0] else arms[0] + "+offline"
    ref_curves, ref_seeds = gain_curves(groups.get(reference, []))
    print(f"\n{args.steps} steps per trial, {args.trials} trials x {args.seeds} seeds; "
          f"{(time.time() - started) / 60:.1f} min this run; reference {reference}")
    if not ref_curves:
        print("no finished reference searches yet")
        return
    target = statistics.fmean(c[-1] for c in ref_curves)
    ref_reach = [reach_of(c, target, args.trials) for c in ref_curves]
    print(f"| arm | searches | mean best val_bpb | trials to target (mean) | ratio to {reference} [95% CI] | p (fewer trials) |")
    print("|---|---|---|---|---|---|")
    for arm in arms:
        label = arm if "+" in arm else arm + "+offline"
        curves, seeds = gain_curves(groups.get(label, []))
        if not curves:
            print(f"| {label} | 0 | | | | |")
            continue
        reaches = [reach_of(c, target, args.trials) for c in curves]
        best = statistics.fmean(c[-1] for c in curves)
        paired = len(curves) == len(ref_curves) and seeds == ref_seeds
        if label == reference or not paired:
            ratio_s, p_s = ("1", "") if label == reference else ("not paired", "")
        else:
            ratio = trials_ratio(curves, ref_curves, seeds)
            low, high = ratio_ci(curves, ref_curves, seeds)
            ratio_s = ("never" if math.isinf(ratio) else f"{ratio:.2f}") + f" [{low:.2f}, {high:.2f}]"
            p_s = f"{paired_permutation_p(reaches, ref_reach):.3f}"
        print(f"| {label} | {len(curves)} | {best:.4f} | {statistics.fmean(reaches):.1f} | {ratio_s} | {p_s} |")
    print(f"target: {reference}'s mean final best {target:.4f}; a search that never reaches it counts {args.trials + 1}")


if __name__ == "__main__":
    main()
