"""A proposer that runs any agent command line in a scratch copy of the parent.

The agent (`claude -p ...`, `codex exec ...`, a script) starts in a fresh folder holding the
parent's mutable files (for a crossover: git's merge of the two parents, conflict markers
included) and the instructions: program.md, the search's memory and the task, in the file
EVO_TASK.md and on its stdin. Whatever it leaves in the mutable files becomes the child;
anything else it writes is ignored. It may write a one-line description (then, on later
lines, its rationale) into the file named by $EVO_DESCRIPTION; without one the description
is derived from the change. A timeout kills its whole process group.

Where the search runs trials in a sandbox, the agent runs in one too: the whole machine
read-only (it needs its own binaries and runtime), its scratch folder writable, a private
HOME and /tmp, and the network (it needs its API); the search folder is masked.
Its environment is the engine's own plus the API keys the engine holds (the agent is the
user's tool and may need them; trials never see them) plus EVO_TASK, EVO_DESCRIPTION,
EVO_MUTABLE (space-separated) and EVO_PARENTS (trial numbers). Any held key that shows up
in its output is redacted from agent.log.
"""

from __future__ import annotations

import difflib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from evo.proposers import _keys as keys
from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError
from evo.proposers._edits import EditError, check_child
from evo.proposers._hyperparams import find_hyperparameters
from evo.proposers._prompts import crossover_prompt, mutation_prompt

TASK_FILE = "EVO_TASK.md"
DESCRIPTION_FILE = ".evo-description"
LOG_LIMIT = 200_000  # characters of the agent's output kept in agent.log (its tail)

ANSWER_IN_FOLDER = (
    "Make the change by editing the mutable files in the current folder, which hold the starting files. "
    "Edit nothing else: other files are ignored. When done, write a one-line description of the change "
    "(e.g. 'raise MATRIX_LR 0.04 -> 0.05') to the file named by the environment variable EVO_DESCRIPTION, "
    f"optionally followed by a few lines of rationale. The task is also in {TASK_FILE}.")


def _describe_change(old: dict[str, str], new: dict[str, str], profile: str | None) -> str:
    """A description for an agent that wrote none: the constants it changed, else the lines it touched."""
    notes, counts = [], []
    for path in sorted(new):
        if old.get(path) == new[path]:
            continue
        a, b = find_hyperparameters(old.get(path, ""), profile), find_hyperparameters(new[path], profile)
        notes += [f"{n} {a[n].text} -> {b[n].text}" for n in sorted(a.keys() & b.keys()) if a[n].text != b[n].text]
        lines = list(difflib.unified_diff(old.get(path, "").splitlines(), new[path].splitlines(), n=0, lineterm=""))
        added = sum(1 for l in lines if l.startswith("+") and not l.startswith("+++"))
        removed = sum(1 for l in lines if l.startswith("-") and not l.startswith("---"))
        counts.append(f"{path} +{added} -{removed}")
    if notes:
        return ", ".join(notes)[:200]
    return "agent edit of " + ", ".join(counts)


class CommandProposer(Proposer):
    """Children written by an external agent command.

    >>> proposer = CommandProposer('claude -p "$(cat EVO_TASK.md)" --allowedTools Edit Write Read')  # doctest: +SKIP

    Args:
        command: a shell command line, run with bash in the scratch folder.
        timeout: seconds the agent may run before its process group is killed.
        name: the name recorded on each trial (default "command").
    """

    def __init__(self, command: str, *, timeout: float = 1800.0, name: str = "command"):
        if not command.strip():
            raise ProposerError("the agent command is empty: give one with `agent_command`")
        self.command, self.timeout, self.name = command, timeout, name
        self._agents: set[subprocess.Popen] = set()   # running now, killed by `close`
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Kill every agent still running (with its helpers): the search stopped."""
        with self._lock:
            self._closed = True
            agents = list(self._agents)
        for proc in agents:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        prompt, start = mutation_prompt(parent, ctx, answer=ANSWER_IN_FOLDER, show_files=False)
        return self._run(prompt.render(), start, ctx, [parent.trial])

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        prompt, start = crossover_prompt(a, b, base, ctx, answer=ANSWER_IN_FOLDER, show_files=False)
        proposal = self._run(prompt.render(), start, ctx, [a.trial, b.trial], crossing=True)
        if proposal.description and not (f"#{a.trial}" in proposal.description and f"#{b.trial}" in proposal.description):
            proposal.description = f"cross #{a.trial} x #{b.trial}: {proposal.description}"
        return proposal

    def _run(self, task: str, start: dict[str, str], ctx: ProposalContext, parents: list[int], *,
             crossing: bool = False) -> Proposal:
        folder = Path(ctx.scratch) if ctx.scratch else Path(tempfile.mkdtemp(prefix="evo-agent-"))
        shutil.rmtree(folder, ignore_errors=True)  # a resumed search may reuse a plan's folder name
        folder.mkdir(parents=True)
        try:
            return self._run_in(folder, task, start, ctx, parents, crossing)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # what is worth keeping goes to the trial folder

    def _start(self, folder: Path, env: dict, out, executor, ctx: ProposalContext) -> subprocess.Popen:
        if executor is None or executor.name == "none":
            return subprocess.Popen(["bash", "-c", self.command], cwd=folder, env=env, stdin=subprocess.PIPE,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        from evo.runner import View
        # The agent is the user's tool: it sees the machine read-only, but not the search folder
        # (the folder holding the scratch folders), nor what the data was made from (it may run the
        # genome), and writes only its scratch copy.
        view = View(write=(folder,), network=True, whole_system=True, hidden=(folder.parent.parent,),
                    read=ctx.training_data, masked=ctx.hidden_data)
        return executor.start(["bash", "-c", self.command], cwd=folder, env=env, view=view, stdin=subprocess.PIPE,
                              stdout=out)

    def _run_in(self, folder: Path, task: str, start: dict[str, str], ctx: ProposalContext, parents: list[int],
                crossing: bool) -> Proposal:
        for path, text in start.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(text)
        (folder / TASK_FILE).write_text(task)
        env = {**os.environ, **keys.held(), "EVO_TASK": str(folder / TASK_FILE),
               "EVO_DESCRIPTION": str(folder / DESCRIPTION_FILE), "EVO_MUTABLE": " ".join(ctx.mutable),
               "EVO_PARENTS": " ".join(str(p) for p in parents)}
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as out:
            with self._lock:
                if self._closed:
                    return Proposal(start, "", ok=False, error="the search stopped before the agent started",
                                    proposer=self.name)
                try:
                    proc = self._start(folder, env, out, ctx.executor, ctx)
                except OSError as e:
                    raise ProposerError(f"cannot start the agent command: {e}") from None
                self._agents.add(proc)
            timed_out = False
            try:
                proc.communicate(task.encode(), timeout=self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the agent's helpers too: its whole process group
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
                with self._lock:
                    self._agents.discard(proc)
            out.seek(0)
            log = keys.redact(out.read().decode("utf-8", "replace")[-LOG_LIMIT:])
        seconds = time.monotonic() - t0
        artifacts = {"prompt.md": task, "agent.log": f"$ {self.command}\n# exit code {proc.returncode}, "
                     f"{seconds:.1f}s{' (killed: timeout)' if timed_out else ''}\n\n{log}"}
        last = next((l.strip() for l in reversed(log.splitlines()) if l.strip()), "")

        def invalid(error: str) -> Proposal:
            return Proposal(start, "", ok=False, error=error, artifacts=artifacts, proposer=self.name)

        if self._closed:
            return invalid("the search stopped while the agent ran (killed)")
        if proc.returncode == 127 and not timed_out:  # bash: command not found; no retry will fix it
            raise ProposerError(f"the agent command was not found: {last or self.command}")
        if timed_out:
            return invalid(f"the agent ran past {self.timeout:g}s and was killed")
        if proc.returncode != 0:
            return invalid(f"the agent exited with code {proc.returncode}: {last[:200] or 'no output'}")

        child = {}
        for path in start:
            try:
                child[path] = (folder / path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                return invalid(f"the agent left {path} unreadable: {e}")
        try:
            check_child(child, start, allow_unchanged=crossing, is_known=ctx.is_known)
        except EditError as e:
            return invalid("the agent's change is not a valid child: " + str(e).splitlines()[0])

        written = (folder / DESCRIPTION_FILE).read_text(errors="replace").strip() if (folder / DESCRIPTION_FILE).exists() else ""
        lines = [l.strip() for l in written.splitlines()]
        description = next((l for l in lines if l), "") or _describe_change(start, child, ctx.settings.get("profile"))
        rationale = "\n".join(lines[1:]).strip() if written else f"agent command: {self.command}"
        return Proposal(child, description, rationale=rationale, artifacts=artifacts, proposer=self.name)
