"""What trusted trials cost per trial: the sandbox and the separate evaluation, against the old way.

The old way: `python train.py` scores itself in its own process (what a search did before
trusted evaluation). The trusted way: the same seed, same budget, run by the engine's
TrialRunner in a bubblewrap sandbox and scored by the harness's model process and scorer.
Both use the wall clock here so that only the overhead differs. Runs alternate so that
load on the machine hits both alike; the figure is the mean difference per trial.

    python bench/trust_overhead.py --profile tiny --runs 4                 # CPU, minutes
    python bench/trust_overhead.py --profile gpu --budget 300 --runs 2 \\
        --data ../shared/data --device cuda:0                              # on the H100, unchanged

Prints, per run, each way's wall seconds from start to score, and for the trusted way its
breakdown: training process (start to hand-over), hand-over to score, sandbox start-up.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evo.runner import (BwrapExecutor, DataFiles, HarnessEvaluator, LocalExecutor, TrialRunner, bwrap_works,  # noqa: E402
                        trial_environment)


def describe(profile: str, data: str, cache: str) -> dict:
    import json
    out = subprocess.run([sys.executable, "prepare.py", "--describe", "--profile", profile, "--source", data,
                          "--cache-dir", cache], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def old_way(workdir: Path, env: dict) -> tuple[float, float]:
    """Wall seconds of `python train.py` scoring itself, and the val_bpb it printed."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "train.py"], cwd=workdir, env={**env, "EVO_CLOCK": "wall"},
                         capture_output=True, text=True)
    seconds = time.monotonic() - t0
    match = re.search(r"^val_bpb:\s+(\S+)", out.stdout, flags=re.M)
    if not match:
        raise SystemExit(f"the old way failed: {out.stdout[-500:]}{out.stderr[-500:]}")
    return seconds, float(match.group(1))


def trusted_way(runner: TrialRunner, workdir: Path, folder: Path, env: dict, timeout: float) -> tuple[float, object]:
    t0 = time.monotonic()
    result = runner.run(workdir, log_path=folder / "run.log", env=env, timeout=timeout, clock="wall")
    return time.monotonic() - t0, result


def sandbox_startup(runs: int = 5) -> tuple[float, float]:
    """Seconds to start and finish `python -c pass`: plain, and in a bwrap sandbox."""
    def timed(executor) -> float:
        samples = []
        for _ in range(runs):
            t0 = time.monotonic()
            proc = executor.start([sys.executable, "-c", "pass"], cwd=Path("/"), env={"PATH": os.environ["PATH"]})
            proc.communicate()
            samples.append(time.monotonic() - t0)
        return statistics.median(samples)
    return timed(LocalExecutor()), timed(BwrapExecutor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--budget", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=os.environ.get("EVO_CACHE") or str(Path.home() / ".cache" / "evoresearch"))
    args = parser.parse_args()
    if bwrap_works():
        raise SystemExit(f"bwrap cannot run here: {bwrap_works()}")
    subprocess.run([sys.executable, "prepare.py", "--profile", args.profile, "--source", args.data, "--cache-dir",
                    args.cache], cwd=ROOT, check=True, capture_output=True)
    facts = describe(args.profile, args.data, args.cache)
    tmp = Path(tempfile.mkdtemp(prefix="evo-trust-bench-"))
    harness = tmp / "harness"
    workdir = tmp / "work"
    for folder in (harness, workdir):
        folder.mkdir()
    shutil.copyfile(ROOT / "prepare.py", harness / "prepare.py")
    for name in ("train.py", "prepare.py"):
        shutil.copyfile(ROOT / name, workdir / name)
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)  # a worktree has a .git, as in a search
    env = trial_environment(profile=args.profile, budget=args.budget, seed=0, device=args.device, data=args.data,
                            cache_dir=args.cache, threads=os.cpu_count(), allowance=facts["startup_allowance"])
    runner = TrialRunner(executor=BwrapExecutor(hidden=(tmp,)), evaluator=HarnessEvaluator(),
                         harness=[harness / "prepare.py"], data=DataFiles.from_describe(facts, None),
                         eval_limit=facts["eval_limit"], model_processes=facts.get("model_processes", 1))
    timeout = args.budget + facts["startup_allowance"] + max(2.0, 0.02 * args.budget)
    plain, sandboxed = sandbox_startup()
    print(f"sandbox start-up: python -c pass takes {plain:.3f}s plain, {sandboxed:.3f}s in bwrap "
          f"(+{sandboxed - plain:.3f}s)")
    print(f"profile {args.profile}, budget {args.budget:g}s, device {args.device}, {args.runs} runs each way")
    extra = []
    for i in range(args.runs):
        old_seconds, old_bpb = old_way(workdir, env)
        new_seconds, result = trusted_way(runner, workdir, tmp / f"trial{i}", env, timeout)
        if result.status != "ok":
            raise SystemExit(f"the trusted way failed: {result.status}: {result.error}")
        training = result.metrics["training_seconds"]
        print(f"run {i}: old {old_seconds:6.2f}s (val_bpb {old_bpb:.4f}) | trusted {new_seconds:6.2f}s "
              f"(val_bpb {result.val_bpb:.4f}; training process to hand-over {training:.2f}s, whole training "
              f"process {result.wall_seconds:.2f}s, hand-over to score {new_seconds - result.wall_seconds:.2f}s, "
              f"scoring itself {result.metrics['eval_seconds']:.2f}s) | added {new_seconds - old_seconds:+.2f}s")
        extra.append(new_seconds - old_seconds)
    mean = statistics.fmean(extra)
    print(f"added per trial: mean {mean:+.2f}s over {args.runs} runs "
          f"({100 * mean / args.budget:+.1f}% of a {args.budget:g}s budget)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
