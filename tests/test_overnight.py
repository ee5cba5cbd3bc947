"""What goes wrong overnight, reproduced from the outside (the real `evo` command, real folders):
bad creation flags caught before anything exists, a failed seed that can be run again, broken or
foreign databases, moved and copied folders, a full disk, a closed pipe.

Every search here runs the instant genome (tests/data/instant_genome.py): a trial takes a
moment, so each test measures the engine's behaviour, not training."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_evo
from population.search import Search

RUN = ("--profile", "tiny", "--budget", "1")


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The single stderr line of a failed command, checked to hold `words`."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trials_of(project: Path, name: str, root: str = "runs") -> list:
    with Search.open(name, root=project / root) as search:
        return search.trials()


# -- checked before anything is created --------------------------------------------------------

@pytest.mark.parametrize("flags,words", [
    (["--devices", "cuda:9"], ["--devices cuda:9", "sees no GPU", "--devices cpu"]),
    (["--devices", f"cpu:{4 * (os.cpu_count() or 1) + 1}"], ["concurrent CPU trials", "use at most"]),
    (["--data", "/nonexistent/corpus"], ["--data /nonexistent/corpus", "no such folder"]),
    (["--storage", "sqlite:////nonexistent/folder/study.db"], ["/nonexistent/folder does not exist"]),
])
def test_a_creation_flag_that_cannot_work_is_refused_before_anything_is_created(instant_project, flags, words):
    proc = run_evo("run", "early", *RUN, "--trials", "2", *flags, cwd=instant_project)
    assert proc.returncode == 2
    one_line_error(proc, *words)
    assert not (instant_project / "runs" / "early").exists()


def test_a_data_folder_without_text_and_a_seed_that_does_not_compile_are_refused_before_creation(instant_project):
    (instant_project / "empty").mkdir()
    proc = run_evo("init", "early", *RUN, "--data", "empty", cwd=instant_project)
    one_line_error(proc, "no .txt or .parquet files")
    seed = instant_project / "train.py"
    seed.write_text(seed.read_text().replace("def main():", "def main(:"))
    proc = run_evo("init", "early", *RUN, cwd=instant_project)
    one_line_error(proc, "train.py does not compile", "line", "fix the seed")
    assert not (instant_project / "runs" / "early").exists()


def test_a_relative_data_folder_is_recorded_absolute_and_accepted_again_on_resume(instant_project):
    corpus = instant_project / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("to be or not to be\n")
    assert run_evo("init", "rel", *RUN, "--data", "corpus", cwd=instant_project).returncode == 0
    config = json.loads((instant_project / "runs" / "rel" / "search.json").read_text())
    assert config["data"] == str(corpus)
    again = run_evo("run", "rel", "--data", "corpus", "--trials", "1", cwd=instant_project)
    assert again.returncode == 0, again.stderr


def test_a_storage_that_already_holds_the_study_is_refused_before_creation(instant_project, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert run_evo("init", "one", *RUN, "--storage", url, cwd=instant_project).returncode == 0
    before = digest(tmp_path / "shared.db")
    proc = run_evo("init", "one", *RUN, "--storage", url, "--root", "elsewhere", cwd=instant_project)
    one_line_error(proc, "already holds a study named 'one'")
    assert not (instant_project / "elsewhere" / "one").exists()
    assert digest(tmp_path / "shared.db") == before


def test_devices_are_checked_against_the_harness_on_resume_too(instant_project):
    assert run_evo("init", "dev", *RUN, cwd=instant_project).returncode == 0
    proc = run_evo("run", "dev", "--trials", "1", "--devices", "cuda:0", cwd=instant_project)
    one_line_error(proc, "--devices cuda:0", "sees no GPU")
    assert trials_of(instant_project, "dev") == []


# -- a seed that failed ----------------------------------------------------------------------------

def test_a_seed_that_failed_runs_again_once_the_machine_is_fixed(instant_project):
    broken = {"EVO_TEST_CRASH": "CUDA error: out of memory"}
    first = run_evo("run", "fs", *RUN, "--trials", "3", cwd=instant_project, env=broken)
    assert first.returncode == 1
    assert "the seed genome failed (trial #0, crash: RuntimeError: CUDA error: out of memory)" in first.stdout
    assert "run `evo run fs` again, which retries the seed" in first.stdout and "evo reseed fs" in first.stdout
    again = run_evo("run", "fs", "--trials", "3", cwd=instant_project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "the seed genome has not run successfully yet (trial #0, crash" in again.stdout
    trials = trials_of(instant_project, "fs")
    assert [(t.operator, t.status) for t in trials[:2]] == [("seed", "crash"), ("seed", "ok")]
    assert sum(1 for t in trials if t.counts) == 3


def test_a_seed_with_a_bug_is_replaced_by_reseed_and_trains(instant_project):
    seed = instant_project / "train.py"
    good = seed.read_text()
    seed.write_text(good.replace("    score = 1 +", "    score = undefined_name +"))
    assert run_evo("run", "bug", *RUN, "--trials", "2", cwd=instant_project).returncode == 1
    unchanged = run_evo("reseed", "bug", cwd=instant_project)
    one_line_error(unchanged, "are the seed's files as they are")
    seed.write_text(good.replace("def main():", "def main(:"))
    one_line_error(run_evo("reseed", "bug", cwd=instant_project), "does not compile")
    seed.write_text(good)
    replaced = run_evo("reseed", "bug", cwd=instant_project)
    assert replaced.returncode == 0 and "`evo run bug` trains it" in replaced.stdout, replaced.stderr
    resumed = run_evo("run", "bug", "--trials", "3", cwd=instant_project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "was replaced (evo reseed) and runs now" in resumed.stdout
    trials = trials_of(instant_project, "bug")
    assert [t.status for t in trials[:2]] == ["crash", "ok"] and trials[0].commit != trials[1].commit
    with Search.open("bug", root=instant_project / "runs") as search:
        assert search.repo.resolve("refs/heads/evo/bug/seed") == trials[1].commit == search.config.seed_commit
        assert search.store.config["seed_commit"] == trials[1].commit  # the study's copy of search.json too
    seed.write_text(good.replace("LR = 0.04", "LR = 0.05"))
    one_line_error(run_evo("reseed", "bug", cwd=instant_project), "already has successful trials")


def test_rm_deletes_a_search_only_with_yes(instant_project):
    assert run_evo("init", "gone", *RUN, cwd=instant_project).returncode == 0
    asked = run_evo("rm", "gone", cwd=instant_project)
    assert asked.returncode == 2 and "add --yes" in asked.stderr
    assert (instant_project / "runs" / "gone" / "search.json").exists()
    assert run_evo("rm", "gone", "--yes", cwd=instant_project).returncode == 0
    assert not (instant_project / "runs" / "gone").exists()
    assert run_evo("init", "gone", *RUN, cwd=instant_project).returncode == 0  # the name is free again


# -- broken databases and folders --------------------------------------------------------------------

def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")


DAMAGES = {  # what a study.db can turn into, and the words its error line must hold
    "empty": (lambda db: db.write_bytes(b""), ["is empty"]),
    "corrupt": (lambda db: db.write_bytes(b"SQLite format 2\0" + os.urandom(4096)), ["cannot be read"]),
    "foreign": (_foreign, ["is not an Optuna database", "invoices"]),
}


def test_a_broken_or_foreign_database_is_one_line_and_read_only_commands_write_nothing(instant_project):
    assert run_evo("run", "db", *RUN, "--trials", "1", cwd=instant_project).returncode == 0
    db = instant_project / "runs" / "db" / "study.db"
    for kind, (damage, words) in DAMAGES.items():
        db.unlink()
        damage(db)
        before = digest(db)
        for command in (["status", "db"], ["show", "db", "0"], ["export", "db"], ["run", "db"]):
            one_line_error(run_evo(*command, cwd=instant_project), *words)
            assert digest(db) == before, f"evo {command[0]} changed the {kind} database"


def test_a_missing_population_repository_is_one_line(instant_project):
    assert run_evo("run", "norepo", *RUN, "--trials", "1", cwd=instant_project).returncode == 0
    shutil.rmtree(instant_project / "runs" / "norepo" / "population.git")
    for command in (["status", "norepo"], ["run", "norepo", "--trials", "2"]):
        one_line_error(run_evo(*command, cwd=instant_project), "no population repository", "restore")


def test_a_moved_search_folder_resumes_where_it_now_is(instant_project):
    assert run_evo("run", "mv", *RUN, "--trials", "2", cwd=instant_project).returncode == 0
    (instant_project / "runs").rename(instant_project / "moved")
    resumed = run_evo("run", "mv", "--trials", "3", "--root", "moved", cwd=instant_project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sum(1 for t in trials_of(instant_project, "mv", root="moved") if t.counts) == 3
    assert not (instant_project / "runs").exists()


def test_a_copied_search_folder_is_an_independent_search(instant_project):
    assert run_evo("run", "orig", *RUN, "--trials", "2", cwd=instant_project).returncode == 0
    shutil.copytree(instant_project / "runs", instant_project / "copy")
    original = instant_project / "runs" / "orig" / "study.db"
    before = digest(original)
    resumed = run_evo("run", "orig", "--trials", "4", "--root", "copy", cwd=instant_project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert digest(original) == before, "the copy wrote into the original's database"
    assert len(trials_of(instant_project, "orig")) == 2
    assert sum(1 for t in trials_of(instant_project, "orig", root="copy") if t.counts) == 4


# -- the machine ---------------------------------------------------------------------------------------

def _bwrap_with_small_tmpfs() -> bool:
    if not shutil.which("bwrap"):
        return False
    probe = subprocess.run(["bwrap", "--dev-bind", "/", "/", "--size", "65536", "--tmpfs", "/mnt", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _bwrap_with_small_tmpfs(), reason="needs bwrap with --size (a small tmpfs as a full disk)")
def test_a_full_disk_ends_the_run_with_one_line_and_the_search_still_opens(instant_project):
    """The runs folder on a 4 MiB tmpfs that a file then fills: every write of the next run fails."""
    script = (f"set -e; cd {instant_project}; {sys.executable} -m evo.cli init full {' '.join(RUN)} --sandbox none "
              "--root /mnt/runs >/dev/null; "
              "dd if=/dev/zero of=/mnt/filler bs=64k 2>/dev/null || true; "
              f"set +e; {sys.executable} -m evo.cli run full --trials 3 --root /mnt/runs; echo \"run exit $?\" >&2; "
              f"{sys.executable} -m evo.cli status full --root /mnt/runs >/dev/null; echo \"status exit $?\" >&2")
    proc = subprocess.run(["bwrap", "--dev-bind", "/", "/", "--size", str(4 << 20), "--tmpfs", "/mnt",
                           "bash", "-c", script], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert "run exit 1" in lines and "status exit 0" in lines, proc.stdout + proc.stderr
    errors = [line for line in lines if line.startswith("evo run: error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and "free some space" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_status_into_a_closed_pipe_ends_without_a_traceback(instant_project):
    assert run_evo("run", "pipe", *RUN, "--trials", "1", cwd=instant_project).returncode == 0
    # pipefail: the pipeline's status is evo's (141, SIGPIPE's, or 0), not head's.
    proc = subprocess.run(["bash", "-o", "pipefail", "-c",
                           f"{sys.executable} -m evo.cli status pipe --watch 0.05 | head -n 1"],
                          cwd=instant_project, capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 141) and "search pipe" in proc.stdout
    assert proc.stderr == "", proc.stderr
