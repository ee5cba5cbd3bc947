"""The fixed harness: how fast does solution.sort sort, and is it right?

Sorts the same pseudo-random lists (fixed seed) for MEASURE_SECONDS and prints the summary
`elements_per_second: N` (higher is better). A wrong result is a failure, not a score.
"""

import random
import sys
import time

import solution

MEASURE_SECONDS = 0.5
LISTS = [[random.Random(seed).randrange(10**6) for _ in range(2000)] for seed in range(4)]


def main():
    for data in LISTS:
        if solution.sort(list(data)) != sorted(data):
            print("FAIL: solution.sort returned a wrong order")
            sys.exit(1)
    sorted_elements, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < MEASURE_SECONDS:
        for data in LISTS:
            solution.sort(list(data))
            sorted_elements += len(data)
    print("---")
    print(f"elements_per_second: {sorted_elements / (time.perf_counter() - t0):.1f}")


if __name__ == "__main__":
    main()
