"""What every `evo` subcommand shares: argument types and groups, name resolution, output lines, signals.

The command modules import this one and never each other.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Callable

from analysis.text import fmt
from evo.targets import HARNESS_GENOME
from population.errors import ConfigError
from population.store import NO_LIMIT, TrialStatus

EXIT_USAGE = 2


# Library parameters as the command line spells them: library messages name parameters, and the command
# line shows its flags. A message writes a parameter in backquotes (`trials`, `cache_dir`): backquotes mark
# code, so an ordinary word ("trials", "storage") or a server's own text ("max_tokens: 20000 > 16384") is
# never taken for one. The first five are also recognised bare (min_gain auto), as their messages have
# always written them; no other text spells them. Two names are not the parameter's own: `objective` is
# one item of `objectives` (the flag is given once per item), and `timeout` is the proposers' (--proposer-timeout).
PARAMETER_FLAGS = {
    "min_gain": "--min-gain", "noise_runs": "--noise-runs", "promote_top": "--promote-top",
    "max_vram_gb": "--max-vram-gb", "max_cost_usd": "--max-cost-usd",
    # evo.RunOptions, evo.promotion, evo.devices
    "trials": "--trials", "hours": "--hours", "reeval": "--reeval", "promote": "--promote", "devices": "--devices",
    # evo.create_search and its targets
    "project": "--project", "budget": "--budget", "mutable": "--mutable", "data": "--data", "storage": "--storage",
    "remote": "--remote", "heartbeat": "--heartbeat", "grace": "--grace", "cache_dir": "--cache-dir",
    "sandbox": "--sandbox", "read": "--read", "run": "--run", "metric": "--metric", "direction": "--direction",
    "metric_pattern": "--metric-pattern", "evaluate": "--evaluate", "evaluate_quick": "--evaluate-quick",
    "quick_threshold": "--quick-threshold", "objective": "--objective",
    # evo.proposers.from_spec and the proposers
    "proposer": "--proposer", "model": "--model", "base_url": "--base-url", "openai_model": "--openai-model",
    "agent_command": "--agent-command", "prices": "--prices", "timeout": "--proposer-timeout",
    "context_tokens": "--context-tokens", "max_tokens": "--max-tokens",
    # evo.compare
    "strategies": "--strategies", "seeds": "--seeds", "searches": "--searches",
}
_BARE = ("min_gain", "noise_runs", "promote_top", "max_vram_gb", "max_cost_usd")
_PARAMETER = re.compile(r"`(" + "|".join(PARAMETER_FLAGS) + r")`|\b(" + "|".join(_BARE) + r")\b")


def as_flags(message: str) -> str:
    """A library message with the parameters it names written as this command line's flags."""
    return _PARAMETER.sub(lambda m: PARAMETER_FLAGS[m.group(1) or m.group(2)], message)


class UsageError(ConfigError):
    """A bad argument or state the user can fix; printed as one line with exit code 2."""


# -- argument types ---------------------------------------------------------------------

def _number(convert, what: str, valid, rule: str):
    """An argparse type: `convert` the text, then check it with `valid`; errors name the rule broken."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text}")
        return value
    return parse


positive_int = _number(int, "a whole number", lambda v: v >= 1, "a number >= 1")
non_negative_int = _number(int, "a whole number", lambda v: v >= 0, "a number >= 0")
positive_float = _number(float, "a number", lambda v: math.isfinite(v) and v > 0, "a positive number")
probability = _number(float, "a probability", lambda v: 0 <= v <= 1, "a probability in [0, 1]")
_trials = _number(int, "a whole number or 'none'", lambda v: v >= 1, "a number >= 1 or 'none'")
_gain = _number(float, "'auto' or a number", lambda v: math.isfinite(v) and v >= 0, "'auto' or a number >= 0")


def trial_limit(text: str) -> int:
    """An argparse type for --trials: a number >= 1, or "none" (NO_LIMIT: lifts the limit set before)."""
    return NO_LIMIT if text.strip().lower() == "none" else _trials(text)


def min_gain(text: str) -> float | str:
    """An argparse type for --min-gain: "auto" or a number >= 0."""
    return "auto" if text.strip().lower() == "auto" else _gain(text)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- argument groups ----------------------------------------------------------------------

def add_root(p) -> None:
    p.add_argument("--root", default="runs", help="folder holding the searches (default: runs)")


def add_creation(p) -> None:
    g = p.add_argument_group("fixed when the search is created", "given again on resume, each must say what the "
                             "search was created with (else a one-line error), except --cache-dir, which may change")
    g.add_argument("--profile", choices=("tiny", "cpu", "gpu"), help="task profile (default: gpu with CUDA, else cpu)")
    g.add_argument("--budget", type=positive_float, help="seconds of counted training per trial (default: the profile's)")
    g.add_argument("--mutable", nargs="+", metavar="FILE", help="files (or quoted globs, with --run) the search may "
                   "change (default: train.py); every other file of the project is the fixed harness")
    g.add_argument("--data", help="data source: shakespeare (embedded, default), a folder of .txt/.parquet, or climbmix")
    g.add_argument("--storage", help="Optuna storage URL (default: sqlite in the search folder; postgresql://... to share)")
    g.add_argument("--remote", metavar="GIT_URL", help="share the search between hosts: the population's git remote "
                   "(a path on a shared disk, file://, ssh:// or git://; a missing local path becomes a bare repository); "
                   "needs a postgresql:// --storage; each host then runs `evo worker NAME`")
    g.add_argument("--heartbeat", type=positive_int, metavar="SECONDS",
                   help="with --remote: seconds between heartbeats of a running trial (default: 10)")
    g.add_argument("--grace", type=positive_int, metavar="SECONDS",
                   help="with --remote: seconds without a heartbeat before another worker re-runs a trial (default: 60)")
    g.add_argument("--project", help="folder with train.py, prepare.py and program.md (default: .)")
    g.add_argument("--cache-dir", help="data and tokenizer cache (default: $EVO_CACHE or ~/.cache/evoresearch); "
                   "given on resume, the search uses this one from then on")
    g.add_argument("--seed", type=non_negative_int, help="base random seed of the trials (default: 0)")
    g.add_argument("--sandbox", choices=("auto", "bwrap", "none"),
                   help="where trials run: bwrap (each in a bubblewrap sandbox: no network, nothing of the search "
                   "visible), none (plain processes: a genome could fake its score; every record says so), auto "
                   "(default: bwrap when it works on this machine)")
    g.add_argument("--allow-network", action="store_true", help="let trials reach the network (off by default)")
    g.add_argument("--read", action="append", default=[], metavar="FOLDER",
                   help="a folder outside the project that trials may read, e.g. ~/.cache/autoresearch (repeatable)")
    g.add_argument("--objective", action="append", default=[], metavar="NAME[:min|max]",
                   help="optimise several numbers at once (repeat; the first is the metric): e.g. --objective val_bpb "
                   "--objective params:min; genomes are ranked by Pareto dominance and `evo status` lists the front. "
                   "The harness allows only numbers measured outside the genome: val_bpb, params, forward_ms, "
                   "peak_memory_mb, cpu_seconds, training_seconds")
    g.add_argument("--constraint", action="append", default=[], metavar="NAME<=X|NAME>=X",
                   help="a bound on a recorded metric, e.g. 'peak_memory_mb<=40000': trials beyond it are never "
                   "parents nor the best (repeatable)")
    t = p.add_argument_group("any project (instead of evoresearch's harness)",
                             "evolve your own files with your own command and metric, e.g. an autoresearch fork: "
                             "--run 'python train.py' --metric val_bpb --budget 600 --read ~/.cache/autoresearch")
    t.add_argument("--run", metavar="CMD", help="the command that runs a trial, in the project's copy (e.g. "
                   "'uv run train.py'); the budget (--budget, default 300 s) covers the whole run")
    t.add_argument("--metric", help="the score's name (default: val_bpb), read from 'NAME: value' lines of the output")
    t.add_argument("--direction", choices=("minimize", "maximize"), help="minimize (default) or maximize the metric")
    t.add_argument("--metric-pattern", metavar="REGEX", help="read the metric with this regex instead (its one "
                   "group is the number), e.g. 'score=([0-9.]+)'")
    t.add_argument("--evaluate", metavar="CMD", help="a command of the project that scores a trial afterwards, in a "
                   "sandbox of its own over the trial's folder (read-only); its output gives the metric ('evaluated' "
                   "instead of 'self-reported'), every 'NAME: number' line another metric, and an 'EVO_RESULT {json}' "
                   "line metrics, validity and text artifacts; a non-zero exit fails the trial; {program} is replaced "
                   "by the mutable file's path; without --run it does all the work")
    t.add_argument("--evaluate-quick", metavar="CMD", help="a cheaper stage-1 evaluation run before --evaluate: a "
                   "program whose metric there is worse than --quick-threshold stops (pruned)")
    t.add_argument("--quick-threshold", type=float, metavar="X", help="the stage-1 value a program must reach")
    t.add_argument("--from-openevolve", metavar="DIR", help="take an OpenEvolve project as it is: initial_program.py "
                   "(its EVOLVE-BLOCKs evolve), evaluator.py (evaluate(program_path)) and config.yaml's settings "
                   "where they map (see the README)")
    t.add_argument("--from-shinka", metavar="DIR", help="take a ShinkaEvolve project as it is: initial.py, evaluate.py "
                   "(main(program_path, results_dir) writing metrics.json and correct.json), and config.yaml if any")


def peer_project(args):
    """The OpenEvolve or ShinkaEvolve project --from-openevolve / --from-shinka names (None without either)."""
    from evo.targets import read_peer

    given = [(kind, folder) for kind, folder in (("openevolve", getattr(args, "from_openevolve", None)),
                                                 ("shinka", getattr(args, "from_shinka", None))) if folder]
    if len(given) > 1:
        raise UsageError("--from-openevolve and --from-shinka exclude each other: give one")
    if not given:
        return None
    if args.mutable or args.evaluate or args.project is not None:
        raise UsageError(f"--from-{given[0][0]} takes the program, the evaluator and the folder from the project: "
                         "drop --mutable, --evaluate and --project")
    return read_peer(*given[0])


def creation_kwargs(args) -> dict:
    """`evo.create_search` keyword arguments from the creation flags."""
    peer = peer_project(args)
    if peer is not None:
        return dict(_plain_creation_kwargs(args), project=peer.folder, mutable=[peer.program_file],
                    evaluate=peer.evaluate, metric=args.metric or peer.metric, direction=args.direction or peer.direction,
                    program=peer.program, added=peer.runner_files(), eval_limit=peer.eval_limit, result_channel=True,
                    evaluate_quick=args.evaluate_quick or peer.quick,
                    quick_threshold=args.quick_threshold if args.evaluate_quick else peer.threshold)
    return _plain_creation_kwargs(args)


def _plain_creation_kwargs(args) -> dict:
    return dict(root=args.root, project=args.project or ".", profile=args.profile, budget=args.budget,
                mutable=args.mutable or [HARNESS_GENOME], data=args.data, storage=args.storage, cache_dir=args.cache_dir,
                seed=args.seed if args.seed is not None else 0, sandbox=args.sandbox or "auto",
                allow_network=args.allow_network,
                run=args.run, metric=args.metric, direction=args.direction, metric_pattern=args.metric_pattern,
                evaluate=args.evaluate, read=args.read, evaluate_quick=getattr(args, "evaluate_quick", None),
                quick_threshold=getattr(args, "quick_threshold", None),
                remote=args.remote, heartbeat=args.heartbeat or 10, grace=args.grace or 60,
                objectives=getattr(args, "objective", []), constraints=getattr(args, "constraint", []))


def add_noise_options(g) -> None:
    """--noise-runs and --min-gain, in the argument group `g` (evo run's and evo compare's)."""
    g.add_argument("--noise-runs", type=non_negative_int, metavar="K",
                   help="evaluate the seed on K more seeds before any child, to measure the noise floor (default: 0)")
    g.add_argument("--min-gain", type=min_gain, metavar="auto|X",
                   help="a child counts as better only if it beats the best by more than X val_bpb; auto: "
                   "2 x the measured noise floor (needs --noise-runs K >= 1; default: 0, any gain counts)")


def add_strategy_options(p) -> None:
    e = p.add_argument_group("evolve strategy")
    e.add_argument("--elite", type=positive_int, default=8, help="genomes eligible as parents (default: 8)")
    e.add_argument("--tournament", type=positive_int, default=3, help="tournament size (default: 3)")
    e.add_argument("--crossover-rate", type=probability, default=0.2, help="probability of crossover (default: 0.2)")
    e.add_argument("--islands", type=positive_int, default=1, help="sub-populations (default: 1)")
    e.add_argument("--migration-rate", type=probability, default=0.1,
                   help="chance of a parent from the next island (default: 0.1)")
    e.add_argument("--cross-from", choices=("best", "tournament"), default="tournament",
                   help="who leads a crossover: the best genome, or a tournament winner (default: tournament)")


def strategy_options(args, name: str) -> dict:
    """`evo.make_strategy` keyword options from the evolve flags (only evolve takes any)."""
    if name != "evolve":
        return {}
    return dict(elite=args.elite, tournament=args.tournament, crossover_rate=args.crossover_rate,
                islands=args.islands, migration_rate=args.migration_rate, cross_from=args.cross_from)


def add_proposer_options(p) -> None:
    g = p.add_argument_group("LLM and agent proposers", "anthropic reads its key from ANTHROPIC_API_KEY (and its "
                             "address from ANTHROPIC_BASE_URL if set); keys are never written to the search folder "
                             "nor passed to trials")
    g.add_argument("--model", help="model of the LLM proposer: anthropic (default claude-sonnet-5-5) or "
                   "openai-compatible (required there, unless --openai-model is given)")
    g.add_argument("--base-url", metavar="URL", help="openai-compatible endpoint, e.g. http://localhost:8000/v1 "
                   "(vLLM, llama.cpp, Ollama); default $OPENAI_BASE_URL; a key, if needed, comes from OPENAI_API_KEY")
    g.add_argument("--openai-model", metavar="MODEL", help="model of the openai-compatible proposer when --model "
                   "names the anthropic one (a mix of both)")
    g.add_argument("--openai-mode", choices=("auto", "tools", "json", "text"), default="auto",
                   help="how the openai-compatible model answers: auto (default: function calls, falling back to "
                   "JSON mode, then plain text, as the server allows) or one of them")
    g.add_argument("--agent-command", metavar="CMD", help="command proposer: a shell command run in a scratch copy "
                   "of the parent, with the task on stdin and in EVO_TASK.md; what it leaves in the mutable files "
                   "is the child; it may write a one-line description to the file named by $EVO_DESCRIPTION "
                   "(e.g. 'claude -p \"$(cat EVO_TASK.md)\" --permission-mode acceptEdits')")
    g.add_argument("--prices", metavar="FILE", help="JSON price table, USD per million tokens: "
                   '{"MODEL": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}}; '
                   "adds to or overrides the built-in one (default: $EVO_PRICES)")
    g.add_argument("--context-tokens", type=positive_int, metavar="N",
                   help="the LLM's context in tokens, prompt and answer together (default: 200000 for anthropic; "
                   "for openai-compatible give what the server was started with, e.g. vLLM's --max-model-len or "
                   "llama.cpp's -c): prompts are fitted to it, the memory and then parts of the genome summarised")
    g.add_argument("--max-tokens", type=positive_int, metavar="N",
                   help="the most tokens an LLM answer may have (default: 16000, or a quarter of --context-tokens "
                   "for openai-compatible)")
    g.add_argument("--proposer-timeout", type=positive_float, metavar="SECONDS",
                   help="limit of one LLM call (default 600) or of one agent run (default 1800 for command)")


def build_proposer(spec: str, args):
    """The proposer `--proposer SPEC` and the proposer flags ask for; a bad one is a UsageError."""
    from evo.proposers import SpecError, from_spec

    option = lambda name: getattr(args, name, None)
    try:
        return from_spec(spec, model=option("model"), base_url=option("base_url"),
                         openai_model=option("openai_model"), openai_mode=option("openai_mode") or "auto",
                         agent_command=option("agent_command"), prices=option("prices"),
                         timeout=option("proposer_timeout"), max_cost_usd=option("max_cost_usd"),
                         context_tokens=option("context_tokens"), max_tokens=option("max_tokens"),
                         warn=lambda text: print(f"warning: {as_flags(text)}", file=sys.stderr))
    except SpecError as e:
        raise UsageError(str(e)) from None


def resolve_name(name: str | None, root: str) -> str:
    """The search a command is about: `name`, or the only search in `root`."""
    if name:
        return name
    known = sorted(p.parent.name for p in Path(root).glob("*/search.json"))
    if len(known) == 1:
        return known[0]
    if not known:
        raise UsageError(f"no searches in {Path(root).resolve()}; start one with `evo run NAME`")
    raise UsageError(f"several searches in {root} ({', '.join(known)}); name one")


# -- output -------------------------------------------------------------------------------

def check_output_file(flag: str, path: str) -> Path:
    """`path` as a file to write, once its folder exists and may be written; else a UsageError saying which
    (nothing is created: the file is written after the work that fills it)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; name a file (e.g. {target / 'results.tsv'})")
    folder = target.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if existing != folder:
        what = f"{existing} is a file" if not existing.is_dir() else f"the folder {folder} does not exist"
        raise UsageError(f"{flag} {path}: {what}; create the folder first or name another file")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: {folder} is a file, not a folder; name another file")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{flag} {path}: cannot be written here; name a file in a folder evo may write in")
    return target


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def finished_line(info: dict, *, width: int = 70, metric: str = "val_bpb", kept: str = "new best") -> str:
    """The line a finished trial prints: number, operator, status, score, new-best mark, description, error."""
    status, value = info["status"], info.get("value")
    mark = f" * {kept}" if info.get("kept") else ""
    what = info.get("description") or info.get("operator", "")
    line = f"#{info['trial']:<4} {info.get('operator', ''):9s} {status:9s} {metric} {fmt(value)}{mark}  {what[:width]}"
    if status not in (TrialStatus.OK, TrialStatus.DUPLICATE) and info.get("error"):
        line += f"  ({info['error'][:160]})"
    return line


def exit_code(reason, command: str) -> int:
    """The exit code of a run that stopped for `reason` (an evo.loop.StopReason): 130 when
    interrupted, 1 with its one line on stderr for an error, else 0."""
    from evo.loop import StopKind  # here, not at the top: this module stays light for every command

    if reason.kind == StopKind.INTERRUPTED:
        return 130
    if reason.kind == StopKind.ERROR:
        print(f"evo {command}: error: {as_flags(str(reason))}", file=sys.stderr)
        return 1
    return 0


# -- signals --------------------------------------------------------------------------------

@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None], stopping: Callable[[], bool], message: str,
                    abandon: Callable[[], None] | None = None, say: Callable[[str], None] | None = None):
    """While inside, the first Ctrl-C (or SIGTERM) calls `stop` and says `message`; a second one
    calls `abandon` (kill what runs) and ends the process at once, as a kill -9 would: the next
    run finds its unfinished trials and runs them again. `say` shows a line (default: on stderr;
    a live view shows it in place, since a handler must not print into a view being drawn)."""
    say = say or (lambda line: print(f"\n{line}", file=sys.stderr, flush=True))

    def on_signal(signum, frame):
        if stopping():
            try:
                say("quitting at once: unfinished trials run again on resume")
                if abandon is not None:
                    abandon()
            finally:
                os._exit(130)
        say(message)
        stop()

    previous = signal.signal(signal.SIGINT, on_signal)
    previous_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


# -- failures of the machine ------------------------------------------------------------------

_FULL = ("no space left on device", "database or disk is full", "disk quota exceeded")


def machine_failure(e: BaseException) -> str | None:
    """One line for a failure of the machine rather than of evo (a full disk, a read-only or
    unwritable folder), saying what to do; None for anything else."""
    text = " ".join(str(e).split()).lower()
    where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
    if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(f in text for f in _FULL):
        return (f"the disk is full{where}: free some space, then run the same command again (finished trials are "
                "kept; an unfinished one runs again)")
    if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {e.strerror}; run evo where it may write, or fix the folder's permissions"
    if "attempt to write a readonly database" in text:
        return "the study database is read-only: fix its permissions (or its folder's), then run the command again"
    return None


def quiet_broken_pipe() -> None:
    """The reader of our output went away (`evo status | head`): send what is left to /dev/null,
    so neither this print nor the interpreter's last flush raises again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
