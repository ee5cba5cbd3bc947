"""What a user typed is neither forgotten nor ignored (issue 18): a trial limit stays the search's,
a flag given on resume is refused or takes effect, a bad path is one line before anything
is made, and exit codes and advice say what happened and what works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import run_evo
from population.search import Search

RUN = ("--profile", "tiny", "--budget", "1")


def one_line_error(proc, *words: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def counted(project, name: str) -> int:
    with Search.open(name, root=project / "runs") as search:
        return sum(1 for t in search.trials() if t.counts)


# -- a trial limit is the search's until changed ------------------------------------------------

def test_a_trial_limit_given_to_run_holds_for_later_runs_until_changed_or_lifted(instant_project):
    first = run_evo("run", "cc", *RUN, "--trials", "2", cwd=instant_project)
    assert first.returncode == 0 and counted(instant_project, "cc") == 2, first.stdout + first.stderr
    # --hours only bounds a run that forgot the limit (it would run on until then).
    again = run_evo("run", "cc", "--hours", "0.002", cwd=instant_project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reached 2 trials" in again.stdout and counted(instant_project, "cc") == 2
    raised = run_evo("run", "cc", "--trials", "3", cwd=instant_project)
    assert raised.returncode == 0 and "reached 3 trials" in raised.stdout and counted(instant_project, "cc") == 3
    kept = run_evo("run", "cc", "--hours", "0.002", cwd=instant_project)
    assert "reached 3 trials" in kept.stdout and counted(instant_project, "cc") == 3
    lifted = run_evo("run", "cc", "--trials", "none", "--hours", "0.0001", cwd=instant_project)
    assert lifted.returncode == 0, lifted.stdout + lifted.stderr
    assert "h limit" in lifted.stdout and "reached 3 trials" not in lifted.stdout
    assert "--trials N|none" in run_evo("run", "--help", cwd=instant_project).stdout


# -- flags on resume: refused when fixed, taking effect when not ---------------------------------

@pytest.mark.parametrize("flags,words", [
    (["--seed", "3"], ["--seed is fixed at 0"]),
    (["--sandbox", "bwrap"], ["--sandbox is fixed at 'none'"]),
    (["--storage", "sqlite:///elsewhere.db"], ["--storage is fixed at", "study.db"]),
    (["--heartbeat", "5"], ["--heartbeat is fixed at 10"]),
    (["--allow-network"], ["--allow-network is fixed at False"]),
    (["--read", "."], ["--read is fixed at []"]),
    (["--project", "/"], ["--project is fixed at"]),
])
def test_a_creation_flag_given_on_resume_is_refused_unless_it_says_what_the_search_has(instant_project, flags, words):
    assert run_evo("init", "fx", *RUN, "--sandbox", "none", cwd=instant_project).returncode == 0
    proc = run_evo("run", "fx", "--trials", "1", *flags, cwd=instant_project)
    one_line_error(proc, *words, "drop the flag")
    assert counted(instant_project, "fx") == 0
    same = run_evo("run", "fx", "--trials", "1", "--seed", "0", "--sandbox", "none", "--project", ".",
                   "--heartbeat", "10", cwd=instant_project)
    assert same.returncode == 0, same.stdout + same.stderr


def test_a_new_cache_dir_given_on_resume_is_used_from_then_on(project, tmp_path):
    """The real harness: its data preparation fills the cache the search names."""
    assert run_evo("init", "cd", *RUN, cwd=project).returncode == 0
    cache = tmp_path / "new-cache"
    proc = run_evo("run", "cd", "--trials", "1", "--cache-dir", str(cache), cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((project / "runs" / "cd" / "search.json").read_text())["cache_dir"] == str(cache)
    assert any(p.is_file() for p in cache.rglob("*")), "the run did not prepare its data in the new cache"


def test_run_help_says_which_flags_are_fixed_and_which_may_change(instant_project):
    text = " ".join(run_evo("run", "--help", cwd=instant_project).stdout.split())
    assert "fixed when the search is created" in text and "except --cache-dir, which may change" in text


def test_a_command_flag_on_a_harness_search_says_what_the_search_is(instant_project, tmp_path):
    assert run_evo("init", "live", *RUN, cwd=instant_project).returncode == 0
    proc = run_evo("run", "live", "--project", str(instant_project), "--run", "python bench.py", "--trials", "1",
                   cwd=instant_project)
    line = one_line_error(proc, "runs evoresearch's harness", "drop --run", "new name")
    assert "None" not in line


# -- paths: checked first, one line, nothing made ------------------------------------------------

def test_a_bad_cache_dir_is_refused_before_the_search_is_created(project):
    (project / "afile").write_text("")
    for bad in ("/proc/nope/cache", "afile"):
        proc = run_evo("run", "bc", *RUN, "--trials", "1", "--cache-dir", bad, cwd=project)
        one_line_error(proc, "--cache-dir", "name ")
        assert not (project / "runs" / "bc").exists()


def test_bad_paths_are_one_line_and_create_nothing(instant_project):
    (instant_project / "afile").write_text("")
    assert run_evo("run", "p", *RUN, "--trials", "1", cwd=instant_project).returncode == 0
    for args, words in ((["run", "w", *RUN, "--root", "/proc/nope"], ["--root /proc/nope", "cannot create"]),
                        (["run", "w", *RUN, "--root", "afile"], ["--root", "afile", "is a file"]),
                        (["run", "w", *RUN, "--project", "/nonexistent"], ["--project /nonexistent", "no such folder"]),
                        (["best", "p", "--out", "/proc/x"], ["--out /proc/x", "cannot create"]),
                        (["export", "p", "--out", "/proc/x/y.tsv"], ["--out /proc/x/y.tsv", "/proc/x does not exist"]),
                        (["export", "p", "--out", "runs"], ["--out runs", "is a folder"]),
                        (["report", "p", "--out", "/proc/x"], ["--out /proc/x", "cannot create"])):
        one_line_error(run_evo(*args, cwd=instant_project), *words)
    assert not (instant_project / "runs" / "w").exists() and not (instant_project / "runs" / "p" / "report").exists()


def test_a_full_disk_is_one_line_whether_evo_writes_a_file_or_its_output(instant_project):
    assert run_evo("run", "p", *RUN, "--trials", "2", cwd=instant_project).returncode == 0
    for args in (["export", "p", "--out", "/dev/full"], ["export", "p"], ["show", "p", "0", "1"]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "evo.cli", *args], cwd=instant_project, stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "the disk is full" in proc.stderr, proc.stderr


# -- exit codes and advice ---------------------------------------------------------------------

def test_seed_failures_that_reach_the_limit_exit_1_and_the_advice_works(instant_project):
    failed = run_evo("run", "fs", *RUN, "--trials", "1", cwd=instant_project, env={"EVO_TEST_CRASH": "broken"})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert "reached 1 trials and none succeeded" in line and "evo run fs --trials 2" in line, line
    fixed = run_evo("run", "fs", "--trials", "2", cwd=instant_project)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    with Search.open("fs", root=instant_project / "runs") as search:
        assert [t.status for t in search.trials()] == ["crash", "ok"]


def test_a_comparison_that_fails_before_its_first_search_leaves_nothing(instant_project):
    proc = run_evo("compare", "cmp", "--strategies", "greedy", "--trials", "2", "--proposer", "telepathy",
                   cwd=instant_project)
    one_line_error(proc, "unknown proposer")
    assert not (instant_project / "runs" / "cmp").exists()
    again = run_evo("compare", "cmp", "--strategies", "greedy", "--trials", "2", *RUN, "--quiet", cwd=instant_project)
    assert again.returncode == 0, again.stdout + again.stderr


def test_show_takes_several_trial_numbers(instant_project):
    assert run_evo("run", "live", *RUN, "--trials", "3", cwd=instant_project).returncode == 0
    for args in (["live", "0", "2"], ["0", "2"]):  # the name is optional when there is only one search
        proc = run_evo("show", *args, cwd=instant_project)
        assert proc.returncode == 0, proc.stderr
        assert "trial #0 of live" in proc.stdout and "trial #2 of live" in proc.stdout
    one_line_error(run_evo("show", "live", "0", "x", cwd=instant_project), "whole number, not 'x'")
