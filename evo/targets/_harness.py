"""evoresearch's own target: a project with the harness contract (prepare.py and a train.py genome).

The harness describes its task profiles (`prepare.py --describe`), prepares the data once
per run, says which prepared file each process may read, and scores a handed-over model in
its own processes (`HarnessEvaluator`). A harness from before trusted scoring has no scorer:
its genomes report their own score in a summary block (self-reported), as autoresearch does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from evo.slots import Slot
from evo.runner import HARNESS_SCRIPT, DataFiles, HarnessEvaluator, SummaryEvaluator, TrialRunner, trial_environment
from evo.targets._base import Target, read_paths
from population.search import Search, SearchConfig, SearchError

HARNESS = ("prepare.py",)
HARNESS_GENOME = HARNESS_SCRIPT  # the mutable file of a harness project, unless told otherwise


def describe_harness(prepare_py: Path, profile: str | None, python: str = sys.executable, *, source: str | None = None,
                     cache_dir: str | None = None) -> dict:
    """Ask the harness (in a subprocess: the engine never imports torch) for a profile's fixed numbers.

    The answer depends only on the file's content, the profile, the data source and cache,
    and the interpreter, and costs a torch import (~2.5 s): a search's copy of the harness
    is answered from the project's call rather than asked again."""
    key = (hashlib.sha256(Path(prepare_py).read_bytes()).hexdigest(), profile, python, source, cache_dir,
           os.environ.get("EVO_CACHE"))
    if key not in _described:
        _described[key] = _ask_harness(Path(prepare_py), profile, python, source, cache_dir)
    return dict(_described[key])


_described: dict[tuple, dict] = {}


def _ask_harness(prepare_py: Path, profile: str | None, python: str, source: str | None, cache_dir: str | None) -> dict:
    env = {**os.environ}
    if profile:
        env["EVO_PROFILE"] = profile
    args = ["--profile", profile] if profile else []
    args += ["--source", source] if source else []
    args += ["--cache-dir", cache_dir] if cache_dir else []
    proc = subprocess.run([python, str(prepare_py), "--describe", *args],
                          capture_output=True, text=True, env=env, cwd=prepare_py.parent)
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SearchError(f"{prepare_py} --describe failed: {message}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def data_cache_root(config: SearchConfig) -> Path:
    """The harness's data cache folder for this search (its --cache-dir, $EVO_CACHE, or the default)."""
    return Path(config.cache_dir or os.environ.get("EVO_CACHE") or Path.home() / ".cache" / "evoresearch")


def harness_config(name: str, project: Path, *, profile: str | None, budget: float | None, mutable: list[str],
                   data: str | None, cache_dir: str | None) -> tuple[dict, dict[str, bytes]]:
    """The configuration fields and harness files of a search of this target, checked; SearchError otherwise."""
    for f in HARNESS + (HARNESS_GENOME,):
        if not (project / f).exists():
            raise SearchError(f"{project} has no {f}; run evo from the project folder, pass `project`, or evolve "
                              "another kind of project with `run` (see evo init --help)")
    for f in mutable:
        if f in HARNESS:
            raise SearchError(f"{f} is the fixed harness and cannot be mutable; drop it from `mutable`")
    facts = describe_harness(project / "prepare.py", profile)
    fields = dict(profile=facts["profile"], budget=float(budget or facts["time_budget"]), data=data or facts["data"],
                  seq_len=facts["seq_len"], startup_grace=facts.get("startup_allowance", facts["startup_grace"]),
                  evaluation=facts.get("evaluation", "self-reported"), eval_limit=facts.get("eval_limit", 300.0),
                  cache_dir=cache_dir)
    return fields, {f: (project / f).read_bytes() for f in HARNESS}


class HarnessTarget(Target):
    """A project with evoresearch's harness contract (see the module docstring)."""

    kind = "harness"

    def prepare(self, search: Search, *, python: str, say: Callable[[str], None]) -> None:
        """Run the harness's data preparation (a no-op when the cache has it), passing its progress on."""
        cfg = self.config
        env = trial_environment(profile=cfg.profile, budget=cfg.budget, seed=cfg.seed, device="cpu", data=cfg.data,
                                cache_dir=str(data_cache_root(cfg)), base=dict(os.environ))
        proc = subprocess.Popen([python, str(search.paths.harness / "prepare.py"), "--profile", cfg.profile,
                                 "--source", cfg.data], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=search.paths.harness)
        lines = []
        for line in proc.stdout:  # a download can take a while: pass its progress on as it comes
            lines.append(line.rstrip())
            say(line.rstrip())
        if proc.wait() != 0:
            raise SearchError(f"preparing data failed: {(lines or ['no output'])[-1]}")

    def runner(self, search: Search, *, python: str = sys.executable) -> TrialRunner:
        cfg = self.config
        facts = describe_harness(search.paths.harness / "prepare.py", cfg.profile, python, source=cfg.data,
                                 cache_dir=cfg.cache_dir)
        evaluator = HarnessEvaluator() if cfg.evaluation == "harness" else SummaryEvaluator()
        return TrialRunner(executor=self.executor(search, python=python), evaluator=evaluator, harness=search.harness,
                           harness_dir=search.paths.harness, data=DataFiles.from_describe(facts, data_cache_root(cfg)),
                           python=python, network=cfg.allow_network, eval_limit=cfg.eval_limit, read=read_paths(cfg),
                           model_processes=int(facts.get("model_processes", 1)), compile_cache=self.compile_cache(search))

    def proposer_settings(self) -> dict:
        """Also the sequence length, and the seed's one hard invariant between knobs: whole micro-batches
        per optimizer step (`whole_multiples`: knob, per-knob, factor)."""
        settings = super().proposer_settings()
        if self.config.seq_len:
            settings["target_facts"] = [f"sequence length {self.config.seq_len}"]
            settings["whole_multiples"] = [("TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", self.config.seq_len)]
        return settings

    def owns_process(self, cmdline: bytes) -> bool:
        return HARNESS_SCRIPT.encode() in cmdline

    def environment(self, search: Search, *, slot: Slot, seed: int) -> dict[str, str]:
        cfg = self.config
        return trial_environment(profile=cfg.profile, budget=cfg.budget, seed=seed, device=slot.device, data=cfg.data,
                                 cache_dir=str(data_cache_root(cfg)), threads=slot.threads, allowance=cfg.startup_grace)

    def timeout(self) -> float:
        """The budget plus the profile's start-up allowance, plus a moment to hand the model over."""
        cfg = self.config
        if cfg.evaluation == "harness":
            return cfg.budget + cfg.startup_grace + max(2.0, 0.02 * cfg.budget)
        return cfg.budget + cfg.startup_grace

    def clock(self, slot: Slot) -> str:
        """A harness from before trusted scoring only knows wall time."""
        return super().clock(slot) if self.config.evaluation == "harness" else "wall"
