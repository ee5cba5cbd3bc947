"""`evo init` and `evo run`: create a search, run or resume it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from evo.cli._common import (UsageError, add_creation, add_proposer_options, add_root, add_strategy_options,
                             build_proposer, creation_kwargs, duration, finished_line, fmt, non_negative_int,
                             positive_float, positive_int, stop_on_signals, strategy_options)
from evo.devices import Slot, check_slots, default_slots, parse_devices
from evo.loop import RunOptions, SearchLoop, StopKind
from evo.search import NAMED_SOURCES, create_search, describe_harness
from evo.strategies import STRATEGIES, make_strategy
from population.importer import check_runnable
from population.search import Search


def add_parsers(sub) -> None:
    p = sub.add_parser("init", help="create a search folder", description="Create runs/NAME: the population repository, "
                       "the Optuna study and the seed genome. The profile, budget and mutable files are fixed from here on.")
    p.add_argument("name", help="name of the search")
    add_creation(p)
    add_root(p)
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("run", help="run or resume a search", description="Run (or resume) a search until --trials, --hours "
                       "or Ctrl-C. Creates the search on first use (with the creation flags). Safe to stop at any time: "
                       "`evo run NAME` continues where it stopped.")
    p.add_argument("name", help="name of the search")
    add_run_options(p)
    add_strategy_options(p)
    add_proposer_options(p)
    add_creation(p)
    add_root(p)
    p.set_defaults(handler=cmd_run)


def add_run_options(p) -> None:
    g = p.add_argument_group("this run")
    g.add_argument("--trials", type=positive_int, help="stop when the search has this many finished trials, seed included")
    g.add_argument("--hours", type=positive_float, help="stop starting trials after this many hours")
    g.add_argument("--devices", help="cuda:0,cuda:1 | cpu | cpu:N (default: every visible GPU, else one CPU slot)")
    g.add_argument("--strategy", choices=tuple(STRATEGIES), default="evolve",
                   help="evolve (default): tournament + crossover; greedy: autoresearch's hill-climb; random: best-of-N from the seed")
    g.add_argument("--proposer", default="offline", metavar="SPEC",
                   help="who writes children: offline (default, no network), anthropic, openai-compatible, command, "
                   "or a weighted mix such as offline:0.8,anthropic:0.2 (each trial records which one wrote it)")
    g.add_argument("--reeval", type=non_negative_int, default=0, metavar="K",
                   help="re-evaluate a genome with K new seeds when it becomes the best; rank by the mean (default: 0)")
    g.add_argument("--prune", action="store_true", help="stop children whose loss is clearly behind at the same point of the budget")
    g.add_argument("--max-vram-gb", type=positive_float, help="constraint: trials above this peak memory are never parents")
    g.add_argument("--max-memory-gb", type=positive_float, help="memory one trial's processes may use before they are "
                   "stopped as oom (default: 85%% of this machine's memory shared among the devices)")
    g.add_argument("--max-cost-usd", type=positive_float, help="stop proposing once the LLM spend reaches this")
    g.add_argument("--api-backoff", type=backoff, default=(15.0, 600.0), metavar="FIRST[,LONGEST]",
                   help="seconds to wait before asking an LLM API again once it stopped answering, doubling up to "
                   "LONGEST while it stays down (default: 15,600); meanwhile devices re-evaluate the best genomes "
                   "or the offline member of a mix proposes, and the search never stops for an outage")
    g.add_argument("--quiet", action="store_true", help="print only the final line")


def backoff(text: str) -> tuple[float, float]:
    """FIRST[,LONGEST] seconds, 0 < FIRST <= LONGEST."""
    parts = text.split(",")
    try:
        first, longest = float(parts[0]), float(parts[-1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST[,LONGEST] in seconds, got {text!r}") from None
    if len(parts) > 2 or not (0 < first <= longest < float("inf")):
        raise argparse.ArgumentTypeError(f"expected FIRST[,LONGEST] seconds with 0 < FIRST <= LONGEST, got {text!r}")
    return first, longest


def run_options(args) -> RunOptions:
    return RunOptions(trials=args.trials, hours=args.hours, reeval=args.reeval, prune=args.prune,
                      max_vram_gb=args.max_vram_gb, max_memory_gb=args.max_memory_gb, max_cost_usd=args.max_cost_usd,
                      api_backoff=args.api_backoff)


class Reporter:
    """Prints one line per finished trial with the count, the best so far and an ETA."""

    def __init__(self, search: Search, options: RunOptions, quiet: bool = False, out=sys.stdout):
        self.search, self.options, self.quiet, self.out = search, options, quiet, out
        self.started = time.time()
        self.finished_here = 0

    def __call__(self, kind: str, info: dict) -> None:
        if self.quiet and kind != "stopped":
            return
        if kind == "preparing":
            line = f"  {info['line']}" if "line" in info else f"preparing data: {info['data']} for profile {info['profile']}"
        elif kind == "started":
            parents = ",".join(f"#{p}" for p in info.get("parents", []))
            line = (f"       #{info['trial']:<4} started on {info['slot']}: {info.get('operator', '')} {parents} "
                    f"{(info.get('description') or '')[:70]}")
        elif kind == "seed":
            what = "was replaced (evo reseed) and runs now" if info.get("replaced") else "runs again"
            line = (f"the seed genome has not run successfully yet (trial #{info['trial']}, {info['status']}: "
                    f"{(info.get('error') or '')[:100]}): it {what}")
        elif kind == "recovered":
            line = f"trial #{info['trial']} was left running by a stopped process: marked interrupted, will re-run"
        elif kind == "finished":
            line = self._finished(info)
        elif kind == "waiting":
            line = (f"waiting for the API (retry in {duration(info['seconds'])}; down for "
                    f"{duration(time.time() - info['since'])}): {info['error'][:120]}")
        elif kind == "resumed":
            line = f"the API answers again (it was down for {duration(info['seconds'])})"
        elif kind == "stopped":
            best = self.search.lineage().best
            best_s = f"best val_bpb {fmt(best.score)} (trial #{best.trial}: {best.description})" if best else "no successful trial"
            line = f"stopped: {info['reason']}; {best_s}"
        else:
            return
        print(line, file=self.out, flush=True)

    def _finished(self, info: dict) -> str:
        self.finished_here += 1
        lineage = self.search.lineage()
        counted = sum(1 for t in lineage.trials if t.counts)
        best, total = lineage.best, self.options.trials
        count = f"[{counted:>3}/{total}]" if total else f"[{counted:>3}]"
        eta = ""
        if total and self.finished_here:
            per = (time.time() - self.started) / self.finished_here
            eta = f" | eta {duration(per * max(0, total - counted))}"
        best_s = f" | best {fmt(best.score)} (#{best.trial})" if best else ""
        return f"{count} {finished_line(info)}{best_s}{eta}"


def cmd_init(args) -> int:
    search = create_search(args.name, **creation_kwargs(args))
    cfg = search.config
    print(f"created search {cfg.name} in {search.folder} (profile {cfg.profile}, budget {cfg.budget:g}s, "
          f"mutable {', '.join(cfg.mutable)}, data {cfg.data}, sandbox {cfg.sandbox}, scored by {cfg.evaluation})")
    if cfg.sandbox == "none":
        print("warning: trials run without a sandbox: a genome can read the validation data, fake its score or "
              "change the search folder (install bubblewrap: apt-get install bubblewrap)", file=sys.stderr)
    search.close()
    return 0


def open_or_create(args, slots: list[Slot] | None = None) -> Search:
    """The search `evo run NAME` means: the existing one (its fixed settings unchanged) or a new one.
    The devices asked for are checked against the GPUs the harness sees before either."""
    if not Search.exists(args.name, root=args.root):
        prepare = Path(args.project) / "prepare.py"
        if slots and prepare.exists():  # without it, create_search says what is missing
            _check_devices(slots, describe_harness(prepare.resolve(), args.profile))
        return create_search(args.name, **creation_kwargs(args))
    search = Search.open(args.name, root=args.root)
    try:
        check_runnable(search)
        cfg = search.config
        data = args.data if args.data in (None, *NAMED_SOURCES) else str(Path(args.data).expanduser().resolve())
        for flag, given, fixed in (("--profile", args.profile, cfg.profile), ("--budget", args.budget, cfg.budget),
                                   ("--mutable", args.mutable, cfg.mutable), ("--data", data, cfg.data)):
            if given is not None and given != fixed:
                raise UsageError(f"{flag} is fixed at {fixed!r} for search {cfg.name!r}; drop the flag or start a new search")
        if slots:
            _check_devices(slots, describe_harness(search.harness[0], cfg.profile))
    except Exception:
        search.close()
        raise
    return search


def _check_devices(slots: list[Slot], facts: dict) -> None:
    for warning in check_slots(slots, int(facts.get("cuda_devices", 0))):
        print(f"warning: {warning}", file=sys.stderr)


def cmd_run(args) -> int:
    proposer = build_proposer(args.proposer, args)
    strategy = make_strategy(args.strategy, **strategy_options(args, args.strategy))
    slots = parse_devices(args.devices) if args.devices else None  # reject a bad device before creating anything
    search = open_or_create(args, slots)
    slots = slots or default_slots(search)
    options = run_options(args)
    cfg = search.config
    if not args.quiet:
        print(f"search {cfg.name}: profile {cfg.profile}, budget {cfg.budget:g}s, strategy {strategy.describe()}, "
              f"proposer {proposer.name}, devices {', '.join(s.name for s in slots)}; folder {search.folder}", flush=True)
    loop = SearchLoop(search, strategy, proposer, slots, options, on_event=Reporter(search, options, quiet=args.quiet))
    try:
        with stop_on_signals(loop.stop.set, loop.stop.is_set,
                             "stopping: killing running trials (they re-run on resume); Ctrl-C again to quit at once",
                             abandon=loop.abandon):
            reason = loop.run()
    finally:
        search.close()
    if reason.kind == StopKind.INTERRUPTED:
        return 130
    return 1 if reason.kind == StopKind.ERROR else 0
