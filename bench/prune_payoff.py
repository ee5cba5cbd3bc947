"""Does --prune pay? Two searches with the same wall-clock allowance, with and without pruning.

    python bench/prune_payoff.py --minutes 6 --budget 5            # tiny profile on the CPU
    python bench/prune_payoff.py --profile gpu --devices cuda:0 --minutes 60 --budget 300 --data .device-data

Both searches use the evolve strategy and the offline proposer from the same seed. Prints
trials finished, trials pruned, the best val_bpb and the share of device time spent on
trials that were later pruned. Pruning pays when the pruned search reaches a better best in
the same time; until a run shows that, --prune stays off by default.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evo import Search  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--budget", type=float, default=5)
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--devices", default="cpu")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evo-prune-"))
    for name in ("train.py", "prepare.py", "program.md"):
        (work / name).write_text((ROOT / name).read_text())
    print(f"{'search':10s} {'trials':>6} {'pruned':>6} {'best val_bpb':>12} {'wall_min':>8}")
    for name, extra in (("plain", []), ("pruned", ["--prune"])):
        cmd = [sys.executable, "-m", "evo.cli", "run", name, "--profile", args.profile, "--budget", str(args.budget),
               "--hours", str(args.minutes / 60), "--devices", args.devices, "--quiet"] + extra
        if args.data:
            cmd += ["--data", args.data]
        t0 = time.time()
        subprocess.run(cmd, cwd=work, check=True, env=os.environ.copy())
        search = Search.open(name, root=work / "runs")
        trials = search.trials()
        best = search.lineage().best
        pruned = sum(1 for t in trials if t.status == "pruned")
        print(f"{name:10s} {len(trials):6d} {pruned:6d} {best.score if best else float('nan'):12.4f} {(time.time() - t0) / 60:8.1f}")
        search.close()
    print(f"searches in {work / 'runs'}")


if __name__ == "__main__":
    main()
