"""Projects made for OpenEvolve or ShinkaEvolve evolve as they are: their evaluators, their validity,
their several metrics and text artifacts, their marked blocks, and no ML wording in their records.

The small projects here are our own, written in each peer's layout (not copied from either)."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_evo
from fake_llm import FakeServer, anthropic_reply, proposal
from population import Search

# Words of evoresearch's ML harness that must not show in a search of anything else.
ML_WORDS = re.compile(r"val_bpb|training|preparing data|\bdata (source|for)\b|tokeni[sz]")

PROGRAM = '''\
"""Guess the x that comes closest to 2.5: only the marked block evolves."""

# EVOLVE-BLOCK-START
STEP = 0.5
SCALE = 2.0


def guess():
    return STEP * SCALE
# EVOLVE-BLOCK-END


def run():
    return guess()
'''

LOAD = '''\
import importlib.util


def load(path):
    spec = importlib.util.spec_from_file_location("program", path)
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    return program
'''

OPENEVOLVE_EVALUATOR = LOAD + '''

def evaluate_stage1(program_path):  # the cascade's cheap first stage
    x = load(program_path).run()
    return {"combined_score": 1.0 if 0 <= x <= 4 else 0.0}


def evaluate(program_path):
    x = load(program_path).run()
    if x > 4:
        return {"combined_score": 0.0, "error": f"x = {x} lies outside [0, 4]"}
    return {"combined_score": 1 / (1 + abs(x - 2.5)), "distance": abs(x - 2.5), "size": len(str(x)),
            "artifacts": {"feedback": f"guess() returned {x}"}}
'''

OPENEVOLVE_CONFIG = '''\
max_iterations: 3
llm:
  models:
    - name: "qwen-coder"
      weight: 1.0
  api_base: "http://localhost:8000/v1"
  temperature: 0.7
prompt:
  system_message: "You tune a guessing function; aim for the middle of the range."
database:
  num_islands: 2
  population_size: 40
evaluator:
  timeout: 60
  cascade_evaluation: true
  cascade_thresholds: [0.5, 0.8]
diff_based_evolution: true
'''

SHINKA_EVALUATOR = LOAD + '''
import json
import os


def main(program_path, results_dir):
    x = load(program_path).run()
    correct = 0 <= x <= 4
    metrics = {"combined_score": 1 / (1 + abs(x - 2.5)) if correct else 0.0, "public": {"distance": abs(x - 2.5)},
               "private": {"calls": 1}, "text_feedback": f"the guess was {x}"}
    with open(os.path.join(results_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    with open(os.path.join(results_dir, "correct.json"), "w") as f:
        json.dump({"correct": correct, "error": None if correct else f"x = {x} lies outside [0, 4]"}, f)
'''

SHINKA_CONFIG = '''\
evo_config:
  num_generations: 2
  task_sys_msg: "Make the guess land near 2.5."
  llm_models: ["claude-sonnet-5-5"]
  max_parallel_jobs: 1
'''


def _project(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def _fixed(text: str) -> list[str]:
    """The lines outside the marked block."""
    head, rest = text.split("# EVOLVE-BLOCK-START", 1)
    return [head, rest.split("# EVOLVE-BLOCK-END", 1)[1]]


def _strict_json(text: str):
    """JSON as the standard has it: a bare NaN or Infinity is an error."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_an_openevolve_project_evolves_as_it_is_with_every_metric_on_record(tmp_path):
    project = _project(tmp_path / "guess", {"initial_program.py": PROGRAM, "evaluator.py": OPENEVOLVE_EVALUATOR,
                                            "config.yaml": OPENEVOLVE_CONFIG})
    proc = run_evo("run", "oe", "--from-openevolve", str(project), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--proposer openai-compatible --model qwen-coder" in proc.stdout and "--islands 2" in proc.stdout
    assert "diff_based_evolution" in proc.stderr  # said not to map
    with Search.open("oe", root=tmp_path / "runs") as search:
        cfg = search.config
        assert (cfg.mutable, cfg.metric, cfg.direction) == (["initial_program.py"], "combined_score", "maximize")
        assert "aim for the middle of the range" in search.program  # the system message became program.md
        assert (cfg.target["quick_threshold"], cfg.eval_limit) == (0.5, 60.0)  # the cascade's first stage
        trials = search.trials()
        assert len(trials) == 4  # max_iterations 3, plus the seed
        assert all(t.status == "ok" for t in trials), [(t.status, t.error) for t in trials]
        seed_files = search.repo.files(trials[0].commit, cfg.mutable)
        for t in trials:
            assert t.value == pytest.approx(1 / (1 + t.metrics["distance"]))  # every metric kept, not only one
            assert t.metrics["size"] >= 3 and t.attrs["artifacts"]["feedback"].startswith("guess() returned")
            files = search.repo.files(t.commit, cfg.mutable)
            assert _fixed(files["initial_program.py"]) == _fixed(seed_files["initial_program.py"])
            _strict_json(search.paths.trial(t.number).result.read_text())
            assert (search.paths.trial(t.number).path / "eval-quick.log").exists()
        assert "evo_peer_evaluate.py" in {p.name for p in search.harness}
    assert not (project / "runs").exists() and sorted(p.name for p in project.iterdir()) == \
        ["config.yaml", "evaluator.py", "initial_program.py"]  # the project is never touched

    show = run_evo("show", "oe", "1", cwd=tmp_path).stdout
    assert "distance" in show and "size" in show and "guess() returned" in show
    status = run_evo("status", "oe", cwd=tmp_path).stdout
    # OpenEvolve's evaluator imports the program: said so, never "run apart" (the runner's channel holds the result)
    assert all(t.attrs["provenance"]["program"] == "program and evaluator share a process" for t in trials)
    assert "program and evaluator share a process" in status and "program: program and evaluator share" in show
    raw = run_evo("status", "oe", "--json", cwd=tmp_path).stdout
    summary = _strict_json(raw)
    assert summary["best_value"] == summary["best_combined_score"] == max(t.value for t in trials)
    assert {"distance", "size", "combined_score"} <= set(summary["best_metrics"])
    assert all("distance" in row["metrics"] for row in summary["trials"])
    export = run_evo("export", "oe", cwd=tmp_path).stdout
    assert export.splitlines()[0].split("\t")[1] == "combined_score"
    report = run_evo("report", "oe", cwd=tmp_path)
    html = (tmp_path / "runs" / "oe" / "report" / "report.html").read_text()
    assert ">distance<" in html and ">size<" in html
    for text in (proc.stdout, proc.stderr, status, raw, report.stdout, html):
        assert not ML_WORDS.search(text), ML_WORDS.search(text).group(0)


def _anthropic_env(server: FakeServer) -> dict:
    return {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-test-peers", "ANTHROPIC_BASE_URL": server.url}


@pytest.mark.slow
def test_a_shinka_project_fails_an_invalid_program_with_its_reason_and_feeds_artifacts_back(tmp_path):
    project = _project(tmp_path / "guess", {"initial.py": PROGRAM, "evaluate.py": SHINKA_EVALUATOR,
                                            "config.yaml": SHINKA_CONFIG})
    script = [
        # 1: an edit outside the marked block (the objective itself): refused, one repair turn
        anthropic_reply(proposal("return a constant", [("initial.py", "    return guess()", "    return 2.5")])),
        # the repair: inside the block, but it makes the program invalid for the evaluator
        anthropic_reply(proposal("a much larger step", [("initial.py", "STEP = 0.5", "STEP = 100.0")])),
        # 2: a valid child
        anthropic_reply(proposal("a larger scale", [("initial.py", "SCALE = 2.0", "SCALE = 4.0")])),
    ]
    with FakeServer(script) as server:
        proc = subprocess_run(["run", "sk", "--from-shinka", str(project), "--proposer", "anthropic",
                               "--strategy", "greedy"], tmp_path, _anthropic_env(server))
        received = [r.body for r in server.received]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max_parallel_jobs" in proc.stderr  # said not to map
    with Search.open("sk", root=tmp_path / "runs") as search:
        trials = search.trials()
        assert len(trials) == 3  # num_generations 2, plus the seed
        assert "land near 2.5" in search.program
        seed, invalid, good = trials
        assert seed.status == "ok" and seed.metrics["public.distance"] == pytest.approx(1.5)
        assert seed.metrics["private.calls"] == 1 and seed.attrs["artifacts"]["text_feedback"] == "the guess was 1.0"
        assert invalid.status == "invalid" and "x = 200.0 lies outside [0, 4]" in invalid.error, invalid.error
        assert invalid.value is None  # never ok with a score of 0
        assert good.status == "ok" and good.value == pytest.approx(1 / (1 + 0.5))  # x = 0.5 * 4.0
    first_prompt = json.dumps(received[0])
    assert "the guess was 1.0" in first_prompt  # the parent's artifact reached the next prompt
    assert "EVOLVE-BLOCK-START" in first_prompt and "only the lines between" in first_prompt
    repair = json.dumps(received[1])
    assert "outside its EVOLVE-BLOCK-START ... EVOLVE-BLOCK-END regions" in repair
    for body in received:
        text = json.dumps(body["system"]) + json.dumps(body["messages"])
        assert not ML_WORDS.search(text), ML_WORDS.search(text).group(0)
    show = run_evo("show", "sk", "1", cwd=tmp_path).stdout
    assert "invalid" in show and "lies outside" in show


def subprocess_run(args: list[str], cwd: Path, env: dict):
    import subprocess

    return subprocess.run([sys.executable, "-m", "evo.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


SCORER = '''\
import os
import sys

sys.path.insert(0, ".")
program = __import__(sys.argv[1].removesuffix(".py"))
with open(os.path.join(os.environ["EVO_SCRATCH"], "note.txt"), "w") as f:  # a writable folder of its own
    f.write("scratch works")
print("level:", program.LEVEL)
print("score:", program.LEVEL * (2 if "--quick" not in sys.argv else 1))
'''


@pytest.mark.slow
def test_an_evaluator_given_the_program_needs_no_run_and_a_stage_one_stops_hopeless_programs(tmp_path):
    project = _project(tmp_path / "plain", {"solution.py": "LEVEL = 8\n", "score.py": SCORER})
    common = ["--project", str(project), "--mutable", "solution.py", "--metric", "score", "--direction", "maximize",
              "--evaluate", "python score.py {program}", "--evaluate-quick", "python score.py {program} --quick",
              "--trials", "2"]
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = run_evo("run", "passes", *common, "--quick-threshold", "5", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Search.open("passes", root=tmp_path / "runs") as search:
        seed = search.trials()[0]
        assert seed.status == "ok" and seed.value == 16 and seed.metrics["level"] == 8
        assert search.config.target["run"] is None
        assert search.repo.files(seed.commit) .keys() == {"solution.py"}  # the scratch folder is no part of it

    proc = run_evo("run", "hopeless", *common, "--quick-threshold", "10", cwd=tmp_path, env=env)
    assert proc.returncode == 1  # the seed itself is hopeless: the run stops and says so
    with Search.open("hopeless", root=tmp_path / "runs") as search:
        seed = search.trials()[0]
        assert seed.status == "pruned" and "stage 1: score 8 is below the threshold 10" in seed.error, seed.error
        folder = search.paths.trial(0)
        assert (folder.path / "eval-quick.log").exists() and not (folder.path / "eval.log").exists()


def test_an_evaluation_that_exits_non_zero_or_declares_the_program_invalid_is_never_ok():
    from evo.runner._metric import ARTIFACTS_LIMIT, judge
    from evo.runner._output import metric_pattern

    pattern = metric_pattern("score")
    crashed = judge(["score: 0.0", "Traceback ...", "IndexError: list index out of range"], 1, "score", pattern)
    assert crashed.status == "crash" and "IndexError" in crashed.error
    said = judge(['EVO_RESULT {"metrics": {"score": 0, "area": 2.5}, "correct": false, "error": "overlap"}'], 0,
                 "score", pattern)
    assert said.status == "invalid" and "overlap" in said.error and said.metrics["area"] == 2.5
    validity = judge(['EVO_RESULT {"score": 1.0, "validity": 0.0}'], 0, "score", pattern)
    assert validity.status == "invalid"
    ok = judge(["loss: 3", "score: 0.5", 'EVO_RESULT {"artifacts": {"log": "' + "x" * 50000 + '"}}'], 0, "score",
               pattern)
    assert ok.status == "ok" and ok.metrics == {"loss": 3.0, "score": 0.5}
    assert sum(len(t) for t in ok.artifacts.values()) <= ARTIFACTS_LIMIT


@pytest.mark.parametrize("files,flag,message", [
    ({"evaluator.py": OPENEVOLVE_EVALUATOR}, "--from-openevolve", "no initial program (initial_program.py)"),
    ({"initial.py": PROGRAM}, "--from-shinka", "no evaluator (evaluate.py or evaluator.py)"),
    ({"initial_program.py": PROGRAM, "evaluator.py": OPENEVOLVE_EVALUATOR, "config.yaml": "llm: [unclosed"},
     "--from-openevolve", "is not valid YAML"),
])
def test_a_folder_that_is_not_such_a_project_exits_2_with_one_line(tmp_path, files, flag, message):
    project = _project(tmp_path / "p", files)
    proc = run_evo("init", "bad", flag, str(project), cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs" / "bad").exists()


def test_the_offline_proposer_says_before_any_trial_that_it_has_nothing_to_tune(tmp_path):
    program = PROGRAM.replace("STEP = 0.5\nSCALE = 2.0\n", "").replace("STEP * SCALE", "1.0")
    project = _project(tmp_path / "p", {"initial_program.py": program + "LIMIT = 3\n",
                                        "evaluator.py": OPENEVOLVE_EVALUATOR})
    proc = run_evo("run", "idle", "--from-openevolve", str(project), "--trials", "3", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "nothing to tune" in proc.stderr and "inside their EVOLVE-BLOCK regions" in proc.stderr
    with Search.open("idle", root=tmp_path / "runs") as search:
        assert search.trials() == []  # no trial was spent on it


# --- round three: a program that writes its own result, through the process it shares with its evaluator ---
SHINKA_API_EVALUATOR = '''\
from shinka.core import run_shinka_eval


def validate(result):
    x, pair = result
    return (isinstance(pair, tuple) and 0 <= x <= 4), f"x = {x} lies outside [0, 4]"


def aggregate(results):
    x = results[0][0]
    return {"combined_score": 1 / (1 + abs(x - 2.5)), "text_feedback": f"the guess was {x}"}


def main(program_path, results_dir):
    run_shinka_eval(program_path, results_dir, "run_experiment", 2, lambda i: {"seed": i}, aggregate, validate)
'''
SHINKA_PROGRAM = PROGRAM + '''

def run_experiment(seed=0):
    return guess(), (seed, "a tuple stays a tuple")
'''
FAKE = '{"metrics": {"combined_score": 1000.0}, "correct": true}'
PEER_CHEATS = {
    "result-at-exit": f'''
import atexit
atexit.register(lambda: print("combined_score: 1000\\\\nEVO_RESULT " + {FAKE!r}, flush=True))
''',
    "replaced-json": f'''
import __main__
import json
json.dumps = lambda *a, **k: {FAKE!r}
json.load = lambda f: {{"combined_score": 1000.0, "correct": True}}
if hasattr(__main__, "json"):
    __main__.json.dumps, __main__.json.load = json.dumps, json.load
''',
    "print-and-exit": f'''
import os
print("EVO_RESULT " + {FAKE!r}, flush=True)
os._exit(0)
''',
}


def _peer_run(tmp_path, kind, evaluator, program, name):
    """The runner on one program, as the engine runs it: (what it handed over on the channel, its exit code, output)."""
    import subprocess

    from evo.targets._peers import RUNNER
    folder = _project(tmp_path / name, {evaluator[0]: evaluator[1], program[0]: program[1]})
    (folder / RUNNER).write_bytes((Path(__file__).parent.parent / "evo/targets/_peer_runner.py").read_bytes())
    ours, theirs = os.pipe()
    env = {**os.environ, "EVO_RESULT_FD": str(theirs), "EVO_SCRATCH": str(tmp_path / f"{name}-scratch")}
    proc = subprocess.Popen([sys.executable, RUNNER, kind, evaluator[0], program[0]], cwd=folder, env=env,
                            pass_fds=(theirs,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(theirs)
    with os.fdopen(ours) as f:
        handed = f.read()
    out = proc.communicate(timeout=120)[0]
    return handed, proc.returncode, out


@pytest.mark.parametrize("cheat", sorted(PEER_CHEATS))
def test_a_program_that_writes_its_own_result_gets_the_honest_evaluators_number_or_none(tmp_path, cheat):
    from evo.runner._metric import judge
    from evo.runner._output import metric_pattern
    from evo.targets._peer_runner import APART, SHARED

    pattern = metric_pattern("combined_score")
    for kind, evaluator, program, how in (
            ("shinka", ("evaluate.py", SHINKA_API_EVALUATOR), ("initial.py", SHINKA_PROGRAM + PEER_CHEATS[cheat]), APART),
            ("openevolve", ("evaluator.py", OPENEVOLVE_EVALUATOR), ("initial_program.py", PROGRAM + PEER_CHEATS[cheat]),
             SHARED)):
        handed, code, out = _peer_run(tmp_path, kind, evaluator, program, f"{kind}-{cheat}")
        evaluation = judge(out.splitlines(), code, "combined_score", pattern, channel=handed)
        if cheat == "print-and-exit":  # the program ended its process: no score, and never 1000
            assert evaluation.status in ("invalid", "crash") and not evaluation.ok, (kind, evaluation)
            assert "without handing" in evaluation.error, (kind, evaluation.error)
        else:  # recorded with the honest evaluator's number: guess() is 1.0
            assert evaluation.ok and evaluation.metrics["combined_score"] == pytest.approx(1 / 2.5), (kind, evaluation, out)
        assert "1000" in out or cheat == "replaced-json"  # it did print its line; nothing read it
        assert evaluation.provenance.get("program", how) == how
        if evaluation.ok:
            assert evaluation.provenance["program"] == how


def test_the_honest_shinka_program_runs_apart_and_its_result_comes_back_as_data(tmp_path):
    from evo.runner._metric import judge
    from evo.runner._output import metric_pattern
    from evo.targets._peer_runner import APART, OWN_PROCESS

    handed, code, out = _peer_run(tmp_path, "shinka", ("evaluate.py", SHINKA_API_EVALUATOR),
                                  ("initial.py", SHINKA_PROGRAM), "honest")
    evaluation = judge(out.splitlines(), code, "combined_score", metric_pattern("combined_score"), channel=handed)
    assert evaluation.ok and evaluation.metrics["combined_score"] == pytest.approx(1 / 2.5), (evaluation, out)
    assert evaluation.metrics["num_valid_runs"] == 2  # validate_fn saw a tuple: data, not a pickle, and typed
    assert evaluation.provenance["program"] in (APART, OWN_PROCESS)
