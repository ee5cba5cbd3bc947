"""Any project as a target: the examples evolve end to end, unchanged, with their own command and metric."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_evo
from population import Search

EXAMPLES = ROOT / "examples"
SORT = ["--mutable", "solution.py", "--run", "python bench.py", "--metric", "elements_per_second",
        "--direction", "maximize", "--budget", "60"]


@pytest.fixture
def examples(tmp_path) -> Path:
    """A copy of examples/ to run searches from."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    return tmp_path


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_a_non_ml_program_evolves_with_a_maximised_metric(examples):
    project = examples / "examples" / "sort_speed"
    proc = run_evo("run", "fast", "--project", str(project), *SORT, "--trials", "6", cwd=examples)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "elements_per_second" in proc.stdout and "val_bpb" not in proc.stdout
    with Search.open("fast", root=examples / "runs") as search:
        assert (search.config.metric, search.config.direction, search.config.evaluation) == \
            ("elements_per_second", "maximize", "self-reported")
        lineage = search.lineage()
        trials = [t for t in lineage.trials if t.finished_ok]
        # Two knobs make a small neighbourhood: once every neighbour of the best was tried, the offline
        # proposer says so. Which genome is best depends on measured speed, so on the machine's load:
        # assert what holds at any load.
        others = [t for t in lineage.trials if not t.finished_ok]
        assert all(t.status == "invalid_proposal" and "no unseen" in (t.error or "") for t in others), others
        assert len(trials) >= 3 and all(t.value > 1000 for t in trials)
        assert lineage.best.score == max(i.score for i in lineage.ranked())  # higher is better
        best_so_far = None
        for r in lineage.history():  # kept means higher than every result before it
            if r.trial.finished_ok:
                assert r.kept == (best_so_far is None or r.trial.value > best_so_far)
                best_so_far = max(best_so_far or r.trial.value, r.trial.value)
        assert {str(p.relative_to(search.paths.harness)) for p in search.harness} == {"bench.py", "program.md",
                                                                                        "README.md"}
    status = run_evo("status", "fast", cwd=examples).stdout
    assert "best: elements_per_second" in status
    report = run_evo("report", "fast", cwd=examples)
    assert report.returncode == 0 and (examples / "runs" / "fast" / "report" / "report.html").exists()
    compare = run_evo("compare", "cmpfast", "--searches", "evolve=fast", cwd=examples)
    assert compare.returncode == 0, compare.stderr
    assert "target: elements_per_second" in compare.stdout
    row = next(line for line in compare.stdout.splitlines() if line.startswith("evolve"))
    assert f"{lineage.best.score:.4f}" in row  # the final best is the highest, not the lowest


@pytest.mark.slow
def test_an_evaluation_command_scores_the_trial_apart_from_what_it_printed(examples):
    project = examples / "examples" / "sort_speed"
    # The run ends by claiming an impossible speed; the evaluation command measures it itself.
    run = "python bench.py && echo elements_per_second: 1e15"
    args = ["--mutable", "solution.py", "--run", run, "--evaluate", "python bench.py", "--metric",
            "elements_per_second", "--direction", "maximize", "--budget", "60", "--trials", "2"]
    proc = run_evo("run", "judged", "--project", str(project), *args, cwd=examples)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Search.open("judged", root=examples / "runs") as search:
        assert search.config.evaluation == "evaluated"
        for t in search.trials():
            assert t.status == "ok" and 1000 < t.value < 1e9, (t.status, t.value, t.error)
            assert t.attrs["provenance"]["evaluator"] == "evaluated"
            assert t.metrics["reported_elements_per_second"] == 1e15


@pytest.mark.slow
def test_an_autoresearch_layout_project_evolves_unchanged(examples):
    project = examples / "examples" / "autoresearch_fork"
    assert "EVO_" not in (project / "train.py").read_text() + (project / "prepare.py").read_text()
    home = examples / "home"
    env = {"HOME": str(home)}
    prepared = subprocess.run([sys.executable, "prepare.py"], cwd=project, env={**os.environ, **env},
                              capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    before = _fingerprint(project)
    proc = run_evo("run", "fork", "--project", str(project), "--mutable", "train.py", "--run", "python train.py",
                   "--metric", "val_bpb", "--budget", "120", "--read", str(home / ".cache" / "evo-example-fork"),
                   "--trials", "3", "--strategy", "greedy", cwd=examples, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Search.open("fork", root=examples / "runs") as search:
        trials = search.trials()
        assert [t.status for t in trials] == ["ok"] * 3, [(t.status, t.error) for t in trials]
        assert all(0 < t.value < 8 for t in trials)  # better than uniform bytes (8 bits per byte)
        assert trials[0].attrs["provenance"]["sandbox"] in ("bwrap", "none")
        assert search.config.target["run"] == "python train.py"
    assert _fingerprint(project) == before  # the project itself is never touched


@pytest.mark.parametrize("args,message", [
    (["--run", "nosuchprogram --fast"], "the program 'nosuchprogram' is not on PATH"),
    (["--run", "python bench.py", "--metric-pattern", "speed=([0-9."], "does not compile"),
    (["--run", "python bench.py", "--metric-pattern", "speed=[0-9.]+"], "needs exactly one (group)"),
    (["--run", "python bench.py", "--mutable", "../outside.py"], "is outside the project"),
    (["--run", "python bench.py", "--mutable", "nothing*.py"], "matches no file"),
    (["--run", "python bench.py", "--mutable", "solution.py", "bench.py", "--evaluate", "python bench.py"],
     "bench.py is run by --evaluate, so it cannot be mutable"),
    (["--metric", "elements_per_second"], "give its command with --run"),
    (["--run", "python bench.py", "--read", "/no/such/folder"], "--read /no/such/folder: no such file"),
])
def test_bad_target_flags_exit_2_with_one_line_and_create_nothing(examples, args, message):
    project = examples / "examples" / "sort_speed"
    defaults = [] if "--mutable" in args else ["--mutable", "solution.py"]
    proc = run_evo("init", "bad", "--project", str(project), *defaults, *args, cwd=examples)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (examples / "runs" / "bad").exists()


@pytest.mark.slow
def test_a_metric_that_never_appears_says_which_lines_it_saw(examples):
    project = examples / "examples" / "sort_speed"
    proc = run_evo("run", "silent", "--project", str(project), "--mutable", "solution.py", "--run", "python bench.py",
                   "--metric", "throughput", "--budget", "60", "--trials", "2", cwd=examples)
    assert proc.returncode == 1
    assert "never gave throughput" in proc.stdout and "elements_per_second" in proc.stdout
    # The metric is fixed, so running again cannot help: the advice names the ways that do.
    advice = proc.stderr.strip().splitlines()[-1]
    assert "`evo rm silent --yes`" in advice and "--metric" in advice and "`evo reseed silent`" in advice, advice
    assert "fix the cause and run" not in advice
    with Search.open("silent", root=examples / "runs") as search:
        seed = search.trials()[0]
        assert seed.status == "no_metric" and "elements_per_second:" in seed.error


def test_a_project_without_program_md_gets_one_from_a_template(examples):
    project = examples / "examples" / "sort_speed"
    (project / "program.md").unlink()
    proc = run_evo("init", "t", "--project", str(project), *SORT, cwd=examples)
    assert proc.returncode == 0, proc.stderr
    assert "from a template" in proc.stderr
    assert not (project / "program.md").exists()  # the project is never written to
    text = (examples / "runs" / "t" / "program.md").read_text()
    assert "highest `elements_per_second`" in text and "`solution.py`" in text and "python bench.py" in text
    config = json.loads((examples / "runs" / "t" / "search.json").read_text())
    assert config["target"]["kind"] == "command" and config["direction"] == "maximize"


def test_a_project_whose_fixed_files_sit_in_a_subfolder_runs_its_executable_script(tmp_path):
    """The harness keeps its folders (tools/run.sh stays tools/run.sh, not run.sh) and its modes (an
    executable script of the project runs as `./tools/run.sh`)."""
    project = tmp_path / "proj"
    (project / "tools").mkdir(parents=True)
    (project / "knob.py").write_text("K = 3\n")
    script = project / "tools" / "run.sh"
    script.write_text("#!/bin/bash\nset -e\npython3 -c 'import knob; print(f\"score: {knob.K * 2}\")'\n")
    script.chmod(0o755)
    proc = run_evo("run", "sub", "--project", str(project), "--mutable", "knob.py", "--run", "./tools/run.sh",
                   "--metric", "score", "--direction", "maximize", "--budget", "30", "--trials", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Search.open("sub", root=tmp_path / "runs") as search:
        seed = search.lineage().seed
        assert seed.status == "ok" and seed.value == 6, (seed.status, seed.error)


def test_each_target_knows_its_own_trials_processes_and_what_proposers_are_told():
    from evo.targets import CommandTarget, HarnessTarget
    from population.search import SearchConfig

    def command(run: str) -> CommandTarget:
        return CommandTarget(SearchConfig(name="c", profile="command", budget=5.0, mutable=["solution.py"], data="",
                                          target={"kind": "command", "run": run}))

    harness = HarnessTarget(SearchConfig(name="h", profile="tiny", budget=5.0, mutable=["train.py"], data="",
                                         seq_len=128))
    # bash runs a simple command in its own place, a compound one as its child.
    runs = {"simple": "sleep 31", "compound": "sleep 32; true", "other": "sleep 30"}
    procs = {k: subprocess.Popen(["bash", "-c", run], start_new_session=True) for k, run in runs.items()}
    try:
        time.sleep(0.5)  # until bash has replaced itself (or not)
        cmdline = {k: Path(f"/proc/{p.pid}/cmdline").read_bytes() for k, p in procs.items()}
        # A resume kills a dead engine's leftover only when the pid is still one of the target's trials.
        for kind in ("simple", "compound"):
            assert command(runs[kind]).owns_process(cmdline[kind]), cmdline[kind]
            assert not command(runs[kind]).owns_process(cmdline["other"])
        assert harness.owns_process(b"python\0train.py\0") and not harness.owns_process(cmdline["simple"])
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    # The harness's facts reach proposers through its target; a command target has none of them.
    told = harness.proposer_settings()
    assert told["target_facts"] == ["sequence length 128"] and told["whole_multiples"]
    assert not {"target_facts", "whole_multiples"} & set(command("sleep 31").proposer_settings())
