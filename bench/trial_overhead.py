"""Time a trial spends outside counted training, through the real runner, over consecutive trials.

    python bench/trial_overhead.py                       # tiny profile on the CPU, 3 trials
    python bench/trial_overhead.py --profile gpu --device cuda --budget 60 --data .device-data

Every trial runs the seed genome with one shared TorchInductor cache (as a search does),
so the second and later trials show what the cache saves on a GPU. Prints, per trial:
wall seconds, counted training seconds, the overhead between them and the share of
wall time spent training (the device's useful utilisation).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evo.runner import run_trial, trial_environment  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--data", default=None, help="data source (default: the embedded corpus)")
    parser.add_argument("--grace", type=float, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evo-overhead-"))
    genome = work / "genome"
    genome.mkdir()
    shutil.copyfile(ROOT / "train.py", genome / "train.py")
    env = trial_environment(profile=args.profile, budget=args.budget, seed=0, device=args.device,
                            data=args.data, inductor_cache=work / "inductor-cache")
    print(f"profile {args.profile}, device {args.device}, budget {args.budget:g}s, inductor cache {work / 'inductor-cache'}")
    print(f"{'trial':>5} {'status':>7} {'wall_s':>8} {'train_s':>8} {'total_s':>8} {'overhead_s':>10} {'busy_%':>7} {'val_bpb':>9}")
    for i in range(args.trials):
        t0 = time.time()
        result = run_trial(genome, log_path=work / f"trial{i}.log", env=env, timeout=args.budget + args.grace,
                           harness=[ROOT / "prepare.py"])
        wall = time.time() - t0
        train = result.metrics.get("training_seconds", float("nan"))
        total = result.metrics.get("total_seconds", float("nan"))
        print(f"{i:>5} {result.status:>7} {wall:8.1f} {train:8.1f} {total:8.1f} {wall - train:10.1f} "
              f"{100 * train / wall:7.1f} {result.metrics.get('val_bpb', float('nan')):9.4f}", flush=True)
    print(f"logs in {work}")


if __name__ == "__main__":
    main()
