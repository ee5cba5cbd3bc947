"""Every path inside a search folder, spelled in one place.

    runs/NAME/
        search.json        the fixed configuration (also in the study's user_attrs)
        study.db           the Optuna study (unless the search names another database)
        population.git/    the genomes, one branch evo/NAME/<trial> per trial
        harness/           the fixed harness copied at creation (prepare.py)
        program.md         the research instructions (edit it to steer the search)
        trials/<n>/        run.log, diff.patch, proposal.json, result.json, prompts, ...
        worktrees/<slot>/  one checkout per device
        scratch/           private folders of proposals being prepared
        inductor-cache/    the compile cache trials share
        devices.json       what each device is doing (for `evo status`)
        lock               held by the one process running the search
        report/            what `evo report` writes

The engine writes these files and analysis reads them; neither spells a file name of
its own, so a new file or a renamed one is a change in this module only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrialFolder:
    """The files of one trial."""

    path: Path

    @property
    def run_log(self) -> Path:
        return self.path / "run.log"

    @property
    def diff(self) -> Path:
        return self.path / "diff.patch"

    @property
    def proposal(self) -> Path:
        return self.path / "proposal.json"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    def artifact(self, name: str) -> Path:
        """Where a proposer's file (prompt.md, response.json, agent.log, ...) is kept; only its base name counts."""
        return self.path / Path(name).name

    def make(self) -> "TrialFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class SearchFolder:
    """The layout of one search folder (see the module docstring)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "search.json"

    @property
    def study_db(self) -> Path:
        return self.root / "study.db"

    @property
    def local_storage(self) -> str:
        """The Optuna URL of the folder's own SQLite study."""
        return f"sqlite:///{self.study_db}"

    @property
    def population(self) -> Path:
        return self.root / "population.git"

    @property
    def harness(self) -> Path:
        return self.root / "harness"

    @property
    def program(self) -> Path:
        return self.root / "program.md"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    def trial(self, number: int) -> TrialFolder:
        return TrialFolder(self.trials / str(number))

    def worktree(self, slot: str) -> Path:
        return self.root / "worktrees" / slot

    def scratch(self, name: str) -> Path:
        return self.root / "scratch" / name

    @property
    def devices(self) -> Path:
        return self.root / "devices.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def exists(self) -> bool:
        return self.config.exists()
