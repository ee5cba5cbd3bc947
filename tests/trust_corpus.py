"""Runs cheats of the corpus (tests/cheats.py) as children of one sandboxed search, for the trust tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from cheats import SECRET, Cheat
from conftest import PROJECT_FILES, ROOT
from evo import LimitSpec, Proposal, Proposer, RandomStrategy, RunOptions, SearchLoop, create_search, parse_devices
from population import Search

BUDGET = 2


class Corpus(Proposer):
    """Proposes each given cheat once, in order, as a child of the seed."""

    name = "corpus"

    def __init__(self, seed: str, cheats: tuple[Cheat, ...]):
        self.queue = [(c.name, c.apply(seed)) for c in cheats]

    def mutate(self, parent, ctx):
        name, text = self.queue.pop(0)
        return Proposal({"train.py": text}, name, rationale="a cheat from tests/cheats.py")


def run_corpus(folder: Path, cache_dir: Path, cheats: tuple[Cheat, ...]) -> Iterator[tuple]:
    """The search after every cheat ran: (search, trial of each cheat by name, the seed's trial)."""
    for name in PROJECT_FILES:
        shutil.copyfile(ROOT / name, folder / name)
    saved = {k: os.environ.get(k) for k in ("EVO_CACHE", "EVO_PROFILE", "ANTHROPIC_API_KEY")}
    os.environ.update(EVO_CACHE=str(cache_dir), EVO_PROFILE="tiny", ANTHROPIC_API_KEY=SECRET)
    try:
        search = create_search("trust", root=folder / "runs", project=folder, profile="tiny", budget=BUDGET,
                               sandbox="bwrap")
        reason = SearchLoop(search, RandomStrategy(), Corpus((folder / "train.py").read_text(), cheats),
                            parse_devices("cpu"), RunOptions(limits=LimitSpec(trials=1 + len(cheats)), max_memory_gb=2)).run()
        assert str(reason) == f"reached {1 + len(cheats)} trials", reason
        trials = search.trials()
        by_name = {t.description: t for t in trials if t.operator == "mutate"}
        yield search, by_name, next(t for t in trials if t.operator == "seed")
        search.close()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def log_of(search: Search, trial) -> str:
    return search.paths.trial(trial.number).run_log.read_text(errors="replace")
