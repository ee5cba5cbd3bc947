"""`evo compare` and `evo import`: strategies side by side, and autoresearch runs brought in to compare."""

from __future__ import annotations

import sys

import sqlalchemy as sa

from analysis.compare import compare_runs, load_runs, plot_comparison, render_table
from evo.cli._common import (UsageError, add_creation, add_noise_options, add_proposer_options, add_root,
                             add_strategy_options, build_proposer, creation_kwargs, exit_code, finished_line,
                             non_negative_int, positive_float, positive_int, stop_on_signals)
from evo.compare import FIXED_RUN_OPTIONS, CompareConfig, Comparison, fixed_run_option
from evo.devices import default_slots, parse_devices
from evo.loop import LimitSpec, NoiseSpec, RunOptions
from evo.search import check_folder
from evo.strategies import STRATEGIES, make_strategy
from population.importer import import_results_tsv
from population.notebook import Notebook
from population.search import Search, SearchError


def add_parsers(sub) -> None:
    p = sub.add_parser("compare", help="strategies side by side at equal compute",
                       description="Run each strategy with each seed as its own search (NAME-<strategy>-s<k>) with "
                       "the same proposer, budget, trials and devices, then plot best-so-far against trials and "
                       "device-hours (mean line, band across seeds) and print a table. Re-running continues "
                       "unfinished searches; Ctrl-C stops safely. With --searches, compares existing searches instead.")
    p.add_argument("name", help="name of the comparison (its figure and table go to runs/NAME/)")
    g = p.add_argument_group("what to compare")
    g.add_argument("--strategies", help="comma-separated strategies to run, e.g. greedy,evolve,random")
    g.add_argument("--seeds", type=positive_int, help="searches per strategy, with seeds --seed, --seed+1, ... (default: 1)")
    g.add_argument("--trials", type=positive_int, help="finished trials per search, seed included")
    g.add_argument("--searches", nargs="+", metavar="[LABEL=]NAME[,NAME]",
                   help="compare existing searches instead of running: a bare NAME is grouped by its strategy, "
                   "LABEL=A,B groups A and B under LABEL (e.g. an imported results.tsv)")
    g.add_argument("--reference", default="greedy",
                   help="group whose mean final best is the target of 'trials to target' (default: greedy)")
    g = p.add_argument_group("how each search runs (as for evo run)")
    g.add_argument("--devices", help="cuda:0,cuda:1 | cpu | cpu:N (default: every visible GPU, else one CPU slot)")
    g.add_argument("--proposer", metavar="SPEC", help="who writes children, the same for every strategy (default: offline)")
    g.add_argument("--reeval", type=non_negative_int, metavar="K", help="re-evaluate each new best with K seeds (default: 0)")
    add_noise_options(g)
    g.add_argument("--prune", action="store_true", default=None,
                   help="stop children whose loss is clearly behind at the same point of the budget")
    g.add_argument("--max-vram-gb", type=positive_float, help="constraint: trials above this peak memory are never parents")
    g.add_argument("--max-cost-usd", type=positive_float, help="each search stops proposing once its LLM spend reaches this")
    g.add_argument("--quiet", action="store_true", help="print only the table")
    add_strategy_options(p)
    add_proposer_options(p)
    add_creation(p)
    # So a resumed comparison can tell "not given" from a default: these are fixed once created.
    p.set_defaults(seed=None, **{key: None for key in EVOLVE_OPTIONS})
    add_root(p)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("import", help="load an autoresearch results.tsv as a search",
                       description="Create search NAME from autoresearch's results.tsv (commit, val_bpb, memory_gb, "
                       "status, description) as a greedy line: each row's parent is the last kept row before it. It "
                       "has no genomes, so `evo run` refuses it; status, report, export and compare work.")
    p.add_argument("file", help="the results.tsv")
    p.add_argument("name", help="name of the new search")
    p.add_argument("--budget", type=positive_float, default=300.0,
                   help="training seconds per trial of the imported run (default: 300, autoresearch's)")
    p.add_argument("--seconds-per-trial", type=positive_float,
                   help="device seconds to assume per trial for device-hour figures (default: --budget)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite in the search folder)")
    add_root(p)
    p.set_defaults(handler=cmd_import)


def cmd_import(args) -> int:
    with import_results_tsv(args.file, args.name, root=args.root, budget=args.budget,
                            seconds_per_trial=args.seconds_per_trial, storage=args.storage) as search:
        trials = search.trials()
        best = search.lineage().best
        best_s = f"; best val_bpb {best.score:.6f} (row {best.trial + 1}: {best.description})" if best else ""
        ideas = _into_notebook(search)
        print(f"imported {len(trials)} rows from {args.file} as search {args.name} in {search.folder}{best_s}{ideas}")
    return 0


def _into_notebook(search) -> str:
    """Add the imported rows' ideas to the lab notebook (as its next reader would); what to say about it."""
    try:
        book = Notebook.for_search(search)
        try:
            return f"; {book.sync(search)} ideas into the lab notebook (evo ideas)"
        finally:
            book.close()
    except sa.exc.SQLAlchemyError as e:
        return f"; the lab notebook could not take its ideas now ({type(e).__name__}), its next reader adds them"


EVOLVE_OPTIONS = ("elite", "tournament", "crossover_rate", "islands", "migration_rate", "cross_from")


def _flag(key: str) -> str:
    """The flag of an option named `key` in argparse, `RunOptions` and the strategies (min_gain: --min-gain)."""
    return f"--{key.replace('_', '-')}"


def _evolve_options(args) -> dict:
    """Evolve's options as given, over its defaults (only evolve takes any)."""
    given = {key: getattr(args, key) for key in EVOLVE_OPTIONS if getattr(args, key, None) is not None}
    return make_strategy("evolve", **given).options()


def _comparison(args) -> Comparison:
    """Open the comparison NAME (checking the flags against it) or create it from the flags."""
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    if Comparison.exists(args.name, root=args.root):
        return _reopen(args, strategies)
    if not args.searches and (not strategies or not args.trials):
        raise SearchError(f"no comparison named {args.name!r} yet: give --strategies and --trials to run one, "
                          "or --searches to compare existing searches")
    unknown = [s for s in strategies or [] if s not in STRATEGIES]
    if unknown:
        raise SearchError(f"unknown strategy {unknown[0]!r}: use {', '.join(STRATEGIES)}")
    try:  # a combination that cannot work fails here, before anything is written
        run = RunOptions(noise=NoiseSpec(reeval=args.reeval or 0, noise_runs=args.noise_runs or 0,
                                         min_gain=0.0 if args.min_gain is None else args.min_gain),
                         limits=LimitSpec(max_cost_usd=args.max_cost_usd), prune=bool(args.prune),
                         max_vram_gb=args.max_vram_gb)
    except ValueError as e:
        raise UsageError(str(e)) from None
    config = CompareConfig(name=args.name, strategies=strategies or [], seeds=args.seeds or 1, trials=args.trials or 0,
                           proposer=args.proposer or "offline", profile=args.profile, budget=args.budget,
                           base_seed=args.seed or 0, run=run, searches=list(args.searches or []),
                           strategy_options=_evolve_options(args) if "evolve" in (strategies or []) else {},
                           data=args.data)
    check_folder("--root", args.root)
    return Comparison.create(config, root=args.root)


def _reopen(args, strategies: list[str] | None) -> Comparison:
    comparison = Comparison.open(args.name, root=args.root)
    cfg = comparison.config
    # Settings the first member pins (None: not pinned yet, the flag may still choose them).
    pinned = [("--strategies", strategies, cfg.strategies), ("--proposer", args.proposer, cfg.proposer),
              ("--profile", args.profile, cfg.profile), ("--budget", args.budget, cfg.budget),
              ("--seed", args.seed, cfg.base_seed), ("--data", args.data, cfg.data)]
    for flag, given, value in pinned:
        if given is not None and value is not None and given != value:
            raise SearchError(f"{flag} is fixed at {value!r} for comparison {cfg.name!r}; drop the flag or pick a new name")
    # Run options are fixed when it is created, "none" included: a cap given only later would hold
    # for some members and not others.
    fixed = [(_flag(key), getattr(args, key), fixed_run_option(cfg.run, key)) for key in FIXED_RUN_OPTIONS]
    if "evolve" in cfg.strategies and not cfg.strategy_options:  # a comparison made before they were pinned
        cfg.strategy_options = _evolve_options(args)
        comparison.save()
    for key in EVOLVE_OPTIONS:  # pinned with evolve; a comparison without evolve has none to fix
        value = cfg.strategy_options.get(key)
        if value is not None:
            fixed.append((_flag(key), getattr(args, key), value))
    for flag, given, value in fixed:
        if given is not None and given != value:
            shown = "none" if value is None else repr(value)
            raise SearchError(f"{flag} is fixed at {shown} for comparison {cfg.name!r}; drop the flag or pick a new name")
    if args.searches and args.searches != cfg.searches:
        cfg.searches = list(args.searches)
    changed = False
    for flag, given, attr in (("--seeds", args.seeds, "seeds"), ("--trials", args.trials, "trials")):
        if given is not None and given != getattr(cfg, attr):
            if given < getattr(cfg, attr) and not cfg.searches:
                raise SearchError(f"{flag} {given} is below the comparison's {getattr(cfg, attr)}: its searches "
                                  "already ran that far; pick a new name to compare fewer")
            setattr(cfg, attr, given)
            changed = True
    if changed or args.searches:
        comparison.save()
    return comparison


def _slots(args, comparison: Comparison):
    """Device slots for every member, as `evo run --devices` would give them."""
    if args.devices:
        return parse_devices(args.devices)
    for _, _, name in comparison.members():  # the harness a member already copied, else the project's
        if Search.exists(name, root=args.root):
            with Search.open(name, root=args.root) as search:
                return default_slots(search)
    return None  # decided once the first member exists


def _run_members(args, comparison: Comparison) -> int:
    """Run the comparison's searches; the exit status (0, 1 on a member's error, 130 on Ctrl-C)."""
    cfg = comparison.config
    # Built once here so a bad spec or a missing key fails before any search exists.
    build_proposer(cfg.proposer, args).close()
    slots = [] if comparison.complete() else _slots(args, comparison)  # a finished comparison asks no harness
    creation = {k: v for k, v in creation_kwargs(args).items()
                if k in ("project", "mutable", "data", "storage", "cache_dir", "objectives", "constraints")}
    out = sys.stdout

    def on_member(event: str, name: str, info: dict) -> None:
        if args.quiet:
            return
        if event == "start":
            print(f"== {name}: strategy {info['strategy']}, seed {cfg.base_seed + info['replicate']}, "
                  f"{info['finished']}/{cfg.trials} trials done", file=out, flush=True)
        elif event == "skip":
            print(f"== {name}: done ({info['finished']} trials)", file=out, flush=True)

    def on_event(name: str, kind: str, info: dict) -> None:
        if not args.quiet and kind == "finished":
            print(f"   {finished_line(info, width=60)}", file=out, flush=True)

    if slots is None:  # no member yet: create the first one to learn what its harness sees
        strategy, replicate, name = comparison.members()[0]
        comparison.member(name, replicate, creation).close()
        slots = _slots(args, comparison)
    with stop_on_signals(comparison.stop, lambda: comparison.stopping,
                         f"stopping: the running trial re-runs when you run `evo compare {cfg.name}` again; "
                         "Ctrl-C again to quit at once"):
        reason = comparison.run(make_proposer=lambda: build_proposer(cfg.proposer, args), slots=slots, creation=creation,
                                on_member=on_member, on_event=on_event)
    return exit_code(reason, "compare")


def cmd_compare(args) -> int:
    new = not Comparison.exists(args.name, root=args.root)
    comparison = _comparison(args)
    cfg = comparison.config
    try:
        status = 0 if cfg.searches else _run_members(args, comparison)
    except BaseException:
        if new:  # a comparison that failed before its first search leaves nothing behind
            comparison.discard()
        raise
    groups = comparison.groups()
    runs = load_runs(groups, root=args.root)
    if not runs:
        print("no searches to compare yet")
        return status
    table = compare_runs(runs, reference=args.reference)
    text = render_table(table)
    figure = comparison.folder / "compare.png"
    seeds = max(len(v) for v in groups.values())
    title = f"{cfg.name}: best {runs[0].metric} so far ({', '.join(groups)}; {seeds} seed{'s' if seeds != 1 else ''} each)"
    plot_comparison(runs, figure, title=title, table=table)
    (comparison.folder / "compare.txt").write_text(text + "\n")
    print(text)
    if status == 130:
        print("(interrupted: partial results; run the same command again to continue)")
    print(f"wrote {figure}\n      {comparison.folder / 'compare.txt'}")
    return status
