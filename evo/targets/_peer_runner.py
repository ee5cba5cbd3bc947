"""Runs an OpenEvolve or ShinkaEvolve evaluator on one program and prints what it concluded.

Copied into a search's fixed harness (as evo_peer_evaluate.py) by `evo init --from-openevolve`
or `--from-shinka`, and run as the search's evaluation command, inside the trial's sandbox,
against the trial's copy of the program:

    python evo_peer_evaluate.py openevolve evaluator.py initial_program.py [--stage 1]
    python evo_peer_evaluate.py shinka evaluate.py initial.py

It imports the project's evaluator by path (the peer's own package is needed only if that
evaluator imports it), calls it the way the peer does, and ends with one line the engine
reads: `EVO_RESULT {"metrics": {...}, "valid": bool, "error": str, "artifacts": {...}}`.
It imports nothing of evoresearch: it must run with whatever interpreter the trial has.
"""

import importlib.util
import json
import math
import os
import sys
import traceback

PREFIX = "EVO_RESULT "


def load(path):
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the evaluator may import its neighbours
    spec = importlib.util.spec_from_file_location("peer_evaluator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(mapping, into, prefix=""):
    """The numeric entries of `mapping` (nested dicts flattened as a.b), bools left out."""
    for key, value in (mapping or {}).items():
        if isinstance(value, dict):
            numbers(value, into, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            into[f"{prefix}{key}"] = float(value) if math.isfinite(value) else None
    return into


def texts(mapping):
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (mapping or {}).items()}


def openevolve(evaluator, program, stage):
    """evaluate(program_path) (or evaluate_stageN) returning a dict, or an object with .metrics and .artifacts."""
    module = load(evaluator)
    function = getattr(module, f"evaluate_stage{stage}" if stage else "evaluate", None)
    if function is None:
        raise SystemExit(f"{evaluator} has no {'evaluate_stage%d' % stage if stage else 'evaluate'}(program_path)")
    result = function(program)
    metrics = getattr(result, "metrics", result)
    artifacts = getattr(result, "artifacts", None) or {}
    if not isinstance(metrics, dict):
        raise SystemExit(f"evaluate() returned {type(metrics).__name__}, not a dict of metrics")
    record = {"metrics": numbers({k: v for k, v in metrics.items() if k != "artifacts"}, {}),
              "artifacts": texts({**(metrics.get("artifacts") or {}), **artifacts})}
    for key in ("valid", "correct", "validity"):
        if key in metrics:
            record[key] = metrics[key]
    if isinstance(metrics.get("error"), str) and metrics["error"]:
        # OpenEvolve's evaluators report a program that failed as a dict with an error and zeros.
        record["error"] = metrics["error"]
        record.setdefault("valid", False)
    return record


def shinka(evaluator, program, results_dir):
    """main(program_path, results_dir), which writes metrics.json and correct.json there."""
    module = load(evaluator)
    if not hasattr(module, "main"):
        raise SystemExit(f"{evaluator} has no main(program_path, results_dir)")
    os.makedirs(results_dir, exist_ok=True)
    module.main(program, results_dir)
    metrics, correct = {}, {}
    for name, target in (("metrics.json", metrics), ("correct.json", correct)):
        path = os.path.join(results_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                target.update(json.load(f))
    record = {"metrics": numbers({k: v for k, v in metrics.items() if k not in ("text_feedback", "extra_data")}, {}),
              "artifacts": texts({k: metrics[k] for k in ("text_feedback",) if metrics.get(k)})}
    if "correct" in correct:
        record["correct"] = bool(correct["correct"])
    if correct.get("error"):
        record["error"] = str(correct["error"])
    return record


def main(argv):
    kind, evaluator, program = argv[:3]
    stage = int(argv[argv.index("--stage") + 1]) if "--stage" in argv else 0
    program = os.path.abspath(program)
    try:
        if kind == "openevolve":
            record = openevolve(evaluator, program, stage)
        else:
            scratch = os.environ.get("EVO_SCRATCH") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "evo-results")
            record = shinka(evaluator, program, os.path.join(scratch, "results"))
    except BaseException as e:  # the evaluator's failure is the trial's: say why, exit non-zero
        traceback.print_exc(file=sys.stdout)
        why = str(e) if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
        print(PREFIX + json.dumps({"valid": False, "error": why}), flush=True)
        return 1
    print(PREFIX + json.dumps(record, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
