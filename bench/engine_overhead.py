"""The engine's own cost per trial: planning, proposing, git, Optuna, process start.

    python bench/engine_overhead.py --trials 40

Runs a real search (offline proposer, evolve strategy, SQLite store, git population) on
a stand-in genome that prints its summary at once, so every second measured is the
engine's. Prints trials per minute, the median gap between one trial ending and the next
starting on the freed device, and how long `evo status` takes to read the finished search.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evo import EvolveStrategy, OfflineProposer, RunOptions, Search, SearchLoop, parse_devices  # noqa: E402

STAND_IN = (ROOT / "tests" / "data" / "instant_genome.py").read_text()  # scores its knobs at once


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--devices", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="evo-engine-"))
    project = work / "project"
    project.mkdir()
    (project / "train.py").write_text(STAND_IN)
    shutil.copyfile(ROOT / "prepare.py", project / "prepare.py")
    os.environ.setdefault("EVO_CACHE", str(work / "cache"))
    search = Search.create("bench", root=work / "runs", project=project, profile="tiny", budget=1)
    loop = SearchLoop(search, EvolveStrategy(), OfflineProposer(), parse_devices(args.devices), RunOptions(trials=args.trials))
    t0 = time.time()
    loop.run()
    elapsed = time.time() - t0
    trials = sorted(search.trials(), key=lambda t: t.number)
    runs = [t for t in trials if t.started and t.finished and t.attrs.get("wall_seconds") is not None]
    gaps = [(b.started - a.finished).total_seconds() for a, b in zip(runs, runs[1:]) if b.started > a.finished]
    child = [t.attrs["wall_seconds"] for t in runs]
    print(f"{len(trials)} trials in {elapsed:.1f}s including data preparation: {60 * len(trials) / elapsed:.1f} trials/min")
    print(f"child process wall (python start + summary): median {statistics.median(child):.2f}s")
    print(f"device idle between trials (engine overhead): median {statistics.median(gaps):.3f}s, max {max(gaps):.3f}s")
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "evo.cli", "status", "bench", "--root", str(work / "runs")], capture_output=True, check=True)
    print(f"evo status on {len(trials)} trials: {time.time() - t0:.2f}s")
    search.close()


if __name__ == "__main__":
    main()
