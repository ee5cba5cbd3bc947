"""Time a trial spends outside counted training, through the real runner, over consecutive trials.

    python bench/trial_overhead.py                       # tiny profile on the CPU, 3 trials
    python bench/trial_overhead.py --profile gpu --device cuda --budget 60 --data .device-data

Every trial runs the seed genome as a search runs it: in its sandbox, scored by the harness's
trusted scorer, with one shared TorchInductor cache (the seed's run fills it), so the second and
later trials show what the cache saves on a GPU. Prints, per trial: wall seconds, counted training
seconds, the overhead between them and the share of wall time spent training (the device's
useful utilisation).
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evo.devices import parse_devices  # noqa: E402
from evo.search import create_search  # noqa: E402
from evo.targets import target_of  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--device", default="cpu", help="as evo run --devices, one device (default: cpu)")
    parser.add_argument("--budget", type=float, default=5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--data", default=None, help="data source (default: the embedded corpus)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evo-overhead-"))
    project = work / "project"
    project.mkdir()
    for name in ("train.py", "prepare.py", "program.md"):
        shutil.copyfile(ROOT / name, project / name)
    search = create_search("overhead", root=work / "runs", project=project, profile=args.profile,
                           budget=args.budget, data=args.data)
    target = target_of(search.config)
    target.prepare(search, python=sys.executable, say=print)
    runner = target.runner(search, python=sys.executable)
    slot = parse_devices(args.device)[0]
    print(f"profile {args.profile}, device {slot.device}, budget {args.budget:g}s, sandbox {search.config.sandbox}")
    print(f"{'trial':>5} {'status':>9} {'wall_s':>8} {'train_s':>8} {'total_s':>8} {'overhead_s':>10} {'busy_%':>7} "
          f"{'val_bpb':>9}")
    for i in range(args.trials):
        genome = search.repo.checkout(search.paths.worktree(slot.name), search.config.seed_commit)
        t0 = time.time()
        result = runner.run(genome, log_path=work / f"trial{i}.log", env=target.environment(search, slot=slot, seed=i),
                            timeout=target.timeout(), clock=target.clock(slot), threads=slot.threads or 1)
        wall = time.time() - t0
        target.after_trial(search, result, workdir=genome, seed=True)  # the compile cache later trials start from
        train = result.metrics.get("training_seconds", float("nan"))
        total = result.metrics.get("total_seconds", float("nan"))
        print(f"{i:>5} {result.status:>9} {wall:8.1f} {train:8.1f} {total:8.1f} {wall - train:10.1f} "
              f"{100 * train / wall:7.1f} {result.metrics.get('val_bpb', float('nan')):9.4f}", flush=True)
    search.close()
    print(f"logs in {work}")


if __name__ == "__main__":
    main()
