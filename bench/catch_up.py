"""How long a reader of a long study takes to catch up when another process wrote many trials since it
last read (a worker resuming behind the others, a view left open): one full read, against what probing
each new trial number with its own query, as the store once did, would have cost.

    python bench/engine_overhead.py --trials 10000 --run 3 --keep /tmp/b10k
    python bench/catch_up.py sqlite:////tmp/b10k/runs/bench/study.db bench

The reader is put behind by hand (its read cache told it last read the study at one trial): the store's
cache keeps no public way to forget what it read.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from population.store import TrialStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("storage", help="the study's Optuna URL (an SQLite study.db or PostgreSQL)")
    parser.add_argument("name", help="the study's (the search's) name")
    args = parser.parse_args()
    store = TrialStore.open(args.storage, args.name)
    cache = store._cache
    if cache is None:
        sys.exit("catch_up: the storage has no read cache (an RDB storage is needed)")
    n = len(store.trials())
    cache._known, cache._rows, cache._unfinished = 1, cache._rows[:1], set()   # last read at one trial
    t = time.perf_counter()
    caught = len(store.trials())
    now = time.perf_counter() - t
    t = time.perf_counter()
    probes = sum(cache._exists(k) for k in range(1, n))
    probing = time.perf_counter() - t
    print(f"{n} trials, a reader {n - 1} behind: catches up in {now:.2f}s ({caught} trials read); probing the "
          f"{probes} new numbers one query each, as before, would add {probing:.2f}s")
    store.close()


if __name__ == "__main__":
    main()
