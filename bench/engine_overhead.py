"""The engine's own cost per trial: planning, proposing, git, Optuna, process start.

    python bench/engine_overhead.py --trials 40
    python bench/engine_overhead.py --trials 10000                   # the figures at scale, in minutes
    python bench/engine_overhead.py --trials 1000 --run 1000 --sandbox none

Runs a real search (offline proposer, evolve strategy, SQLite store, git population, one
sandboxed process per trial) of a command target whose run scores its genome's knobs at
once, so nearly every second measured is the engine's. Prints trials per minute, the device's idle time between
one trial ending and the next starting on it (median over the whole search and over its
last tenth, where the history is longest), and how long `evo status` takes on the finished
search.

Running 10,000 trials one by one would take hours, so only the last `--run` of them run; the
others are pre-filled after the seed: synthetic finished trials written into the search's real
Optuna study (its tables, in one transaction), each a child of an earlier one with a genome of its own committed to the search's
git population (in one `git fast-import`), scored as its run would score it. The run on top then
resumes a search with that long a history, which is what the figures at scale are about.
"""

import argparse
from collections import Counter
from datetime import datetime, timezone
import json
import math
import os
import random
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

import sqlalchemy  # noqa: E402

from evo import EvolveStrategy, LimitSpec, OfflineProposer, RunOptions, SearchLoop, create_search, parse_devices  # noqa: E402
from population import Search, genome_hash  # noqa: E402
from population.genomes import git_environment  # noqa: E402

# The genome: sixteen knobs a proposer changes, and a run that scores them at once, in awk (a
# trial's process costs milliseconds rather than a Python start, so thousands of trials take
# minutes). Each knob's best value lies many steps away, so the offline proposer keeps finding
# unseen children for thousands of trials rather than running out of them near an optimum.
KNOBS = 16
STAND_IN = "".join(f"K{i:02d} = 1.0\n" for i in range(KNOBS))
RUN = ("awk -F= '/^K[0-9]+ /{i=substr($1,2)+0; s+=(log($2+0)-0.1*i)^2} "
       "END{print \"val_bpb: \" 1+s}' train.py")
# The steps of a pre-filled child's knob, like the offline proposer's.
STEPS = (0.5, 0.8, 1.25, 2.0)
RUN_AT_MOST = 200


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="trials in the search, seed included (default: 40)")
    parser.add_argument("--run", type=int, metavar="N",
                        help=f"how many of the trials run, the last ones; the others are pre-filled (default: all "
                        f"of them up to {RUN_AT_MOST})")
    parser.add_argument("--devices", default="cpu", help="as evo run --devices (default: one CPU slot)")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"),
                        help="as evo init --sandbox (default: auto)")
    parser.add_argument("--keep", metavar="DIR", help="make the search in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    args.run = min(args.trials, RUN_AT_MOST) if args.run is None else args.run
    if not 2 <= args.run <= args.trials:
        parser.error(f"--run must be between 2 and --trials ({args.trials}), not {args.run}")
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
    prefilled = args.trials - args.run
    if prefilled:
        t0 = time.time()
        SearchLoop(search, EvolveStrategy(), OfflineProposer(), parse_devices(args.devices),
                   RunOptions(limits=LimitSpec(trials=1))).run()
        prefill(search, prefilled)
        print(f"pre-filled {prefilled} trials after the seed in {time.time() - t0:.1f}s")
    loop = SearchLoop(search, EvolveStrategy(), OfflineProposer(), parse_devices(args.devices),
                      RunOptions(limits=LimitSpec(trials=args.trials)))
    t0 = time.time()
    reason = loop.run()
    elapsed = time.time() - t0
    trials = sorted(search.trials(), key=lambda t: t.number)
    ran = trials if not prefilled else [t for t in trials if t.number > prefilled]
    runs = [t for t in ran if t.started and t.finished and t.attrs.get("wall_seconds") is not None]
    print(f"statuses: {', '.join(f'{n} {s}' for s, n in Counter(t.status for t in trials).most_common())}")
    gaps = [(b.started - a.finished).total_seconds() for a, b in zip(runs, runs[1:]) if b.started > a.finished]
    if not gaps:
        raise SystemExit(f"no two trials ran one after the other ({reason}): nothing to measure")
    late = gaps[-max(1, len(gaps) // 10):]
    child = [t.attrs["wall_seconds"] for t in runs]
    print(f"{len(ran)} trials in {elapsed:.1f}s ({reason}; sandbox {search.config.sandbox}): "
          f"{60 * len(ran) / elapsed:.1f} trials/min" + (f", on top of {prefilled + 1} earlier" if prefilled else ""))
    print(f"trial process wall (sandbox + awk): median {statistics.median(child):.3f}s")
    print(f"device idle between trials (engine overhead): median {statistics.median(gaps):.3f}s, "
          f"last tenth {statistics.median(late):.3f}s, max {max(gaps):.3f}s")
    search.close()
    t0, cpu0 = time.time(), _children_cpu()
    subprocess.run([sys.executable, "-m", "evo.cli", "status", "bench", "--root", str(work / "runs")],
                   capture_output=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"evo status on {len(trials)} trials: {time.time() - t0:.2f}s (CPU {_children_cpu() - cpu0:.2f}s, "
          "which other work on the machine does not inflate)")


def prefill(search: Search, count: int) -> None:
    """Add `count` finished trials after the seed: each a child of an earlier trial (the best so far half
    the time) with one knob stepped, a genome no other trial has, committed to the population, and the
    score and record a run of it would have left (the seed's record, with the child's own facts)."""
    seed = search.trials()[0]
    rng = random.Random(0)
    knobs, seen = [(1.0,) * KNOBS], {(1.0,) * KNOBS}
    parents, best = [], 0
    while len(knobs) <= count:
        parent = best if rng.random() < 0.5 else rng.randrange(len(knobs))
        i, step = rng.randrange(KNOBS), rng.choice(STEPS)
        child = knobs[parent][:i] + (round(knobs[parent][i] * step, 6),) + knobs[parent][i + 1:]
        if child in seen:
            continue
        seen.add(child)
        knobs.append(child)
        parents.append(parent)
        best = best if score(knobs[best]) <= score(child) else len(knobs) - 1
    commits = _commit_all(search, [genome_text(k) for k in knobs[1:]], seed.commit, parents)
    template = {k: v for k, v in seed.attrs.items() if k not in ("pid", "usage")}
    rows = []
    for n, (k, parent, commit) in enumerate(zip(knobs[1:], parents, commits), start=1):
        value = score(k)
        rows.append((n, value, {**template, "commit": commit, "tree": genome_hash({"train.py": genome_text(k)}),
                                "description": f"pre-filled child of #{parent}", "rationale": "pre-filled by the bench",
                                "operator": "mutate", "parents": [parent], "proposer": "offline", "kept": False,
                                "log_tail": f"val_bpb: {value}", "metrics.val_bpb": value}))
    _insert_finished(search, rows)
    storage, study_id = search.store.storage, search.store.storage.get_study_id_from_name(search.store.name)
    for n, value, attrs in (rows[0], rows[-1]):  # as Optuna reads them
        t = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, n))
        assert (t.state.name, t.value, t.user_attrs) == ("COMPLETE", value, attrs), t


def _insert_finished(search: Search, rows: list[tuple[int, float, dict]]) -> None:
    """Write finished trials (number, value, user attributes) into the study's tables, as Optuna's
    `study.add_trials` would. Optuna writes each attribute in a query of its own (~70 ms a trial
    here: 10,000 would take 12 minutes); these are the same rows in one transaction. Optuna then
    reads them back above."""
    storage, study_id = search.store.storage, search.store.storage.get_study_id_from_name(search.store.name)
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna stores naive UTC
    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                                     "VALUES (:number, :study, 'COMPLETE', :now, :now)"),
                     [{"number": n, "study": study_id, "now": now} for n, _, _ in rows])
        ids = dict(conn.execute(sqlalchemy.text("SELECT number, trial_id FROM trials WHERE study_id = :study"),
                                {"study": study_id}).all())
        conn.execute(sqlalchemy.text("INSERT INTO trial_values (trial_id, objective, value, value_type) "
                                     "VALUES (:id, 0, :value, 'FINITE')"),
                     [{"id": ids[n], "value": value} for n, value, _ in rows])
        conn.execute(sqlalchemy.text("INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                                     "VALUES (:id, :key, :json)"),
                     [{"id": ids[n], "key": key, "json": json.dumps(v)} for n, _, attrs in rows
                      for key, v in attrs.items()])


def score(knobs: tuple[float, ...]) -> float:
    """What RUN prints for a genome with these knobs."""
    return round(1 + sum((math.log(v) - 0.1 * i) ** 2 for i, v in enumerate(knobs)), 4)


def genome_text(knobs: tuple[float, ...]) -> str:
    return "".join(f"K{i:02d} = {v}\n" for i, v in enumerate(knobs))


def _commit_all(search: Search, texts: list[str], seed_commit: str, parents: list[int]) -> list[str]:
    """Commit each text as train.py, as a child of its parent trial's commit, with the branch the loop
    gives a trial (evo/NAME/NUMBER), all in one `git fast-import`; return the commits in order."""
    stream = []
    for n, (text, parent) in enumerate(zip(texts, parents), start=1):
        data = text.encode()
        origin = f":{parent}" if parent else seed_commit
        stream += [f"commit refs/heads/{search.branch(n)}", f"mark :{n}",
                   f"committer evo <evo@localhost> {1_700_000_000 + n} +0000", "data 9", "pre-fill\n",
                   f"from {origin}", "deleteall", f"M 100644 inline train.py", f"data {len(data)}"]
        stream.append(data.decode())
    marks = Path(search.repo.path) / "bench-marks"
    subprocess.run(["git", f"--git-dir={search.repo.path}", "fast-import", "--quiet", f"--export-marks={marks}"],
                   input="\n".join(stream) + "\n", text=True, check=True, env=git_environment())
    by_mark = dict(line[1:].split() for line in marks.read_text().splitlines())
    marks.unlink()
    return [by_mark[str(n)] for n in range(1, len(texts) + 1)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
