"""One search on many hosts: a real PostgreSQL study, a real git remote (git daemon and file://),
workers in separate folders as separate processes, and one of them killed with SIGKILL.

All workers run on this machine, each with its own folder standing in for a host's disk.
The genome is the instant one (it scores its knobs at once; EVO_TEST_SLEEP stretches a
trial), so every second here is the engine's, the database's or git's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_evo
from services import GitDaemon, Postgres, Unavailable, free_port

pytestmark = pytest.mark.slow
GRACE = ["--heartbeat", "1", "--grace", "4"]


@pytest.fixture(scope="module")
def postgres():
    """One PostgreSQL cluster for the module; skipped, with the reason, where it cannot start."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]'")
    try:
        pg = Postgres().start()
    except Unavailable as e:
        pytest.skip(f"cannot start PostgreSQL: {e}")
    yield pg
    pg.destroy()


@pytest.fixture
def database(postgres, request):
    """A fresh database for one test."""
    return postgres.create_database(request.node.name.lower()[:40])


def worker(project: Path, host: str, name: str, *args: str, sleep: float = 0.0) -> subprocess.Popen:
    """Start `evo worker` as its own process, in the folder of host `host`."""
    argv = [sys.executable, "-m", "evo.cli", "worker", name, "--root", f"hosts/{host}", "--devices", "cpu", *args]
    log = open(project / f"{host}.log", "w")
    return subprocess.Popen(argv, cwd=project, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "EVO_TEST_SLEEP": str(sleep)})


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    """Wait for the workers to end; on a timeout kill them all (a hung worker must not outlive its test)."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        raise


def log_of(project: Path, host: str) -> str:
    return (project / f"{host}.log").read_text()


def open_on(project: Path, host: str, name: str):
    from population import Search

    return Search.open(name, root=project / "hosts" / host)


def status_on(project: Path, host: str, name: str) -> dict:
    proc = run_evo("status", name, "--json", "--root", f"hosts/{host}", cwd=project)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def remote_has(remote: Path, commit: str) -> bool:
    return subprocess.run(["git", f"--git-dir={remote}", "cat-file", "-e", f"{commit}^{{commit}}"]).returncode == 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_three_workers_share_one_search_through_postgresql_and_a_git_daemon(instant_project, database, tmp_path):
    project = instant_project
    served = tmp_path / "served"
    subprocess.run(["git", "init", "--quiet", "--bare", str(served / "population.git")], check=True)
    daemon = GitDaemon(served)
    try:
        remote = daemon.url("population.git")
        init = run_evo("init", "s", "--profile", "tiny", "--budget", "1", "--storage", database, "--remote", remote,
                       *GRACE, "--root", "hosts/a", cwd=project)
        assert init.returncode == 0, init.stderr
        procs = [worker(project, h, "s", "--storage", database, "--remote", remote, "--trials", "24",
                        "--crossover-rate", "0.5", sleep=0.3) for h in ("a", "b", "c")]
        finish(procs)
        for h, p in zip("abc", procs):
            assert p.returncode == 0, log_of(project, h)
            assert "stopped: reached 24 trials" in log_of(project, h)

        with open_on(project, "a", "s") as search:
            trials = search.trials()
        assert [t.number for t in trials] == list(range(24)), "every trial number once"
        assert sum(1 for t in trials if t.counts) == 24 and not [t for t in trials if t.state == "RUNNING"]
        assert {t.attrs["worker"].rsplit("/", 2)[-2] for t in trials} == {"a", "b", "c"}, "every worker took trials"
        assert all(remote_has(served / "population.git", t.commit) for t in trials if t.commit)

        # The same lineage, read from every host's folder.
        views = [status_on(project, h, "s") for h in "abc"]
        assert views[0]["trials"] == views[1]["trials"] == views[2]["trials"]
        assert views[0]["best"] == views[1]["best"] is not None
        exports = {run_evo("export", "s", "--root", f"hosts/{h}", cwd=project).stdout for h in "abc"}
        assert len(exports) == 1 and len(exports.pop().splitlines()) == 25

        # A crossover of parents trained on two different hosts is a merge commit of both, on every host.
        worker_of = {t.number: t.attrs["worker"] for t in trials}
        crosses = [t for t in trials if t.operator == "crossover" and t.status == "ok"
                   and worker_of[t.parents[0]] != worker_of[t.parents[1]]]
        assert crosses, [(t.number, t.operator, t.parents) for t in trials]
        cross = crosses[0]
        for h in "abc":
            with open_on(project, h, "s") as search:
                search.sync()
                assert search.repo.parents(cross.commit) == [trials[p].commit for p in cross.parents]
                assert search.repo.resolve(f"refs/heads/{search.branch(cross.number)}") == cross.commit

        # `evo show` on a host that did not run the trial: the diff from git, and where its log is.
        elsewhere = next(h for h in "abc" if not worker_of[cross.number].endswith(f"/hosts/{h}/s"))
        shown = run_evo("show", "s", str(cross.number), "--root", f"hosts/{elsewhere}", cwd=project)
        assert shown.returncode == 0, shown.stderr
        assert "diff against parent" in shown.stdout and "the full log is on" in shown.stdout
    finally:
        daemon.stop()


def _wait_for_running(project: Path, host: str, name: str, timeout: float = 120):
    """The first trial the worker in `host` runs, once its training process has started."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (project / "hosts" / host / name / "search.json").exists():
            with open_on(project, host, name) as search:
                mine = [t for t in search.trials() if t.state == "RUNNING" and t.attrs.get("pid")
                        and t.attrs.get("worker", "").endswith(f"/hosts/{host}/{name}")]
            if mine:
                return mine[0]
        time.sleep(0.2)
    raise AssertionError(f"no trial ever ran on {host}:\n" + log_of(project, host))


def test_a_worker_killed_mid_trial_leaves_its_trial_to_another_after_the_grace_period(instant_project, database,
                                                                                      tmp_path):
    project, remote = instant_project, f"file://{tmp_path / 'population.git'}"
    init = run_evo("init", "k", "--profile", "tiny", "--budget", "1", "--storage", database, "--remote", remote,
                   *GRACE, "--root", "hosts/a", cwd=project)
    assert init.returncode == 0, init.stderr
    common = ["--storage", database, "--remote", remote, "--trials", "12"]
    steady = [worker(project, "a", "k", *common, sleep=0.3), worker(project, "b", "k", *common, sleep=0.3)]
    doomed = worker(project, "c", "k", *common, sleep=600)  # its trials would run for ten minutes
    victim = _wait_for_running(project, "c", "k")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    finish(steady)
    for h, p in zip("ab", steady):
        assert p.returncode == 0, log_of(project, h)

    with open_on(project, "a", "k") as search:
        trials = search.trials()
    numbers = [t.number for t in trials]
    assert numbers == sorted(set(numbers)) and not [t for t in trials if t.state == "RUNNING"]
    assert sum(1 for t in trials if t.counts) == 12, [(t.number, t.status) for t in trials]
    assert next(t for t in trials if t.number == victim.number).status == "interrupted"
    reruns = [t for t in trials if t.attrs.get("rerun_of") == victim.number]
    assert len(reruns) == 1 and reruns[0].status == "ok" and reruns[0].commit == victim.commit
    assert not reruns[0].attrs["worker"].endswith("/hosts/c/k"), "another worker re-ran it"
    assert (reruns[0].started - next(t for t in trials if t.number == victim.number).started).total_seconds() >= 4
    recovered = [h for h in "ab" if f"trial #{victim.number} was left running by a stopped worker" in log_of(project, h)]
    assert len(recovered) == 1, "exactly one worker took the stale trial over"
    assert not _alive(int(victim.attrs["pid"])), "the dead worker's training process must not keep running"


def test_a_worker_that_cannot_reach_the_database_or_the_remote_exits_with_one_line(instant_project, database,
                                                                                    tmp_path):
    project, remote = instant_project, str(tmp_path / "population.git")
    nowhere = f"postgresql://evo@127.0.0.1:{free_port()}/none"
    cases = [
        (["init", "u", "--profile", "tiny", "--storage", nowhere, "--remote", remote], "cannot reach the database"),
        (["worker", "u", "--storage", nowhere, "--remote", remote], "cannot reach the database"),
    ]
    for args, message in cases:
        proc = run_evo(*args, "--root", "hosts/x", cwd=project)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "127.0.0.1" in lines[0], proc.stderr
    assert not (project / "hosts" / "x" / "u" / "search.json").exists()

    init = run_evo("init", "u", "--profile", "tiny", "--budget", "1", "--storage", database, "--remote", remote,
                   "--root", "hosts/a", cwd=project)
    assert init.returncode == 0, init.stderr
    lost = f"git://127.0.0.1:{free_port()}/population.git"
    proc = run_evo("worker", "u", "--storage", database, "--remote", lost, "--root", "hosts/y", cwd=project)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "cannot reach the git remote" in lines[0], proc.stderr
    assert not (project / "hosts" / "y" / "u" / "search.json").exists()


def test_a_worker_waits_out_a_database_restart_and_stops_with_one_line_when_it_stays_away(instant_project, postgres,
                                                                                          database, tmp_path):
    project, remote = instant_project, str(tmp_path / "population.git")
    init = run_evo("init", "o", "--profile", "tiny", "--budget", "1", "--storage", database, "--remote", remote,
                   *GRACE, "--root", "hosts/a", cwd=project)
    assert init.returncode == 0, init.stderr
    patient = worker(project, "a", "o", "--storage", database, "--remote", remote, "--trials", "8", sleep=0.5)
    _wait_for_running(project, "a", "o")
    postgres.stop()
    time.sleep(3)
    postgres.start()
    finish([patient])
    text = log_of(project, "a")
    assert patient.returncode == 0, text
    assert "lost the database" in text and "is back; carrying on" in text and "stopped: reached 8 trials" in text

    impatient = worker(project, "b", "o", "--storage", database, "--remote", remote, "--trials", "30",
                       "--patience", "2", sleep=0.5)
    _wait_for_running(project, "b", "o")
    postgres.stop()
    try:
        finish([impatient], timeout=60)
    finally:
        postgres.start()
    errors = [line for line in log_of(project, "b").splitlines() if line.startswith("evo worker: error:")]
    assert impatient.returncode == 1
    assert len(errors) == 1 and "lost the database" in errors[0] and "for 2 s" in errors[0], log_of(project, "b")


def test_a_stale_trial_is_failed_by_exactly_one_of_the_workers_racing_for_it(database):
    """Two workers find the same silent trial at once: one fails it (and will re-run it), the other does not;
    its owner, back from the dead, then learns it must not tell its result."""
    import threading

    from population.store import TrialStore

    owner = TrialStore.create(database, "race", {}, heartbeat=1, grace=2)
    number = owner.start({"operator": "seed", "worker": "gone:/w"})   # one heartbeat, then silence
    time.sleep(3.5)
    racers = [TrialStore.open(database, "race", heartbeat=1, grace=2) for _ in range(2)]
    barrier, failed = threading.Barrier(2), []

    def race(store):
        barrier.wait()
        failed.append([t.number for t in store.orphans.fail_stale()])

    threads = [threading.Thread(target=race, args=(s,)) for s in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(failed) == [[], [number]]
    (record,) = racers[0].trials()
    assert record.state == "FAIL" and record.status == "interrupted" and not record.counts
    assert owner.finish(number, status="ok", value=1.0) is False
    assert racers[1].trials()[0].status == "interrupted"
    for store in (owner, *racers):
        store.close()


def test_two_workers_never_train_the_same_genome(instant_project, database, tmp_path, monkeypatch):
    """Every child is the same genome: whichever worker records it first trains it, the other records a
    duplicate (of a trial running on another host, or finished there), never a second training."""
    import threading

    from evo import (GreedyStrategy, LimitSpec, Proposal, Proposer, RunOptions, SearchLoop, create_search, join_search,
                     parse_devices)
    from population import Search

    class SameChild(Proposer):
        name = "same-child"

        def mutate(self, parent, ctx):
            return Proposal({"train.py": parent.files["train.py"].replace("LR = 0.04", "LR = 0.05")}, "LR -> 0.05")

    monkeypatch.setenv("EVO_TEST_SLEEP", "1")
    remote = str(tmp_path / "population.git")
    create_search("d", root=tmp_path / "a", project=instant_project, profile="tiny", budget=1, storage=database,
                  remote=remote, heartbeat=1, grace=4).close()
    join_search("d", root=tmp_path / "b", storage=database, remote=remote).close()
    searches = [Search.open("d", root=tmp_path / h, worker=True) for h in "ab"]
    loops = [SearchLoop(s, GreedyStrategy(), SameChild(), parse_devices("cpu"), RunOptions(limits=LimitSpec(trials=8)))
             for s in searches]
    threads = [threading.Thread(target=loop.run) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    trials = searches[0].trials()
    for s in searches:
        s.close()
    assert sum(1 for t in trials if t.counts) == 8 and not [t for t in trials if t.state == "RUNNING"]
    trained = [t for t in trials if t.status == "ok"]
    assert [t.operator for t in trained] == ["seed", "mutate"], [(t.number, t.operator, t.status) for t in trials]
    assert all(t.status == "duplicate" and t.attrs["duplicate_of"] in {x.number for x in trained}
               for t in trials if t not in trained)
    assert {t.attrs["worker"] for t in trials} == {s.worker for s in (l.hosts for l in loops)}, "both took trials"


def test_a_database_password_reaches_no_file_log_or_study(instant_project, database, tmp_path):
    """A password given in --storage lives in the memory of the command given it: not in any host's folder,
    not in a log, not anywhere in the database. (The test cluster trusts local users: any password works.)"""
    import uuid

    import psycopg

    project, remote = instant_project, str(tmp_path / "population.git")
    secret = f"pw-{uuid.uuid4().hex}"
    with_password = database.replace("postgresql://evo@", f"postgresql://evo:{secret}@")
    assert secret in with_password
    init = run_evo("init", "p", "--profile", "tiny", "--budget", "1", "--storage", with_password, "--remote", remote,
                   "--root", "hosts/a", cwd=project)
    assert init.returncode == 0, init.stderr
    common = ["--storage", with_password, "--remote", remote, "--trials", "4"]
    finish([worker(project, h, "p", *common) for h in "ab"])   # a resumes its folder, b joins
    again = worker(project, "a", "p", "--trials", "5")          # no password given: PGPASSWORD or ~/.pgpass would hold it
    finish([again])
    assert again.returncode == 0 and "stopped: reached 5 trials" in log_of(project, "a"), log_of(project, "a")
    printed = init.stdout + init.stderr + "".join(log_of(project, h) for h in "ab")
    assert secret not in printed
    leaks = [str(p) for p in (project / "hosts").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    with psycopg.connect(database) as conn:
        tables = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = 'public'")]
        rows = [(t, row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')]
    assert len(rows) > 20 and not [r for r in rows if secret in repr(r)], "the study holds the password"
    config = json.loads((project / "hosts" / "a" / "p" / "search.json").read_text())
    assert config["storage"] == database  # the URL without its password, enough with PGPASSWORD or ~/.pgpass


def test_workers_waiting_while_another_host_runs_the_seed_keep_waiting_and_all_reach_the_limit(instant_project,
                                                                                            database, tmp_path):
    """Workers that join while another host trains the seed have no parent yet and nothing of their own to
    run: they must wait for it, then work, and every one must stop at the trial limit (a worker whose
    view of the trials is a few seconds old used to see the seed running, then nothing running in the
    gap before that host's next trial, and quit with "nothing left to plan")."""
    project, remote = instant_project, str(tmp_path / "population.git")
    init = run_evo("init", "w", "--profile", "tiny", "--budget", "1", "--storage", database, "--remote", remote,
                   "--heartbeat", "5", "--grace", "30", "--root", "hosts/a", cwd=project)
    assert init.returncode == 0, init.stderr
    common = ["--storage", database, "--remote", remote, "--trials", "10"]
    first = worker(project, "a", "w", *common, sleep=3)
    seed = _wait_for_running(project, "a", "w")
    assert seed.operator == "seed"
    procs = [first] + [worker(project, h, "w", *common, sleep=0.5) for h in "bc"]
    finish(procs)
    for h, p in zip("abc", procs):
        assert p.returncode == 0 and "stopped: reached 10 trials" in log_of(project, h), log_of(project, h)
    with open_on(project, "a", "w") as search:
        trials = search.trials()
    assert sum(1 for t in trials if t.counts) == 10 and not [t for t in trials if t.state == "RUNNING"]
    assert {t.attrs["worker"].rsplit("/", 2)[-2] for t in trials} == {"a", "b", "c"}, "every worker took trials"
