"""The `evo report`, `evo compare` and `evo import` commands: thin layers over analysis/ and evo.compare.

Kept apart from evo/cli.py so the run-time commands and the analysis commands can grow
independently; evo/cli.py registers these with `add_parsers` and dispatches to `COMMANDS`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from evo.search import Search, SearchError, describe_harness


def add_parsers(sub, *, add_root, add_creation, add_proposer_options=None, positive_int, non_negative_int,
                positive_float) -> None:
    """Add the report, compare and import subcommands to `evo`'s subparsers.

    Args:
        sub: the subparsers action of the `evo` parser.
        add_root: adds --root to a parser.
        add_creation: adds the search-creation flags (--profile, --budget, ...) to a parser.
        add_proposer_options: adds the proposer flags (--model, ...) to a parser, when the CLI has them.
        positive_int: argparse type for whole numbers >= 1.
        non_negative_int: argparse type for whole numbers >= 0.
        positive_float: argparse type for positive numbers.
    """
    p = sub.add_parser("report", help="figures and an HTML report of a search",
                       description="Write progress.png, lineage.png and a self-contained report.html (summary, "
                       "figures, interactive lineage, the best lineage with diffs, yield by operator and proposer, "
                       "a sortable table of trials) into runs/NAME/report/. Reads the search; changes nothing in it.")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--out", help="folder to write into (default: runs/NAME/report)")
    p.add_argument("--max-nodes", type=positive_int, default=70,
                   help="thin the lineage figure to about this many nodes (default: 70)")
    p.add_argument("--layout", choices=("auto", "tree", "dot"), default="auto",
                   help="lineage layout: tree (layered by generation), dot (graphviz), auto: dot when installed")
    add_root(p)

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
    g.add_argument("--quiet", action="store_true", help="print only the table")
    if add_proposer_options is not None:
        add_proposer_options(p)
    add_creation(p)
    p.set_defaults(seed=None)  # so a resumed comparison can tell "not given" from 0
    add_root(p)

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


# -- report ------------------------------------------------------------------------------------

def cmd_report(args) -> int:
    from analysis.report import write_report
    from evo.cli import _resolve_name

    name = _resolve_name(args.name, args.root)
    with Search.open(name, root=args.root) as search:
        files = write_report(search, out=args.out, max_nodes=args.max_nodes, engine=args.layout)
        from analysis.report import search_facts
        from analysis.walk import best_lineage, render_walk
        print(search_facts(search).headline())
        steps = best_lineage(search.lineage())
        if len(steps) > 1:
            print(f"\nbest lineage ({len(steps) - 1} steps from the seed; diffs in the report):")
            print(render_walk(steps))
            print()
    print(f"wrote {files.html}\n      {files.progress}\n      {files.lineage}")
    return 0


# -- import ------------------------------------------------------------------------------------

def cmd_import(args) -> int:
    from evo.importer import import_results_tsv

    with import_results_tsv(args.file, args.name, root=args.root, budget=args.budget,
                            seconds_per_trial=args.seconds_per_trial, storage=args.storage) as search:
        trials = search.trials()
        best = search.lineage().best
        best_s = f"; best val_bpb {best.score:.6f} (row {best.trial + 1}: {best.description})" if best else ""
        print(f"imported {len(trials)} rows from {args.file} as search {args.name} in {search.folder}{best_s}")
    return 0


# -- compare -----------------------------------------------------------------------------------

def _comparison(args):
    """Open the comparison NAME (checking the flags against it) or create it from the flags."""
    from evo.compare import CompareConfig, Comparison

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    if Comparison.exists(args.name, root=args.root):
        comparison = Comparison.open(args.name, root=args.root)
        cfg = comparison.config
        fixed = (("--strategies", strategies, cfg.strategies), ("--proposer", args.proposer, cfg.proposer),
                 ("--profile", args.profile, cfg.profile), ("--budget", args.budget, cfg.budget),
                 ("--reeval", args.reeval, cfg.reeval), ("--seed", args.seed, cfg.base_seed))
        for flag, given, value in fixed:
            if given is not None and value is not None and given != value:
                raise SearchError(f"{flag} is fixed at {value!r} for comparison {cfg.name!r}; drop the flag or "
                                 f"pick a new name")
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
    if not args.searches and (not strategies or not args.trials):
        raise SearchError(f"no comparison named {args.name!r} yet: give --strategies and --trials to run one, "
                         "or --searches to compare existing searches")
    from evo.strategies import STRATEGIES
    unknown = [s for s in strategies or [] if s not in STRATEGIES]
    if unknown:
        raise SearchError(f"unknown strategy {unknown[0]!r}: use {', '.join(STRATEGIES)}")
    config = CompareConfig(name=args.name, strategies=strategies or [], seeds=args.seeds or 1, trials=args.trials or 0,
                           proposer=args.proposer or "offline", profile=args.profile, budget=args.budget,
                           base_seed=args.seed or 0, reeval=args.reeval or 0, searches=list(args.searches or []))
    return Comparison.create(config, root=args.root)


def _slots_factory(args, comparison):
    """Device slots for each member, as `evo run --devices` would give them.

    Without --devices the harness is asked how many GPUs it sees, once, when the first
    member actually runs (a finished comparison never starts it)."""
    from evo.loop import parse_devices

    if args.devices:
        parse_devices(args.devices)  # a bad --devices fails here, before anything runs
        return lambda: parse_devices(args.devices)
    cuda: list[int] = []

    def slots():
        if not cuda:
            prepare = Path(args.project) / "prepare.py"
            for _, _, name in comparison.members():
                if Search.exists(name, root=args.root):
                    prepare = Path(args.root) / name / "harness" / "prepare.py"
                    break
            cuda.append(describe_harness(prepare.resolve(), comparison.config.profile)["cuda_devices"])
        return parse_devices(None, cuda[0])
    return slots


def cmd_compare(args) -> int:
    from analysis.compare import compare_runs, load_runs, plot_comparison, render_table
    from evo.cli import _creation_kwargs, make_proposer

    comparison = _comparison(args)
    cfg = comparison.config
    status = 0
    if not cfg.searches:
        # The proposer is built once here so a bad spec or a missing key fails before any search exists.
        make_proposer(cfg.proposer, args).close()
        slots = _slots_factory(args, comparison)
        creation = {k: v for k, v in _creation_kwargs(args).items()
                    if k in ("project", "mutable", "data", "storage", "cache_dir")}
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
            if args.quiet or kind != "finished":
                return
            value = info.get("value")
            value_s = f"{value:.4f}" if value is not None else "-"
            mark = " * new best" if info.get("kept") else ""
            print(f"   #{info['trial']:<4} {info.get('operator', ''):9s} {info['status']:9s} val_bpb {value_s}{mark}  "
                  f"{(info.get('description') or '')[:60]}", file=out, flush=True)

        def on_sigint(signum, frame):
            if comparison._stop.is_set():
                raise KeyboardInterrupt
            print("\nstopping: the running trial re-runs when you run `evo compare "
                  f"{cfg.name}` again; Ctrl-C again to quit at once", file=sys.stderr)
            comparison.stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        previous_term = signal.signal(signal.SIGTERM, on_sigint)
        try:
            reason = comparison.run(make_proposer=lambda: make_proposer(cfg.proposer, args), slots=slots,
                                    creation=creation, on_member=on_member, on_event=on_event)
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
        if reason == "interrupted":
            status = 130
        elif reason != "done":
            print(f"evo compare: {reason}", file=sys.stderr)
            status = 1
    groups = comparison.groups()
    runs = load_runs(groups, root=args.root)
    if not runs:
        print("no searches to compare yet")
        return status
    table = compare_runs(runs, reference=args.reference)
    text = render_table(table)
    figure = comparison.folder / "compare.png"
    seeds = max(len(v) for v in groups.values())
    title = f"{cfg.name}: best val_bpb so far ({', '.join(groups)}; {seeds} seed{'s' if seeds != 1 else ''} each)"
    plot_comparison(runs, figure, title=title, table=table)
    (comparison.folder / "compare.txt").write_text(text + "\n")
    print(text)
    if status == 130:
        print("(interrupted: partial results; run the same command again to continue)")
    print(f"wrote {figure}\n      {comparison.folder / 'compare.txt'}")
    return status


COMMANDS = {"report": cmd_report, "compare": cmd_compare, "import": cmd_import}
