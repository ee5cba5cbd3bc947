"""End-to-end searches on the tiny profile: real git, real Optuna storage, real training, the real CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_trials_match_git, run_evo
from evo import EvolveStrategy, LimitSpec, OfflineProposer, RunOptions, Search, SearchLoop, create_search, parse_devices
from evo.proposers._hyperparams import find_hyperparameters

pytestmark = pytest.mark.slow
BUDGET = "2"


def status_json(project: Path, name: str) -> dict:
    proc = run_evo("status", name, "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def open_search(project: Path, name: str) -> Search:
    return Search.open(name, root=project / "runs")


def assert_git_matches_store(project: Path, name: str) -> None:
    """Every trial's branch points at its commit, whose git parents are its parents' commits."""
    with open_search(project, name) as search:
        assert_trials_match_git(search)


def test_greedy_search_only_ever_breeds_from_the_best_so_far(project):
    proc = run_evo("run", "g", "--profile", "tiny", "--budget", BUDGET, "--trials", "5", "--strategy", "greedy", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stopped: reached 5 trials" in proc.stdout
    summary = status_json(project, "g")
    trials = summary["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
    assert trials[0]["operator"] == "seed" and trials[0]["parents"] == []
    best_so_far, best_trial = None, None
    for t in trials:
        if t["operator"] == "mutate":
            assert t["parents"] == [best_trial], "a greedy child descends from the current best"
            kept = t["status"] == "ok" and t["val_bpb"] < best_so_far
            assert t["kept"] == kept
        if t["status"] == "ok" and (best_so_far is None or t["val_bpb"] < best_so_far):
            best_so_far, best_trial = t["val_bpb"], t["number"]
    assert summary["best"] == best_trial and summary["repo"].endswith("population.git")
    assert_git_matches_store(project, "g")


def test_random_search_mutates_only_the_seed_and_exports_results_tsv(project):
    proc = run_evo("run", "r", "--profile", "tiny", "--budget", BUDGET, "--trials", "4", "--strategy", "random", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = status_json(project, "r")["trials"]
    assert all(t["parents"] == [0] for t in trials[1:])
    tsv = run_evo("export", "r", "--tsv", cwd=project).stdout.splitlines()
    assert tsv[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(tsv) == 5 and all(row.split("\t")[3] in ("keep", "discard", "crash") for row in tsv[1:])
    assert tsv[1].split("\t")[3] == "keep"  # the seed is the baseline every later row is judged against


def _wait_for_running_trial(project: Path, name: str, number: int, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (project / "runs" / name / "search.json").exists():
            try:
                search = open_search(project, name)
                running = {t.number: t for t in search.trials() if t.status == "running"}
                search.close()
            except Exception:  # the store may be mid-creation
                running = {}
            if number in running and running[number].attrs.get("pid"):
                return running[number].attrs
        time.sleep(0.2)
    raise AssertionError(f"trial {number} never started")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_kill_dash_nine_then_resume_finishes_without_losing_or_duplicating_trials(instant_project):
    project = instant_project
    args = [sys.executable, "-m", "evo.cli", "run", "k", "--profile", "tiny", "--budget", "4", "--trials", "4"]
    proc = subprocess.Popen(args, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "EVO_TEST_SLEEP": "3"})
    _wait_for_running_trial(project, "k", 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_search(project, "k") as search:  # what the dead engine left running (the poll above can lag)
        left = {t.number: int(t.attrs["pid"]) for t in search.trials() if t.state == "RUNNING" and t.attrs.get("pid")}
    assert left, "the engine was killed in the middle of a trial"
    deadline = time.time() + 5
    while any(_alive(pid) for pid in left.values()) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in left.values()), "a trial dies with the engine that ran it, before any resume"

    resumed = run_evo("run", "k", "--trials", "4", cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for number in left:
        assert f"trial #{number} was left running" in resumed.stdout

    search = open_search(project, "k")
    trials = search.trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state == "RUNNING"]
    assert sum(1 for t in trials if t.counts) == 4
    interrupted = [t for t in trials if t.status == "interrupted"]
    assert [t.number for t in interrupted] == sorted(left)
    for t in interrupted:
        rerun = [r for r in trials if r.attrs.get("rerun_of") == t.number]
        assert len(rerun) == 1 and rerun[0].commit == t.commit and rerun[0].status == "ok"
    search.close()
    assert_git_matches_store(project, "k")


def test_ctrl_c_stops_promptly_and_the_next_run_resumes(instant_project):
    project = instant_project
    proc = subprocess.Popen([sys.executable, "-m", "evo.cli", "run", "c", "--profile", "tiny", "--budget", "30", "--trials", "3"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EVO_TEST_SLEEP": "600"})
    _wait_for_running_trial(project, "c", 0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "stopping" in err
    search = open_search(project, "c")
    seed = search.trials()[0]
    assert seed.status == "interrupted" and seed.state == "FAIL"
    search.close()
    resumed = run_evo("run", "c", "--trials", "1", cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = status_json(project, "c")["trials"]
    assert [t["status"] for t in trials] == ["interrupted", "ok"] and trials[1]["operator"] == "seed"


def test_reevaluation_ranks_the_best_by_its_mean_over_new_seeds(project):
    proc = run_evo("run", "re", "--profile", "tiny", "--budget", BUDGET, "--trials", "3", "--reeval", "2",
                   "--strategy", "greedy", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = status_json(project, "re")
    trials = summary["trials"]
    reevals = [t for t in trials if t["operator"] == "reeval"]
    assert [(t["parents"], t["seed"]) for t in reevals] == [([0], 1), ([0], 2)]
    values = [trials[0]["val_bpb"]] + [t["val_bpb"] for t in reevals]
    assert summary["best"] == 0
    assert summary["best_val_bpb"] == pytest.approx(sum(values) / 3)
    assert summary["best_spread"] is not None and summary["best_spread"] > 0


def test_infeasible_trials_stay_on_record_but_are_never_parents_or_best(project):
    proc = run_evo("run", "v", "--profile", "tiny", "--budget", BUDGET, "--trials", "3", "--max-vram-gb", "0.001", cwd=project)
    assert proc.returncode == 1
    assert "cannot plan a child" in proc.stdout
    summary = status_json(project, "v")
    assert summary["best"] is None
    assert [t["status"] for t in summary["trials"]] == ["ok"]
    search = open_search(project, "v")
    assert search.trials()[0].constraints["vram_gb"] > 0
    search.close()


def test_status_show_and_best_tell_the_story(project):
    proc = run_evo("run", "s", "--profile", "tiny", "--budget", BUDGET, "--trials", "2", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = run_evo("status", cwd=project).stdout  # the only search: no name needed
    assert "search s" in text and "best: val_bpb" in text and "2 finished" in text
    shown = run_evo("show", "s", "1", cwd=project)
    assert shown.returncode == 0
    assert "operator: mutate of #0" in shown.stdout and "diff against parent" in shown.stdout and "val_bpb:" in shown.stdout
    best = run_evo("best", "s", "--out", "bestdir", cwd=project)
    assert best.returncode == 0 and (project / "bestdir" / "train.py").exists()
    assert find_hyperparameters((project / "bestdir" / "train.py").read_text(), "tiny")


@pytest.mark.parametrize("args,message", [
    (["run", "b1", "--trials", "0"], "expected a number >= 1"),
    (["run", "b2", "--devices", "gpu7", "--profile", "tiny"], "bad device 'gpu7'"),
    (["run", "b3", "--profile", "huge"], "invalid choice"),
    (["run", "b4", "--mutable", "prepare.py", "--profile", "tiny"], "prepare.py is the fixed harness"),
    (["run", "b5", "--proposer", "telepathy", "--profile", "tiny"], "unknown proposer"),
    (["run", "bad name!", "--profile", "tiny"], "bad search name"),
    (["status", "nope"], "no search named 'nope'"),
    (["show", "nope", "x"], "trial number must be a whole number"),
    (["run", "b6", "--budget", "-3"], "expected a positive number"),
    (["run", "b7", "--crossover-rate", "2"], "probability in [0, 1]"),
])
def test_bad_arguments_exit_2_with_one_clear_line(project, args, message):
    proc = run_evo(*args, cwd=project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (project / "runs" / args[1] / "study.db").exists() or args[0] == "status"


def test_fixed_settings_cannot_change_on_resume_and_unknown_trials_are_reported(project):
    assert run_evo("init", "f", "--profile", "tiny", "--budget", BUDGET, cwd=project).returncode == 0
    again = run_evo("init", "f", "--profile", "tiny", cwd=project)
    assert again.returncode == 2 and "already exists" in again.stderr
    changed = run_evo("run", "f", "--profile", "cpu", "--trials", "1", cwd=project)
    assert changed.returncode == 2 and "--profile is fixed at 'tiny'" in changed.stderr
    missing = run_evo("show", "f", "7", cwd=project)
    assert missing.returncode == 2 and "has no trial #7" in missing.stderr


# -- loop semantics on an instant genome (no training: every second here is the engine's) ----------

def test_concurrent_cpu_slots_run_trials_side_by_side(instant_project):
    (instant_project / "train.py").write_text((instant_project / "train.py").read_text().replace(
        "def main():", "def main():\n    import time; time.sleep(1.5)"))
    search = create_search("par", root=instant_project / "runs", project=instant_project, profile="tiny", budget=1)
    SearchLoop(search, EvolveStrategy(), OfflineProposer(), parse_devices("cpu:2"),
               RunOptions(limits=LimitSpec(trials=5))).run()
    trials = [t for t in search.trials() if t.operator != "seed"]
    overlapping = [(a.number, b.number) for a in trials for b in trials
                   if a.number < b.number and a.started < b.finished and b.started < a.finished]
    assert overlapping, "with two CPU slots, children run at the same time"
    assert {t.attrs.get("pid") for t in trials} and len({t.attrs["pid"] for t in trials}) == len(trials)
    search.close()


def test_prune_stops_children_clearly_behind_and_never_breeds_from_them(instant_project):
    proc = run_evo("run", "p", "--profile", "tiny", "--budget", "1", "--trials", "16", "--prune", "--strategy", "greedy",
                   cwd=instant_project, env={"EVO_TEST_STEP_SLEEP": "0.1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    search = open_search(instant_project, "p")
    trials = search.trials()
    pruned = [t for t in trials if t.status == "pruned"]
    assert pruned and all(t.state == "PRUNED" and t.value is None for t in pruned)
    assert all(t.number >= 5 for t in pruned)        # never before five trials have finished
    for t in pruned:
        log = search.paths.trial(t.number).run_log.read_text()
        assert "[evo] stopped: pruned" in log and "val_bpb" not in log
    parents = {p for t in trials for p in t.parents}
    assert not parents & {t.number for t in pruned}
    search.close()


def test_a_search_without_a_sandbox_runs_and_says_so_everywhere(instant_project):
    proc = run_evo("run", "ns", "--profile", "tiny", "--budget", "1", "--trials", "2", "--sandbox", "none",
                   cwd=instant_project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = run_evo("status", "ns", cwd=instant_project).stdout
    assert "WARNING: trials run WITHOUT A SANDBOX" in status
    shown = run_evo("show", "ns", "1", cwd=instant_project).stdout
    assert "ran in sandbox none (NO SANDBOX)" in shown and "scored by self-reported" in shown
    with open_search(instant_project, "ns") as search:
        assert all(t.attrs["provenance"]["sandbox"] == "none" for t in search.trials())
