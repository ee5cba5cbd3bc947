"""The engine's own cost per trial: planning, proposing, git, Optuna, process start.

    python bench/engine_overhead.py --trials 40
    python bench/engine_overhead.py --trials 1000 --sandbox none     # the figures at scale

Runs a real search (offline proposer, evolve strategy, SQLite store, git population, one
sandboxed process per trial) of a command target whose run scores its genome's knobs at
once, so nearly every second measured is the engine's. Prints trials per minute, the device's idle time between
one trial ending and the next starting on it (median over the whole search and over its
last tenth, where the history is longest), and how long `evo status` takes on the finished
search.
"""

import argparse
from collections import Counter
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evo import EvolveStrategy, OfflineProposer, RunOptions, SearchLoop, create_search, parse_devices  # noqa: E402

# The genome: sixteen knobs a proposer changes, and a run that scores them at once, in awk (a
# trial's process costs milliseconds rather than a Python start, so thousands of trials take
# minutes). Each knob's best value lies many steps away, so the offline proposer keeps finding
# unseen children for thousands of trials rather than running out of them near an optimum.
KNOBS = 16
STAND_IN = "".join(f"K{i:02d} = 1.0\n" for i in range(KNOBS))
RUN = ("awk -F= '/^K[0-9]+ /{i=substr($1,2)+0; s+=(log($2+0)-0.1*i)^2} "
       "END{print \"val_bpb: \" 1+s}' train.py")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="trials in the search, seed included (default: 40)")
    parser.add_argument("--devices", default="cpu", help="as evo run --devices (default: one CPU slot)")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"),
                        help="as evo init --sandbox (default: auto)")
    parser.add_argument("--keep", metavar="DIR", help="make the search in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="evo-engine-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        measure(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, args) -> None:
    project = work / "project"
    project.mkdir()
    (project / "train.py").write_text(STAND_IN)
    search = create_search("bench", root=work / "runs", project=project, run=RUN,
                           metric="val_bpb", budget=60, sandbox=args.sandbox)
    loop = SearchLoop(search, EvolveStrategy(), OfflineProposer(), parse_devices(args.devices),
                      RunOptions(trials=args.trials))
    t0 = time.time()
    reason = loop.run()
    elapsed = time.time() - t0
    trials = sorted(search.trials(), key=lambda t: t.number)
    runs = [t for t in trials if t.started and t.finished and t.attrs.get("wall_seconds") is not None]
    print(f"statuses: {', '.join(f'{n} {s}' for s, n in Counter(t.status for t in trials).most_common())}")
    gaps = [(b.started - a.finished).total_seconds() for a, b in zip(runs, runs[1:]) if b.started > a.finished]
    if not gaps:
        raise SystemExit(f"no two trials ran one after the other ({reason}): nothing to measure")
    late = gaps[-max(1, len(gaps) // 10):]
    child = [t.attrs["wall_seconds"] for t in runs]
    print(f"{len(trials)} trials in {elapsed:.1f}s ({reason}; sandbox {search.config.sandbox}): "
          f"{60 * len(trials) / elapsed:.1f} trials/min")
    print(f"trial process wall (sandbox + awk): median {statistics.median(child):.3f}s")
    print(f"device idle between trials (engine overhead): median {statistics.median(gaps):.3f}s, "
          f"last tenth {statistics.median(late):.3f}s, max {max(gaps):.3f}s")
    search.close()
    t0, cpu0 = time.time(), _children_cpu()
    subprocess.run([sys.executable, "-m", "evo.cli", "status", "bench", "--root", str(work / "runs")],
                   capture_output=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"evo status on {len(trials)} trials: {time.time() - t0:.2f}s (CPU {_children_cpu() - cpu0:.2f}s, "
          "which other work on the machine does not inflate)")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
