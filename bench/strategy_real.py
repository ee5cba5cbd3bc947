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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per trial (default: 30)")
    p.add_argument("--trials", type=int, default=16, help="trials per search, seed included (default: 16)")
    p.add_argument("--seeds", type=int, default=5, help="searches per strategy (default: 5)")
    p.add_argument("--strategies", default="greedy,evolve,random")
    p.add_argument("--devices", default="cpu", help="evo's --devices (default: one CPU slot)")
    p.add_argument("--name", default=None, help="comparison name (default: real-<steps>s-<trials>t)")
    p.add_argument("--root", default=str(ROOT / "runs" / "bench"), help="where the searches go")
    args = p.parse_args()
    name = args.name or f"real-{args.steps}s-{args.trials}t"
    env = {**os.environ, "EVO_STEP_BUDGET": str(args.steps)}
    started = time.time()
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


if __name__ == "__main__":
    main()
