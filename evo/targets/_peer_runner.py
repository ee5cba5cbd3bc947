"""Runs an OpenEvolve or ShinkaEvolve evaluator on one program and hands over what it concluded.

Copied into a search's fixed harness (as evo_peer_evaluate.py) by `evo init --from-openevolve`
or `--from-shinka`, and run as the search's evaluation command, inside the trial's sandbox,
against the trial's copy of the program:

    python evo_peer_evaluate.py openevolve evaluator.py initial_program.py [--stage 1]
    python evo_peer_evaluate.py shinka evaluate.py initial.py

Three processes, so that what the program does cannot reach what the engine reads:

- this one, the runner, holds the engine's result channel (the file descriptor named by
  $EVO_RESULT_FD, taken before any other code runs and never inherited) and runs no code of the
  project: it starts the evaluator's process and writes one record to the channel,
  `{"metrics": {...}, "valid": bool, "error": str, "artifacts": {...}, "program": how}`;
- the evaluator's process imports the evaluator by path and calls it the way the peer does. An
  audit hook installed first tells the runner, before the program's code could run, when the
  program is opened there ("program and evaluator share a process": true of an evaluator that
  imports the program itself, as OpenEvolve's do) or when the evaluator starts processes of
  its own;
- ShinkaEvolve's `run_shinka_eval` is ours here: it calls the program's function in a process
  of its own (a nested bubblewrap sandbox without capabilities, which sees nothing it could
  write but its own /tmp) and takes the function's result back as data (JSON: numbers, text,
  lists, tuples, dicts, numpy arrays), never as a pickle of the program's objects; the
  evaluator's own `validate_fn` and `aggregate_metrics_fn` then judge that data.

Nothing the program prints counts: the engine reads the channel only. Run by hand (no
$EVO_RESULT_FD), the record is printed as a last `EVO_RESULT {...}` line. It imports nothing of
evoresearch: it must run with whatever interpreter the trial has.
"""

import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
import types

PREFIX = "EVO_RESULT "
CHANNEL = "EVO_RESULT_FD"  # the engine's result channel, a file descriptor this runner is handed
# How the program ran, as the trial's provenance says it.
APART = "program sandboxed apart from the evaluator"
OWN_PROCESS = "program run in a process of its own (bwrap could not sandbox it apart from the evaluator)"
SHARED = "program and evaluator share a process"
STARTED = "the evaluator ran processes of its own, not sandboxed apart from it"
NOT_RUN = "program never ran in the evaluator's process"
RESULT_LIMIT = 64 << 20  # bytes of a process's result read
DEFAULT_METRICS_ON_ERROR = {"combined_score": 0.0, "execution_time_mean": 0.0, "execution_time_std": 0.0,
                            "num_successful_runs": 0, "num_valid_runs": 0, "num_invalid_runs": 0,
                            "all_validation_errors": []}

# Taken before any evaluator or program code runs: replacing json's functions later changes nothing here.
_encode = json.JSONEncoder(default=str).encode
_decode = json.JSONDecoder().decode


def load(path, name="peer_evaluator"):
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the evaluator may import its neighbours
    spec = importlib.util.spec_from_file_location(name, path)
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
    return {str(k): v if isinstance(v, str) else _encode(v) for k, v in (mapping or {}).items()}


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
                target.update(_decode(f.read()))
    record = {"metrics": numbers({k: v for k, v in metrics.items() if k not in ("text_feedback", "extra_data")}, {}),
              "artifacts": texts({k: metrics[k] for k in ("text_feedback",) if metrics.get(k)})}
    if "correct" in correct:
        record["correct"] = bool(correct["correct"])
    if correct.get("error"):
        record["error"] = str(correct["error"])
    return record


# --- data, not objects: what crosses between the program's process and the evaluator's ---------------

def to_data(value, depth=0):
    """`value` as JSON-ready data, its types tagged (a tuple stays a tuple, an array an array);
    TypeError for anything that is not numbers, text, bytes, lists, tuples, sets, dicts or numpy arrays."""
    if depth > 64:
        raise TypeError("a value nested more than 64 deep")
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        value = float.__float__(value)
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple, set, frozenset)):
        tag = "list" if isinstance(value, list) else "tuple" if isinstance(value, tuple) else "set"
        return {tag: [to_data(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[to_data(k, depth + 1), to_data(v, depth + 1)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "biuf":
        if type(value).__name__ == "ndarray":
            return {"ndarray": [value.dtype.str, list(value.shape), to_data(value.tolist(), depth + 1)]}
        return {"numpy": [value.dtype.str, to_data(value.item(), depth + 1)]}
    raise TypeError(f"a {type(value).__name__} object, which is not data (numbers, text, lists, tuples, dicts, "
                    "numpy arrays of numbers)")


def from_data(data, depth=0):
    """What `to_data` made, back (numpy arrays only of numbers and booleans); ValueError otherwise."""
    if depth > 66:
        raise ValueError("data nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if not isinstance(data, dict) or len(data) != 1:
        raise ValueError(f"not data this runner wrote: {str(data)[:80]}")
    (tag, body), = data.items()
    if tag in ("list", "tuple", "set") and isinstance(body, list):
        items = [from_data(v, depth + 1) for v in body]
        return items if tag == "list" else tuple(items) if tag == "tuple" else set(items)
    if tag == "dict" and isinstance(body, list):
        return {from_data(k, depth + 1): from_data(v, depth + 1) for k, v in body}
    if tag == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "bytes" and isinstance(body, str):
        return bytes.fromhex(body)
    if tag in ("ndarray", "numpy") and isinstance(body, list):
        import numpy

        dtype = numpy.dtype(body[0])
        if dtype.kind not in "biuf":
            raise ValueError(f"an array of {dtype}, not of numbers")
        if tag == "numpy":
            return dtype.type(from_data(body[1], depth + 1))
        return numpy.array(from_data(body[2], depth + 1), dtype=dtype).reshape([int(n) for n in body[1]])
    raise ValueError(f"not data this runner wrote: {str(data)[:80]}")


# --- the program's process ------------------------------------------------------------------------

def program_process(argv):
    """Calls the program's function once per set of keyword arguments read from stdin; writes the
    results (or why there are none) to the file descriptor argv[0], as data."""
    fd, program, function = int(argv[0]), argv[1], argv[2]
    os.set_inheritable(fd, False)
    calls = from_data(_decode(sys.stdin.read()))
    try:
        module = load(program, "program")
        fn = getattr(module, function, None)
        if fn is None:
            raise AttributeError(f"Experiment function '{function}' not found in {program}")
        runs = []
        for kwargs in calls:
            started = time.perf_counter()
            result = fn(**kwargs)
            runs.append([to_data(result), time.perf_counter() - started])
        out = {"runs": runs}
    except BaseException as e:  # the program's failure is its run's: the evaluator's defaults say so
        traceback.print_exc(file=sys.stdout)
        out = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.flush()
    _write_all(fd, _encode(out).encode())
    return 0


def _sandbox_prefix(program):
    """bwrap arguments that run a command apart from the evaluator (no capabilities, nothing writable
    but its own /tmp), or [] where bwrap cannot run here."""
    binary = shutil.which("bwrap")
    if binary is None:
        return []
    # /proc is bound, not mounted: a fresh one cannot be mounted inside the trial's sandbox.
    args = [binary, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/",
            "--ro-bind", "/proc", "/proc", "--dev", "/dev"]
    home = os.path.dirname(program)
    emptied = [os.path.realpath(f) for f in dict.fromkeys(("/tmp", os.environ.get("TMPDIR")))
               if f and os.path.isdir(f) and os.path.realpath(f) != "/"]
    for folder in emptied:  # its own /tmp; everything else it sees is read-only
        args += ["--tmpfs", folder]
    for shown in dict.fromkeys(os.path.realpath(p) for p in (home, sys.prefix, sys.base_prefix)):
        if any(shown == f or shown.startswith(f + os.sep) for f in emptied):  # under an emptied folder: shown again
            args += ["--ro-bind", shown, shown]
    args += ["--chdir", home]
    try:
        ok = subprocess.run(args + ["--", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return args + ["--"] if ok else []


def call_apart(program, function, calls):
    """[(result, seconds)] of the program's `function` called with each of `calls` (keyword
    arguments) in a process of its own; RuntimeError (why) when that process gave none."""
    request = _encode(to_data(list(calls))).encode()
    _OWN_SPAWN[0] = True
    try:
        prefix = _sandbox_prefix(os.path.abspath(program))
        _NOTICES.send("apart-bwrap" if prefix else "apart-plain")
        ours, theirs = os.pipe()
        try:
            proc = subprocess.Popen(prefix + [sys.executable, os.path.abspath(__file__), "--program", str(theirs),
                                              os.path.abspath(program), function],
                                    stdin=subprocess.PIPE, pass_fds=(theirs,), start_new_session=True)
        finally:
            os.close(theirs)
    finally:
        _OWN_SPAWN[0] = False
    try:
        proc.stdin.write(request)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    data = _read_all(ours)
    code = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind (in a sandbox, its PID namespace ends it)
    except OSError:
        pass
    try:
        out = _decode(data.decode()) if data else None
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise RuntimeError("the program's process handed back something that is not JSON") from None
    if not isinstance(out, dict) or ("runs" not in out and "error" not in out):
        raise RuntimeError(f"the program's process ended without handing back a result (exit code {code})")
    if "error" in out:
        raise RuntimeError(str(out["error"]))
    runs = out["runs"]
    if not isinstance(runs, list) or len(runs) != len(calls) or not all(isinstance(r, list) and len(r) == 2 for r in runs):
        raise RuntimeError("the program's process handed back a result of another shape")
    try:
        return [(from_data(result), float(seconds)) for result, seconds in runs]
    except (ValueError, TypeError, RecursionError) as e:
        raise RuntimeError(f"the program's result is not data: {e}") from None


def run_shinka_eval(program_path, results_dir, experiment_fn_name="run_experiment", num_runs=1,
                    get_experiment_kwargs=None, aggregate_metrics_fn=None, validate_fn=None,
                    default_metrics_on_error=None, **ignored):
    """ShinkaEvolve's evaluation contract (shinka.core.run_shinka_eval), with the program apart: its
    `experiment_fn_name` runs `num_runs` times in a process of its own; each result, handed back as
    data, goes through `validate_fn` (-> (valid, error)) and all of them through
    `aggregate_metrics_fn` (-> metrics) here. Writes metrics.json and correct.json to `results_dir`
    and returns (metrics, correct, first error)."""
    defaults = dict(default_metrics_on_error or DEFAULT_METRICS_ON_ERROR)
    correct, first_error = True, None
    try:
        calls = [dict(get_experiment_kwargs(i)) if get_experiment_kwargs else {"seed": i + 1} for i in range(num_runs)]
        runs = call_apart(program_path, experiment_fn_name, calls)
        results, seconds = [r for r, _ in runs], [s for _, s in runs]
        errors, valid = [], 0
        for result in results if validate_fn else ():
            ok, message = validate_fn(result)
            if ok:
                valid += 1
                continue
            correct = False
            if message and first_error is None:
                first_error = f"Validation failed: {message}"
            if message and message not in errors:
                errors.append(message)
        metrics = dict(aggregate_metrics_fn(results)) if aggregate_metrics_fn else {"num_successful_runs": len(results)}
        metrics["execution_time_mean"] = statistics.fmean(seconds) if seconds else 0.0
        metrics["execution_time_std"] = statistics.pstdev(seconds) if seconds else 0.0
        if validate_fn:
            metrics.update(num_valid_runs=valid, num_invalid_runs=len(results) - valid, all_validation_errors=errors)
    except Exception as e:  # as ShinkaEvolve does: the defaults, not correct, and why
        print(f"Evaluation error: {e}", flush=True)
        metrics = {k: defaults.get(k, v) for k, v in DEFAULT_METRICS_ON_ERROR.items()}
        correct, first_error = False, str(e)
    metrics.pop("extra_data", None)  # a pickle in ShinkaEvolve: nothing here
    os.makedirs(results_dir, exist_ok=True)
    for name, payload in (("correct.json", {"correct": correct, "error": first_error}), ("metrics.json", metrics)):
        with open(os.path.join(results_dir, name), "w") as f:
            f.write(_encode(payload))
    return metrics, correct, first_error


def _install_shinka():
    """`shinka.core.run_shinka_eval` is ours in the evaluator's process, installed or not (the real one
    imports the program into the evaluator's process)."""
    package, core = types.ModuleType("shinka"), types.ModuleType("shinka.core")
    package.__path__ = []
    wrap = types.ModuleType("shinka.core.wrap_eval")
    for module in (core, wrap):
        module.run_shinka_eval = run_shinka_eval
        module.DEFAULT_METRICS_ON_ERROR = dict(DEFAULT_METRICS_ON_ERROR)
    package.core, core.wrap_eval, core.__path__ = core, wrap, []
    sys.modules.update({"shinka": package, "shinka.core": core, "shinka.core.wrap_eval": wrap})


# --- the evaluator's process ----------------------------------------------------------------------

class _Notices:
    """Lines to the runner on the evaluator process's own descriptor, each sent once."""

    def __init__(self):
        self.fd, self.sent = None, set()

    def send(self, notice, **fields):
        if self.fd is None or (notice in self.sent and not fields):
            return
        self.sent.add(notice)
        _write_all(self.fd, (_encode({"notice": notice, **fields}) + "\n").encode())


_NOTICES = _Notices()
_OWN_SPAWN = [False]  # True while run_shinka_eval starts the program's process (not the evaluator's own)


def _watch(program):
    """An audit hook that tells the runner when the program (or bytecode of it) is opened in this
    process, before its code can run, and when the evaluator starts a process."""
    real = os.path.realpath(program)
    folder, stem = os.path.dirname(real), os.path.splitext(os.path.basename(real))[0] + "."
    cache = os.path.join(folder, "__pycache__")

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)) and _NOTICES.fd is not None:
            path = os.fsdecode(args[0])
            if os.path.basename(path).startswith(stem):
                path = os.path.realpath(path)
                if path == real or (os.path.dirname(path) == cache and os.path.basename(path).startswith(stem)):
                    _NOTICES.send("shared")
        elif event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn") and not _OWN_SPAWN[0]:
            _NOTICES.send("started")

    sys.addaudithook(hook)


def evaluator_process(argv):
    """Runs the evaluator (argv: fd kind evaluator program stage results_dir); notices and the record
    go to the file descriptor argv[0]."""
    fd, kind, evaluator, program, stage, results_dir = int(argv[0]), argv[1], argv[2], argv[3], int(argv[4]), argv[5]
    os.set_inheritable(fd, False)
    _undumpable()
    _NOTICES.fd = fd
    _watch(program)
    _install_shinka()
    try:
        record = openevolve(evaluator, program, stage) if kind == "openevolve" else shinka(evaluator, program, results_dir)
        code = 0
    except BaseException as e:  # the evaluator's failure is the trial's: say why, exit non-zero
        traceback.print_exc(file=sys.stdout)
        why = str(e) if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
        record, code = {"valid": False, "error": why}, 1
    sys.stdout.flush()
    _write_all(fd, (_encode({"record": record, "code": code}) + "\n").encode())
    return code


# --- the runner -----------------------------------------------------------------------------------

def _take_channel():
    """The engine's result channel, or None when run by hand: never inherited, its number gone from
    the environment the evaluator's process starts with."""
    value = os.environ.pop(CHANNEL, None)
    if not value:
        return None
    fd = int(value)
    os.set_inheritable(fd, False)
    return fd


def _undumpable():
    """No other process of the sandbox may open this one's descriptors or memory (/proc/PID/fd, ptrace):
    the program's process runs without the capability that would override this."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def how_the_program_ran(notices):
    if "shared" in notices:
        return SHARED
    if "started" in notices:
        return STARTED
    if "apart-plain" in notices:
        return OWN_PROCESS
    if "apart-bwrap" in notices:
        return APART
    return NOT_RUN


def evaluate(kind, evaluator, program, stage):
    """The record of one evaluation, the evaluator run in a process of its own; its exit code."""
    scratch = os.environ.get("EVO_SCRATCH") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "evo-results")
    ours, theirs = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--evaluator", str(theirs), kind, evaluator,
                                 program, str(stage), os.path.join(scratch, "results")], pass_fds=(theirs,))
    finally:
        os.close(theirs)
    data = _read_all(ours)
    code = proc.wait()
    notices, record = set(), None
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            message = _decode(line)
        except ValueError:
            notices.add("shared")  # not a line the evaluator's process writes: something else wrote there
            continue
        if isinstance(message, dict) and isinstance(message.get("notice"), str):
            notices.add(message["notice"])
        elif isinstance(message, dict) and isinstance(message.get("record"), dict):
            record = message["record"]
    if record is None:
        why = f"the evaluator's process ended without handing over a result (exit code {code})"
        record, code = {"valid": False, "error": why}, code or 1
    record["program"] = how_the_program_ran(notices)
    return record, (1 if code else 0)


def main(argv):
    if argv[:1] == ["--program"]:
        return program_process(argv[1:])
    if argv[:1] == ["--evaluator"]:
        return evaluator_process(argv[1:])
    channel = _take_channel()  # first: before anything of the project runs
    _undumpable()
    kind, evaluator, program = argv[:3]
    stage = int(argv[argv.index("--stage") + 1]) if "--stage" in argv else 0
    record, code = evaluate(kind, os.path.abspath(evaluator), os.path.abspath(program), stage)
    text = _encode(record)
    if channel is None:
        print(PREFIX + text, flush=True)
    else:
        _write_all(channel, (text + "\n").encode())
        os.close(channel)
    return code


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _read_all(fd):
    chunks, size = [], 0
    with os.fdopen(fd, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            if size < RESULT_LIMIT:
                chunks.append(chunk)
                size += len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
