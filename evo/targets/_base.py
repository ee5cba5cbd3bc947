"""What a search evolves, and how one genome of it is run and scored."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from evo.slots import Slot
from evo.runner import (BwrapExecutor, Executor, LocalExecutor, TrialResult, TrialRunner, bwrap_works,
                        private_compile_cache)
from population.search import Search, SearchConfig, SearchError
from population.store import TrialStatus

SANDBOXES = ("auto", "bwrap", "none")


class Target:
    """Base class: the part of a search that depends on what is being evolved.

    A search's configuration names its target (`target_of`); the loop asks the target how to
    prepare before the first trial, which runner runs a genome (command, evaluator, harness,
    what a sandbox may see), the environment and time limit of a trial, which clock measures
    it, what to keep after a trial, which leftover processes are its own, and what proposers
    are told about it. Everything else (planning, proposing, the population, the records) is
    the same for every target, and names nothing of what a target runs.
    """

    kind = "base"

    def __init__(self, config: SearchConfig):
        self.config = config

    def prepare(self, search: Search, *, python: str, say: Callable[[str], None]) -> None:
        """Work done once before any trial of a run (e.g. preparing data); nothing by default."""

    def runner(self, search: Search, *, python: str = sys.executable) -> TrialRunner:
        raise NotImplementedError

    def environment(self, search: Search, *, slot: Slot, seed: int) -> dict[str, str]:
        raise NotImplementedError

    def timeout(self) -> float:
        """Seconds on the budget clock before a trial without a result is stopped."""
        raise NotImplementedError

    def clock(self, slot: Slot) -> str:
        """The budget clock: CPU time on a CPU slot (load cannot bend it), wall time on a GPU."""
        return "cpu" if slot.device == "cpu" else "wall"

    def proposer_settings(self) -> dict:
        """The fixed facts of the search a proposer is given (`ProposalContext.settings`)."""
        cfg = self.config
        return {"profile": cfg.profile, "budget": cfg.budget, "name": cfg.name, "metric": cfg.metric,
                "direction": cfg.direction}

    def compile_cache(self, search: Search) -> Path:
        """The trusted compile cache every trial starts from (on a private copy); the seed's run fills it."""
        return search.paths.root / "inductor-cache"

    def after_trial(self, search: Search, result: TrialResult, *, workdir: Path, seed: bool) -> None:
        """Keep what a finished trial leaves for later ones: the seed's compile cache becomes the trusted one."""
        private = private_compile_cache(workdir)
        if seed and result.status == TrialStatus.OK and private.is_dir():
            shutil.copytree(private, self.compile_cache(search), symlinks=True, dirs_exist_ok=True)

    def owns_process(self, cmdline: bytes) -> bool:
        """Whether a process (its /proc cmdline) is one of this target's trials, so a leftover of a dead
        engine may be killed (a pid can have been reused by anything since)."""
        return False

    def executor(self, search: Search, *, python: str) -> Executor:
        """The sandbox the search's processes start in (bwrap, or plain processes)."""
        cfg = self.config
        sandbox = cfg.sandbox if cfg.sandbox != "auto" else resolve_sandbox("auto", python)
        if sandbox != "bwrap":
            return LocalExecutor()
        why = bwrap_works(python)
        if why:
            raise SearchError(f"search {cfg.name!r} runs its trials in a bwrap sandbox, but here {why}")
        return BwrapExecutor(hidden=(search.folder.parent,), python=python)


def resolve_sandbox(choice: str, python: str = sys.executable) -> str:
    """bwrap or none, from --sandbox auto|bwrap|none; a bwrap that cannot run is a SearchError."""
    if choice not in SANDBOXES:
        raise SearchError(f"`sandbox` must be one of {', '.join(SANDBOXES)}, not {choice!r}")
    if choice == "none":
        return "none"
    why = bwrap_works(python)
    if choice == "bwrap" and why:
        raise SearchError(f"`sandbox` bwrap: {why}; or create the search with `sandbox` none (scores can then be faked)")
    return "none" if why else "bwrap"


def read_paths(config: SearchConfig) -> tuple[Path, ...]:
    """The extra folders the search's trials may read (`--read`), as paths."""
    return tuple(Path(os.path.expanduser(p)) for p in config.read)
