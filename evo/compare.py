"""Run several strategies on the same task at equal compute, over several seeds.

A comparison is a small manifest, `runs/NAME/compare.json`, and one normal search per
strategy and seed, `runs/NAME-<strategy>-s<k>` (created with seed base_seed + k, the
same k for every strategy so the pairs share their seed's noise). Every search gets the
same proposer, profile, budget, data, harness, trial count, run options (re-evaluations,
noise runs, min gain, pruning, constraints) and devices, so the only difference between
them is the strategy: all of these are fixed in the manifest when the comparison is
created (data and harness when its first search is), and a member that would differ is
refused before it is created. Members run one after another, seed by seed, so a comparison
stopped early still holds complete pairs; running it again continues: finished
searches are skipped, an unfinished one resumes like `evo run`.

>>> comparison = Comparison.create(CompareConfig("cmp", strategies=["greedy", "evolve"], seeds=2, trials=12,
...                                              profile="tiny", budget=3,
...                                              run=RunOptions(noise=NoiseSpec(reeval=1))))  # doctest: +SKIP
>>> comparison.run(make_proposer=OfflineProposer, slots=parse_devices("cpu"))             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from evo.slots import Slot
from evo.loop import LimitSpec, NoiseSpec, RunOptions, SearchLoop, StopKind, StopReason
from evo.proposers import Proposer
from evo.search import create_search, harness_sha256
from evo.targets import HARNESS
from evo.strategies import STRATEGIES, Strategy, make_strategy
from population.lineage import strategy_of
from population.search import Search, SearchError, check_name

MANIFEST = "compare.json"
# The run options a comparison fixes for its members (`CompareConfig.run`). The manifest keeps them flat
# beside its other settings, under these names, as it did before they were a `RunOptions`; each name maps
# to the spec of RunOptions that holds it ("": a field of RunOptions itself). The others (hours,
# promotion, ...) are no part of a comparison.
FIXED_RUN_OPTIONS = {"reeval": "noise", "noise_runs": "noise", "min_gain": "noise", "prune": "", "max_vram_gb": "",
                     "max_cost_usd": "limits"}


def fixed_run_option(run: RunOptions, name: str):
    """The value of the fixed run option `name` (a key of FIXED_RUN_OPTIONS) in `run`."""
    spec = FIXED_RUN_OPTIONS[name]
    return getattr(getattr(run, spec) if spec else run, name)


def _run_options(flat: dict) -> RunOptions:
    """RunOptions from fixed run options by their flat names (those missing take the defaults)."""
    def of(spec: str) -> dict:
        return {k: v for k, v in flat.items() if FIXED_RUN_OPTIONS.get(k) == spec}
    return RunOptions(noise=NoiseSpec(**of("noise")), limits=LimitSpec(**of("limits")), **of(""))


def _leaves(options) -> dict:
    """Every setting of a RunOptions by its dotted name (limits.hours, prune, ...)."""
    found = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        found.update({f"{f.name}.{k}": v for k, v in _leaves(value).items()} if dataclasses.is_dataclass(value)
                     else {f.name: value})
    return found


@dataclass
class CompareConfig:
    """What a comparison runs. Everything but seeds and trials is fixed once created; seeds
    and trials may grow on a later run (every member then catches up).

    Args:
        name: the comparison's name; its members are NAME-<strategy>-s<k>.
        strategies: strategy names from `evo.strategies.STRATEGIES`, e.g. ["greedy", "evolve"].
        seeds: how many seeds (searches per strategy).
        trials: finished trials per search, seed included.
        proposer: the proposer spec every member uses (as `evo run --proposer`).
        profile: the task profile (None: the harness's default).
        budget: training seconds per trial (None: the profile's).
        base_seed: seed of the first replicate; replicate k uses base_seed + k.
        run: how every member runs: its `FIXED_RUN_OPTIONS` (re-evaluations, noise runs, min gain,
            pruning, constraints; as `evo run --reeval`, `--noise-runs`, ...). Only those are kept;
            each member's trials are `trials` (see `member_options`).
        searches: for a comparison of existing searches: "LABEL=NAME[,NAME...]" or "NAME"
            entries; then nothing is run.
        strategy_options: keyword options of the strategies that take any (evolve's elite,
            tournament, ...), as `make_strategy` takes them.
        data, harness_sha256: the data source and harness hash of the first member, which
            every later member must share (pinned when the first member is created).
    """

    name: str
    strategies: list[str] = field(default_factory=list)
    seeds: int = 1
    trials: int = 0
    proposer: str = "offline"
    profile: str | None = None
    budget: float | None = None
    base_seed: int = 0
    run: RunOptions = field(default_factory=RunOptions)
    searches: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    strategy_options: dict = field(default_factory=dict)
    data: str | None = None
    harness_sha256: str = ""

    def member_options(self) -> RunOptions:
        """The options a member runs with: `run`, up to this comparison's trials. Without the lab notebook:
        the members are replicates, and one must not learn from another that ran before it."""
        return dataclasses.replace(self.run.with_limits(trials=self.trials), memory=False)

    def unkept_run_options(self) -> list[str]:
        """The options `run` sets that the manifest would not keep (the comparison's own `trials` aside)."""
        kept = _leaves(dataclasses.replace(_run_options(self._fixed_run_options()), memory=self.run.memory))
        return [name for name, value in _leaves(self.run).items() if value != kept[name]]

    def _fixed_run_options(self) -> dict:
        return {key: fixed_run_option(self.run, key) for key in FIXED_RUN_OPTIONS}

    def to_manifest(self) -> dict:
        """The manifest's JSON object: every setting flat, `run` as its `FIXED_RUN_OPTIONS`."""
        manifest = {}
        for f in dataclasses.fields(self):
            if f.name == "run":
                manifest.update(self._fixed_run_options())
            else:
                manifest[f.name] = copy.deepcopy(getattr(self, f.name))
        return manifest

    @classmethod
    def from_manifest(cls, manifest: dict) -> "CompareConfig":
        """The configuration a manifest holds (one a later version wrote may hold keys this one ignores; the
        run options it lacks take `RunOptions`' defaults). Raises ValueError for run options that cannot work."""
        known = {f.name for f in dataclasses.fields(cls)} - {"run"}
        run = _run_options({key: manifest[key] for key in FIXED_RUN_OPTIONS if key in manifest})
        return cls(**{k: v for k, v in manifest.items() if k in known}, run=run)

    def strategy(self, name: str) -> Strategy:
        """Strategy `name` with the options this comparison fixed for it."""
        return make_strategy(name, **(self.strategy_options if name == "evolve" else {}))


def member_name(name: str, strategy: str, replicate: int) -> str:
    """The search name of one strategy and seed in comparison `name`.

    Args:
        name: the comparison's name.
        strategy: the strategy's name.
        replicate: the seed's index (0-based).
    """
    return f"{name}-{strategy}-s{replicate}"


def parse_search_groups(entries: list[str], *, root: str | Path = "runs") -> dict[str, list[str]]:
    """Group existing searches: "LABEL=A,B" puts A and B under LABEL; a bare "A" goes under its strategy.

    Args:
        entries: the entries, as given to `evo compare --searches`.
        root: the folder holding the searches.

    Raises:
        SearchError: for a search that does not exist.
    """
    groups: dict[str, list[str]] = {}
    for entry in entries:
        label, sep, names = entry.partition("=")
        for name in (n.strip() for n in (names if sep else label).split(",") if n.strip()):
            if not Search.exists(name, root=root):
                raise SearchError(f"no search named {name!r} in {Path(root).resolve()}")
            if not sep:
                search = Search.open(name, root=root)
                try:
                    group = strategy_of(search.trials())
                finally:
                    search.close()
            else:
                group = label.strip()
            groups.setdefault(group, []).append(name)
    return groups


class Comparison:
    """Handle on a comparison folder: its manifest and its member searches.

    Args:
        folder: the comparison's folder (runs/NAME).
        config: its configuration.
        root: the folder holding the searches.
    """

    def __init__(self, folder: Path, config: CompareConfig, root: Path):
        self.folder, self.config, self.root = folder, config, root
        self._stop = threading.Event()
        self._loop: SearchLoop | None = None

    @classmethod
    def create(cls, config: CompareConfig, *, root: str | Path = "runs") -> "Comparison":
        """Write the manifest of a new comparison.

        Args:
            config: what to compare.
            root: the folder holding the searches.
        """
        check_name(config.name, "comparison")
        root = Path(root).resolve()
        folder = root / config.name
        if (folder / "search.json").exists():
            raise SearchError(f"{config.name!r} is a search, not a comparison; pick another name")
        unknown = [s for s in config.strategies if s not in STRATEGIES]
        if unknown:
            raise SearchError(f"unknown strategies {unknown}: use {', '.join(STRATEGIES)}")
        if not config.searches and (not config.strategies or config.seeds < 1 or config.trials < 1):
            raise SearchError("a comparison needs `strategies`, `seeds` >= 1 and `trials` >= 1 (or `searches`)")
        unkept = config.unkept_run_options()
        if unkept:
            raise SearchError(f"a comparison keeps only {', '.join(FIXED_RUN_OPTIONS)} of its members' run options; "
                              f"{', '.join(unkept)} would not be kept (a member's trials are the comparison's): "
                              "leave them unset")
        try:
            for name in config.strategies:
                config.strategy(name)
        except ValueError as e:
            raise SearchError(str(e)) from None
        folder.mkdir(parents=True, exist_ok=True)
        comparison = cls(folder, config, root)
        comparison.save()
        return comparison

    @classmethod
    def open(cls, name: str, *, root: str | Path = "runs") -> "Comparison":
        """Open an existing comparison.

        Args:
            name: the comparison's name.
            root: the folder holding the searches.
        """
        root = Path(root).resolve()
        path = root / name / MANIFEST
        if not path.exists():
            raise SearchError(f"no comparison named {name!r} in {root}; start one with `strategies` and `trials`")
        try:
            config = CompareConfig.from_manifest(json.loads(path.read_text()))
        except ValueError as e:  # a manifest edited by hand
            raise SearchError(f"comparison {name!r} ({path}): {e}") from None
        return cls(path.parent, config, root)

    @classmethod
    def exists(cls, name: str, *, root: str | Path = "runs") -> bool:
        return (Path(root) / name / MANIFEST).exists()

    def save(self) -> None:
        (self.folder / MANIFEST).write_text(json.dumps(self.config.to_manifest(), indent=2) + "\n")

    def discard(self) -> bool:
        """Remove a comparison none of whose searches exists (its first run failed before making one), so the
        same command can create it afresh; return whether it was removed (one with searches is kept)."""
        if self.config.searches or any(Search.exists(name, root=self.root) for _, _, name in self.members()):
            return False
        (self.folder / MANIFEST).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the folder holds something else too: it stays
            self.folder.rmdir()
        return True

    # -- members ----------------------------------------------------------------------

    def members(self) -> list[tuple[str, int, str]]:
        """(strategy, replicate, search name) of every member, in the order they run: seed by seed."""
        return [(s, k, member_name(self.config.name, s, k)) for k in range(self.config.seeds)
                for s in self.config.strategies]

    def groups(self) -> dict[str, list[str]]:
        """Label -> search names, for `analysis.compare.load_runs` (members not created yet are left out)."""
        if self.config.searches:
            return parse_search_groups(self.config.searches, root=self.root)
        groups: dict[str, list[str]] = {}
        for strategy, _, name in self.members():
            if Search.exists(name, root=self.root):
                groups.setdefault(strategy, []).append(name)
        return groups

    # -- running -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask a running comparison to stop: the current search stops like `evo run` on Ctrl-C."""
        self._stop.set()
        if self._loop is not None:
            self._loop.stop.set()

    def run(self, *, make_proposer: Callable[[], Proposer], slots: list[Slot], creation: dict | None = None,
            make_strategy: Callable[[str], Strategy] | None = None,
            on_member: Callable[[str, str, dict], None] | None = None,
            on_event: Callable[[str, str, dict], None] | None = None, python: str | None = None) -> StopReason:
        """Run every member until it has `trials` finished trials; return why it stopped.

        Args:
            make_proposer: a new proposer for each member (a loop closes its proposer).
            slots: the device slots every member runs on (e.g. ``parse_devices("cpu")``).
            creation: keyword arguments for `evo.create_search` besides name, root, profile,
                budget and seed (project, data, storage, cache_dir, mutable).
            make_strategy: strategy name -> strategy (default: `CompareConfig.strategy`).
            on_member: called as (event, search name, info) with event "start", "skip" or "done".
            on_event: the loop's events, as (search name, kind, info).
            python: the interpreter that runs trials (default: this one).

        Returns:
            kind TRIALS ("done") when every member is complete, INTERRUPTED, or the ERROR that
            stopped a member (its message starts with the member's name).
        """
        cfg = self.config
        done = StopReason(StopKind.TRIALS, "done")
        if cfg.searches:
            return done  # a comparison of existing searches runs nothing
        on_member = on_member or (lambda event, name, info: None)
        make_strategy = make_strategy or cfg.strategy
        for strategy, replicate, name in self.members():
            if self._stop.is_set():
                return StopReason(StopKind.INTERRUPTED, "interrupted")
            search = self.member(name, replicate, creation or {})
            try:
                finished = sum(1 for t in search.trials() if t.spends_trial)
                if finished >= cfg.trials and not any(t.state == "RUNNING" for t in search.trials()):
                    on_member("skip", name, {"finished": finished})
                    continue
                loop = SearchLoop(search, make_strategy(strategy), make_proposer(), slots, cfg.member_options(),
                                  on_event=(lambda kind, info, n=name: on_event(n, kind, info)) if on_event else None,
                                  python=python)
                self._loop = loop
                if self._stop.is_set():  # a stop that arrived while the loop was being built
                    loop.stop.set()
                on_member("start", name, {"strategy": strategy, "replicate": replicate, "finished": finished})
                reason = loop.run()
            finally:
                self._loop = None
                search.close()
            if reason.kind == StopKind.INTERRUPTED or self._stop.is_set():
                return StopReason(StopKind.INTERRUPTED, "interrupted")
            if reason.kind == StopKind.ERROR:
                return StopReason(StopKind.ERROR, f"{name}: {reason.message}")
            on_member("done", name, {"reason": str(reason)})
        return done

    def complete(self) -> bool:
        """Whether every member exists with its trials finished (running it would only skip them)."""
        for _, _, name in self.members():
            if not Search.exists(name, root=self.root):
                return False
            with Search.open(name, root=self.root) as search:
                trials = search.trials()
            if sum(1 for t in trials if t.spends_trial) < self.config.trials or any(t.state == "RUNNING" for t in trials):
                return False
        return True

    @property
    def stopping(self) -> bool:
        """Whether `stop` was asked for."""
        return self._stop.is_set()

    def member(self, name: str, replicate: int, creation: dict) -> Search:
        """Open a member search, creating it on first use; its fixed settings must match the comparison's.

        Raises:
            SearchError: for a member that exists with other settings, or would be created with
                another harness or data than the first member (then nothing is created)."""
        cfg = self.config
        if not Search.exists(name, root=self.root):
            creation = self._creation(creation)
            create_search(name, root=self.root, profile=cfg.profile, budget=cfg.budget, seed=cfg.base_seed + replicate,
                          **creation).close()
        search = Search.open(name, root=self.root)
        fixed = search.config
        if cfg.profile is None or cfg.budget is None or not cfg.harness_sha256 or cfg.data is None:
            # Pin what the first member resolved, so later members (maybe created on another
            # machine, or after prepare.py changed) cannot differ without being refused.
            cfg.profile, cfg.budget = cfg.profile or fixed.profile, cfg.budget or fixed.budget
            cfg.harness_sha256, cfg.data = cfg.harness_sha256 or fixed.harness_sha256, cfg.data or fixed.data
            self.save()
        problems = []
        if fixed.profile != cfg.profile:
            problems.append(f"profile {fixed.profile!r} (comparison: {cfg.profile!r})")
        if fixed.budget != cfg.budget:
            problems.append(f"budget {fixed.budget:g} (comparison: {cfg.budget:g})")
        if fixed.seed != cfg.base_seed + replicate:
            problems.append(f"seed {fixed.seed} (comparison: {cfg.base_seed + replicate})")
        if fixed.data != cfg.data:
            problems.append(f"data {fixed.data!r} (comparison: {cfg.data!r})")
        if fixed.harness_sha256 and fixed.harness_sha256 != cfg.harness_sha256:
            problems.append(f"harness {fixed.harness_sha256[:10]} (comparison: {cfg.harness_sha256[:10]})")
        if problems:
            search.close()
            raise SearchError(f"search {name!r} exists with {', '.join(problems)}: it is not a member of this "
                              f"comparison; remove it or pick another comparison name")
        return search

    def _creation(self, creation: dict) -> dict:
        """`create_search` arguments for a new member: the pinned data, and a check that the
        project's harness is the one the first member was created with."""
        cfg = self.config
        creation = dict(creation)
        if cfg.data is not None:
            if creation.get("data") not in (None, cfg.data):
                raise SearchError(f"`data` is fixed at {cfg.data!r} for comparison {cfg.name!r}; drop the flag "
                                  "or pick a new name")
            creation["data"] = cfg.data
        project = Path(creation.get("project", "."))
        if cfg.harness_sha256 and all((project / f).exists() for f in HARNESS):
            now = harness_sha256({f: (project / f).read_bytes() for f in HARNESS})
            if now != cfg.harness_sha256:
                raise SearchError(f"the harness ({', '.join(HARNESS)} in {project.resolve()}) changed since comparison "
                                  f"{cfg.name!r} created its first search: its searches would not compare; restore "
                                  "it or pick a new comparison name")
        return creation
