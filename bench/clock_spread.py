"""Does machine load change a trial's result? The seed's val_bpb on the wall clock and on the CPU clock,
on a quiet machine and under a competing CPU load.

A fixed time budget measures the machine as well as the genome: with other work running, a
trial gets fewer steps in its seconds and a worse val_bpb. On a CPU slot evoresearch counts
the budget in CPU seconds of the trial's processes divided by its threads instead, so a trial
gets the same compute whatever else runs. This benchmark runs the same seed genome, same
seed, RUNS times in each of four conditions (wall or CPU clock x quiet or loaded) through the
engine's TrialRunner (sandboxed, scored by the harness) and prints the spread.

    python bench/clock_spread.py --runs 4 --budget 5          # ~3 minutes on two cores

The load is one busy process per core (pure Python loops), started before and stopped
after each loaded run. Run it on an otherwise idle machine: say what else ran.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evo.runner import BwrapExecutor, DataFiles, HarnessEvaluator, LocalExecutor, TrialRunner, bwrap_works  # noqa: E402
from evo.runner import trial_environment  # noqa: E402


def _spin(_):
    while True:
        pass


def run_once(runner: TrialRunner, workdir: Path, folder: Path, env: dict, *, clock: str, timeout: float,
             threads: int) -> tuple[float, float]:
    result = runner.run(workdir, log_path=folder / "run.log", env=env, timeout=timeout, clock=clock, threads=threads)
    if result.status != "ok":
        raise SystemExit(f"trial failed: {result.status}: {result.error}")
    steps = result.metrics.get("num_steps", float("nan"))
    return result.val_bpb, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--budget", type=float, default=5.0)
    parser.add_argument("--cache", default=os.environ.get("EVO_CACHE") or str(Path.home() / ".cache" / "evoresearch"))
    args = parser.parse_args()
    import json
    subprocess.run([sys.executable, "prepare.py", "--profile", "tiny", "--cache-dir", args.cache], cwd=ROOT,
                   check=True, capture_output=True)
    facts = json.loads(subprocess.run([sys.executable, "prepare.py", "--describe", "--profile", "tiny", "--cache-dir",
                                       args.cache], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    tmp = Path(tempfile.mkdtemp(prefix="evo-clock-bench-"))
    workdir, harness = tmp / "work", tmp / "harness"
    for folder in (workdir, harness):
        folder.mkdir()
    shutil.copyfile(ROOT / "prepare.py", harness / "prepare.py")
    for name in ("train.py", "prepare.py"):
        shutil.copyfile(ROOT / name, workdir / name)
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    threads = os.cpu_count() or 1
    env = trial_environment(profile="tiny", budget=args.budget, seed=0, device="cpu", cache_dir=args.cache,
                            threads=threads, allowance=facts["startup_allowance"])
    executor = LocalExecutor() if bwrap_works() else BwrapExecutor(hidden=(tmp,))
    runner = TrialRunner(executor=executor, evaluator=HarnessEvaluator(), harness=[harness / "prepare.py"],
                         data=DataFiles.from_describe(facts, None), eval_limit=facts["eval_limit"])
    timeout = args.budget + facts["startup_allowance"] + 2
    print(f"seed genome, tiny profile, budget {args.budget:g}s, {threads} threads, {args.runs} runs per condition, "
          f"sandbox {executor.name}")
    results = {}
    for clock in ("wall", "cpu"):
        for loaded in (False, True):
            pool = multiprocessing.Pool(threads) if loaded else None
            if pool is not None:
                pool.map_async(_spin, range(threads))
            try:
                values = [run_once(runner, workdir, tmp / f"{clock}-{loaded}-{i}", env, clock=clock,
                                   timeout=timeout * (4 if clock == "cpu" else 1), threads=threads)
                          for i in range(args.runs)]
            finally:
                if pool is not None:
                    pool.terminate()
            results[(clock, loaded)] = values
            bpbs = [v for v, _ in values]
            print(f"{clock:4s} clock, {'under load' if loaded else 'quiet':10s}: val_bpb "
                  + " ".join(f"{v:.4f}" for v in bpbs)
                  + f" | mean {statistics.fmean(bpbs):.4f} sd {statistics.stdev(bpbs):.4f} | steps "
                  + " ".join(f"{s:.0f}" for _, s in values))
    for clock in ("wall", "cpu"):
        quiet = [v for v, _ in results[(clock, False)]]
        loaded = [v for v, _ in results[(clock, True)]]
        both = quiet + loaded
        print(f"{clock} clock: load moves the mean by {statistics.fmean(loaded) - statistics.fmean(quiet):+.4f}; "
              f"sd over all {len(both)} runs {statistics.stdev(both):.4f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
