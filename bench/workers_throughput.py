"""Throughput of 1, 2 and 3 workers on one shared search, and what the engine spends per trial.

    python bench/workers_throughput.py                       # instant genome: the engine alone
    python bench/workers_throughput.py --genome real --trials 9 --budget 2   # the real tiny train.py

Starts a throw-away PostgreSQL cluster (as tests/services.py does) and a bare git remote
(file://, or git:// through `git daemon` with --git-daemon), then for each worker count
creates a search with `evo init ... --storage --remote` and runs that many `evo worker`
processes, each in its own folder, until the search has --trials trials. Each worker runs
under a shim that counts, in that process only, the SQL statements it sends (SQLAlchemy
events) and the seconds it spends in them, in git push/fetch, and in trials.

Prints per worker count:
  trials/min          finished trials per minute, first trial start to last trial end
  engine s/trial      per worker, the device's idle time between one trial process ending
                      and the next starting (finishing, planning, proposing, committing,
                      pushing, claiming, checking out), median over all gaps
  db s/trial, git s/trial   seconds in SQL statements and in git push/fetch per trial
  claim wait s        seconds per trial spent waiting for the claim (another worker held it)
  db calls/trial      SQL statements per trial (all threads), and those of the heartbeat thread
  worker CPU s/trial  CPU seconds of the worker processes per trial (start-up and data checks
                      included), which other work on the machine does not inflate

On 2 CPU cores the real genome saturates the cores with 2+ workers, so trials/min stops
growing there; the engine's seconds per trial are the figure that must stay small.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def shim(trace: str, argv: list[str]) -> int:
    """Run `evo` with `argv` in this process, counting what it spends; write the counts to `trace`."""
    import sqlalchemy.event
    from sqlalchemy.engine import Engine

    from evo.cli import main
    from evo.runner import TrialRunner
    from population.genomes import GenomeRepo

    counts = {"sql": 0, "sql_heartbeat": 0, "sql_seconds": 0.0, "lock_seconds": 0.0, "git": 0, "git_seconds": 0.0,
              "runs": []}
    started: dict[int, float] = {}

    @sqlalchemy.event.listens_for(Engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        started[id(cursor)] = time.perf_counter()

    @sqlalchemy.event.listens_for(Engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        seconds = time.perf_counter() - started.pop(id(cursor), time.perf_counter())
        if "pg_advisory_xact_lock" in statement:  # waiting for the claim, not talking to the database
            counts["lock_seconds"] += seconds
            return
        counts["sql"] += 1
        counts["sql_heartbeat"] += threading.current_thread().name == "heartbeat"
        counts["sql_seconds"] += seconds

    def timed(method, kind):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                if kind == "run":
                    counts["runs"].append((t0, time.perf_counter()))
                else:
                    counts["git"] += 1
                    counts["git_seconds"] += time.perf_counter() - t0
        return wrapper

    GenomeRepo.push = timed(GenomeRepo.push, "git")
    GenomeRepo.fetch = timed(GenomeRepo.fetch, "git")
    TrialRunner.run = timed(TrialRunner.run, "run")
    try:
        return main(argv)
    finally:
        counts["cpu_seconds"] = time.process_time()  # this process alone: no trial, no git, no database server
        Path(trace).write_text(json.dumps(counts))


def evo(*args: str, cwd: Path, env: dict) -> None:
    proc = subprocess.run([sys.executable, "-m", "evo.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evo {' '.join(args)} failed: {proc.stderr.strip()}")


def one_round(n: int, args, pg, remote_url: str, project: Path, env: dict) -> dict:
    name = f"w{n}"
    url = pg.create_database(name)
    evo("init", name, "--profile", "tiny", "--budget", str(args.budget), "--storage", url, "--remote", remote_url,
        "--root", f"hosts{n}/0", cwd=project, env=env)
    procs, traces = [], []
    for i in range(n):
        trace = project / f"trace-{n}-{i}.json"
        traces.append(trace)
        argv = [sys.executable, __file__, "_worker", str(trace), "worker", name, "--storage", url, "--remote",
                remote_url, "--root", f"hosts{n}/{i}", "--devices", "cpu", "--trials", str(args.trials), "--quiet"]
        procs.append(subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a worker failed: {err.strip()}")
    from population import Search

    with Search.open(name, root=project / f"hosts{n}" / "0") as search:
        trials = search.trials()
    counted = [t for t in trials if t.counts]
    span = (max(t.finished for t in trials) - min(t.started for t in trials)).total_seconds()
    loads = [json.loads(t.read_text()) for t in traces]
    gaps = []
    for load in loads:
        runs = sorted(load["runs"])
        gaps += [b[0] - a[1] for a, b in zip(runs, runs[1:])]
    return {"workers": n, "trials": len(counted), "per_minute": 60 * len(counted) / span,
            "engine_median": statistics.median(gaps) if gaps else float("nan"),
            "engine_mean": statistics.fmean(gaps) if gaps else float("nan"),
            "db_seconds": sum(x["sql_seconds"] for x in loads) / len(trials),
            "lock_seconds": sum(x["lock_seconds"] for x in loads) / len(trials),
            "cpu_seconds": sum(x["cpu_seconds"] for x in loads) / len(trials),
            "git_seconds": sum(x["git_seconds"] for x in loads) / len(trials),
            "git_calls": sum(x["git"] for x in loads) / len(trials),
            "sql": sum(x["sql"] for x in loads) / len(trials),
            "sql_heartbeat": sum(x["sql_heartbeat"] for x in loads) / len(trials),
            "run_seconds": statistics.median(b - a for x in loads for a, b in x["runs"])}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_worker":
        raise SystemExit(shim(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3", help="worker counts to measure (default: 1,2,3)")
    parser.add_argument("--trials", type=int, default=30, help="trials per search (default: 30)")
    parser.add_argument("--genome", choices=("instant", "real"), default="instant",
                        help="instant: a stand-in that scores its knobs at once; real: the project's train.py")
    parser.add_argument("--sleep", type=float, default=1.0,
                        help="instant genome: seconds each trial sleeps, so trials do not compete for the CPU")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of training per trial (default: 1)")
    parser.add_argument("--git-daemon", action="store_true", help="reach the remote over git:// rather than file://")
    args = parser.parse_args()

    from services import GitDaemon, Postgres, Unavailable

    work = Path(tempfile.mkdtemp(prefix="evo-workers-"))
    project = work / "project"
    project.mkdir()
    for f in ("prepare.py", "program.md", "train.py"):
        shutil.copyfile(ROOT / f, project / f)
    if args.genome == "instant":
        # With a harness that has no scorer (as tests' instant_project): the trusted scorer of the
        # real prepare.py would wait for a model the stand-in never hands over, and fail the seed.
        shutil.copyfile(ROOT / "tests" / "data" / "instant_genome.py", project / "train.py")
        shutil.copyfile(ROOT / "tests" / "data" / "instant_prepare.py", project / "prepare.py")
    env = {**os.environ, "EVO_CACHE": os.environ.get("EVO_CACHE", str(work / "cache")), "EVO_PROFILE": "tiny",
           "EVO_TEST_SLEEP": str(args.sleep if args.genome == "instant" else 0)}
    try:
        pg = Postgres().start()
    except Unavailable as e:
        raise SystemExit(f"cannot start PostgreSQL: {e}")
    daemon = None
    try:
        subprocess.run([sys.executable, str(ROOT / "prepare.py"), "--profile", "tiny"], env=env, check=True,
                       capture_output=True, cwd=project)
        print(f"{args.genome} genome, {args.trials} trials per search, budget {args.budget:g}s"
              + (f", each trial sleeps {args.sleep:g}s" if args.genome == "instant" else "")
              + f"; {os.cpu_count()} CPU cores; remote over {'git://' if args.git_daemon else 'file://'}")
        print(f"{'workers':>7} {'trials/min':>10} {'engine s/trial (median, mean)':>30} {'db s/trial':>10} "
              f"{'claim wait s':>12} {'git s/trial':>11} {'db calls/trial (heartbeat)':>27} {'trial run s':>11} "
              f"{'worker CPU s/trial':>18}")
        for n in (int(x) for x in args.workers.split(",")):
            served = work / f"served{n}"
            served.mkdir()
            subprocess.run(["git", "init", "--quiet", "--bare", str(served / "population.git")], check=True)
            if args.git_daemon:
                daemon = GitDaemon(served)
                remote = daemon.url("population.git")
            else:
                remote = f"file://{served / 'population.git'}"
            r = one_round(n, args, pg, remote, project, env)
            if daemon:
                daemon.stop()
                daemon = None
            print(f"{r['workers']:>7} {r['per_minute']:>10.1f} {r['engine_median']:>14.3f} {r['engine_mean']:>15.3f} "
                  f"{r['db_seconds']:>10.3f} {r['lock_seconds']:>12.3f} {r['git_seconds']:>11.3f} {r['sql']:>17.1f} ({r['sql_heartbeat']:.1f}) "
                  f"{r['run_seconds']:>11.2f} {r['cpu_seconds']:>18.3f}", flush=True)
    finally:
        if daemon:
            daemon.stop()
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
