"""Any project as a target: your files, your command, your metric.

The mutable files (a list or globs) are the genome; every other file of the project is
the fixed harness, copied once at creation and into every trial. The run command runs in
the trial's sandbox with the budget enforced from outside; the metric is read from its
output (`metric: value` lines, or a pattern), or, with an evaluation command, from what
that command prints when it runs afterwards in a sandbox of its own over the trial's
folder (read-only). Records say which: "self-reported" or "evaluated".

    evo init fork --project ~/autoresearch --mutable train.py --run "python train.py" \
        --metric val_bpb --budget 600 --read ~/.cache/autoresearch
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

from evo.slots import Slot
from evo.runner import CommandEvaluator, DataFiles, MetricEvaluator, TrialRunner, trial_environment
from evo.targets._base import Target, read_paths
from population.search import Search, SearchError

DEFAULT_BUDGET = 300.0
# Never part of a project's harness: version control, environments, caches, search folders.
SKIPPED = {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".env", "node_modules", ".mypy_cache",
           ".pytest_cache", ".ruff_cache", ".tox", ".ipynb_checkpoints", "runs", ".evo"}
HARNESS_LIMIT = 200 << 20  # bytes of harness files: a project bigger than this is not a small target

PROGRAM_TEMPLATE = """# Research program

You are one researcher in a population of genomes: each is a version of the files you may
change, run under exactly the same conditions, and scored by one number.

## The task

Make the project reach the **{better} `{metric}`** ({direction}d). Every trial runs

    {run}

with a fixed budget of {budget:g} seconds, enforced from outside; the score is {scored}.

## What you may change

{mutable}

Everything else in the project is the fixed harness: it is copied fresh into every trial,
read-only, and edits to it are rejected.

## How to judge an idea

- One focused idea per child, with a one-line description and a short rationale.
- Simpler is better at equal score.
- Learn from the record of what was tried; do not retry a failed idea without saying why.
"""


def expand_mutable(project: Path, patterns: list[str]) -> list[str]:
    """Project-relative paths of the files `patterns` (names or globs) match; SearchError when one is
    outside the project or matches nothing."""
    found: list[str] = []
    for pattern in patterns:
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise SearchError(f"`mutable` {pattern!r} is outside the project {project}; name files inside it")
        matches = sorted(p for p in project.glob(pattern) if p.is_file() and not SKIPPED & set(p.relative_to(project).parts))
        if not matches:
            raise SearchError(f"`mutable` {pattern!r} matches no file in {project}")
        found += [str(p.relative_to(project)) for p in matches]
    return list(dict.fromkeys(found))


def project_harness(project: Path, mutable: list[str]) -> dict[str, bytes]:
    """Every file of the project that is not mutable (nor a cache, environment or repository)."""
    files, total = {}, 0
    for path in sorted(project.rglob("*")):
        rel = path.relative_to(project)
        if not path.is_file() or SKIPPED & set(rel.parts) or str(rel) in mutable or path.suffix == ".pyc":
            continue
        total += path.stat().st_size
        if total > HARNESS_LIMIT:
            raise SearchError(f"the project's fixed files pass {HARNESS_LIMIT >> 20} MB (at {rel}): keep data out of "
                              "the project folder and give it to trials with `read` FOLDER")
        files[str(rel)] = path.read_bytes()
    return files


def check_pattern(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise SearchError(f"`metric_pattern` {pattern!r} does not compile: {e}") from None
    if compiled.groups != 1:
        raise SearchError(f"`metric_pattern` {pattern!r} needs exactly one (group) around the number, "
                          f"it has {compiled.groups}")


def check_command(flag: str, command: str, project: Path, added: dict[str, bytes] | None = None) -> list[str]:
    """The words of a command line, checked: its program exists on PATH, in the project, or in `added`."""
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise SearchError(f"{flag} {command!r} is not a valid command line: {e}") from None
    words_left = [w for w in words if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]  # skip VAR=value prefixes
    if not words_left:
        raise SearchError(f"{flag} is empty: give the command that runs a trial, e.g. `run` 'python train.py'")
    program = words_left[0]
    if program == "{python}":  # the interpreter trials run with, filled in when they run
        return words
    if "/" in program:
        if not (project / program).exists() and not Path(program).exists() and program not in (added or {}):
            raise SearchError(f"{flag}: {program} does not exist (relative paths are inside the project {project})")
    elif shutil.which(program) is None:
        raise SearchError(f"{flag}: the program {program!r} is not on PATH; install it or name it by its full path")
    return words


def command_config(project: Path, *, run: str | None, metric: str, direction: str, pattern: str | None,
                   evaluate: str | None, budget: float | None, mutable: list[str],
                   added: dict[str, bytes] | None = None, quick: str | None = None,
                   threshold: float | None = None, channel: bool = False) -> tuple[dict, dict[str, bytes], list[str]]:
    """The configuration fields, harness files and mutable files of a command target, checked.

    run: the trial's command; None when the evaluation command does all the work.
    evaluate: may name the program (`{program}`, or a mutable file as an argument), never run it.
    added: files of ours to add to the harness (the runner script of a peer's evaluator).
    channel: the evaluation command writes its result to $EVO_RESULT_FD; its output counts for nothing."""
    check_pattern(pattern)
    if run is not None:
        check_command("`run`", run, project)
    mutable = expand_mutable(project, mutable)
    if (quick is None) != (threshold is None):
        raise SearchError("`evaluate_quick` and `quick_threshold` go together: give both, or neither")
    if quick is not None and evaluate is None:
        raise SearchError("`evaluate_quick` is a first stage of `evaluate`: give the full evaluation command too")
    for flag, command in (("`evaluate`", evaluate), ("`evaluate_quick`", quick)):
        if command is not None:
            _check_evaluator(flag, command, project, mutable, added)
    harness = {**project_harness(project, mutable), **(added or {})}
    fields = dict(profile="command", budget=float(budget or DEFAULT_BUDGET), data="", startup_grace=0.0,
                  evaluation="evaluated" if evaluate else "self-reported", metric=metric, direction=direction,
                  target={"kind": "command", "run": run, "pattern": pattern, "evaluate": evaluate,
                          **({"evaluate_quick": quick, "quick_threshold": threshold} if quick else {}),
                          **({"result_channel": True} if channel and evaluate else {})})
    return fields, harness, mutable


def _check_evaluator(flag: str, command: str, project: Path, mutable: list[str], added: dict | None) -> None:
    """The evaluator may be handed the program (an argument), but must not be it: what scores a
    trial cannot be what the trial changes."""
    words = [w for w in check_command(flag, command, project, added) if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
    interpreter = words[0] == "{python}" or Path(words[0]).name.startswith(("python", "bash", "sh"))
    runs = words[:2] if interpreter and len(words) > 1 else words[:1]
    for word in runs:
        if word.removeprefix("./") in mutable or word == "{program}":
            raise SearchError(f"{word} is run by {flag}, so it cannot be mutable: drop it from `mutable` (an "
                              "evaluator may take the program as an argument: {program})")


def program_command(command: str, mutable: list[str], python: str) -> str:
    """The evaluation command with `{program}` replaced by the (first) mutable file's path, and
    `{python}` by the interpreter trials run with."""
    command = command.replace("{python}", shlex.quote(python))
    return command.replace("{program}", shlex.quote(mutable[0])) if mutable else command


def program_template(*, run: str, metric: str, direction: str, budget: float, mutable: list[str],
                     evaluate: str | None) -> str:
    """A starting program.md for a project that has none (the user is told to edit it)."""
    scored = (f"what `{evaluate}` prints afterwards (it runs apart from your code)" if evaluate
              else f"the last `{metric}` line the run prints")
    run = run or f"{evaluate} (the evaluator runs your program)"
    return PROGRAM_TEMPLATE.format(better="lowest" if direction == "minimize" else "highest", metric=metric,
                                   direction=direction, run=run, budget=budget, scored=scored,
                                   mutable="\n".join(f"- `{m}`" for m in mutable))


class CommandTarget(Target):
    """Any project run by a command (see the module docstring)."""

    kind = "command"

    def runner(self, search: Search, *, python: str = sys.executable) -> TrialRunner:
        cfg, target = self.config, self.config.target
        if target.get("evaluate"):
            quick = target.get("evaluate_quick")
            evaluator = CommandEvaluator(program_command(target["evaluate"], cfg.mutable, python), cfg.metric,
                                         target.get("pattern"), quick=quick and program_command(quick, cfg.mutable, python),
                                         threshold=target.get("quick_threshold"), direction=cfg.direction,
                                         channel=bool(target.get("result_channel")))
        else:
            spec = search.objectives  # the run's other objectives and constrained metrics are read too
            evaluator = MetricEvaluator(cfg.metric, target.get("pattern"),
                                        also=[*spec.names[1:], *(c.metric for c in spec.constraints)])
        return TrialRunner(executor=self.executor(search, python=python), evaluator=evaluator, harness=search.harness,
                           harness_dir=search.paths.harness, data=DataFiles(), command=["bash", "-c", target.get("run") or ":"],
                           python=python, network=cfg.allow_network, eval_limit=cfg.eval_limit, read=read_paths(cfg),
                           compile_cache=self.compile_cache(search))

    def owns_process(self, cmdline: bytes) -> bool:
        """A trial runs `bash -c RUN` (in its sandbox): RUN is in its command line, or, where bash ran a
        simple command in its own place, that command's words are."""
        run = self.config.target.get("run")
        if not run:
            return False
        words = [w for w in shlex.split(run) if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
        return run.encode() in cmdline or ("\0".join(words) + "\0").encode() in cmdline

    def environment(self, search: Search, *, slot: Slot, seed: int) -> dict[str, str]:
        cfg = self.config
        return trial_environment(profile=cfg.profile, budget=cfg.budget, seed=seed, device=slot.device,
                                 threads=slot.threads)

    def timeout(self) -> float:
        """The whole run, start-up included, gets the budget."""
        return self.config.budget + self.config.startup_grace
