"""`evo status`, `show`, `best`, `export` and `report`: read a search, change nothing in it."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from analysis.summary import RECENT_ROWS, render_status, render_trial, summarize
from evo.cli._common import (UsageError, add_root, as_flags, check_output_file, positive_float, positive_int,
                             resolve_name)
from population.genomes import RemoteError
from population.results_tsv import results_tsv
from population.search import Search


def add_parsers(sub) -> None:
    p = sub.add_parser("status", help="how a search is doing", description="Best so far, trials done/running/failed, "
                       "keep rate, LLM spend, and what each device is doing.")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", type=positive_float, nargs="?", const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    add_root(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("show", help="one trial in full", description="Metrics, description, rationale, diff against the "
                       "parent(s) and the log tail of one trial.")
    p.add_argument("args", nargs="+", metavar="[NAME] N", help="search name (optional when there is only one) and "
                   "one or more trial numbers")
    add_root(p)
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("best", help="write the best genome's files", description="Write the files of the best genome "
                       "(the best mean score among feasible trials) into a folder.")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--out", default=None, help="folder to write into (default: runs/NAME/best)")
    p.add_argument("--front", action="store_true", help="several objectives: list the Pareto front instead (trial, "
                   "each objective's mean) and write nothing")
    p.add_argument("--prefer", metavar="OBJECTIVE", help="several objectives: write the front's best genome in this "
                   "objective (e.g. --prefer params: the smallest model on the front)")
    add_root(p)
    p.set_defaults(handler=cmd_best)

    p = sub.add_parser("export", help="export the trials", description="Write the trials as autoresearch's results.tsv "
                       "(commit, the metric (val_bpb), memory_gb, status, description).")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--tsv", action="store_true", help="results.tsv format (the default and only format so far)")
    p.add_argument("--out", default="-", help="file to write (default: stdout)")
    add_root(p)
    p.set_defaults(handler=cmd_export)

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
    p.set_defaults(handler=cmd_report)


def open_synced(name: str, root: str) -> Search:
    """Open a search to read its genomes: a shared one first fetches what other hosts pushed
    (if its remote does not answer, say so in one line and show what this host has)."""
    search = Search.open(name, root=root)
    if search.config.shared:
        try:
            search.sync()
        except RemoteError as e:
            print(f"warning: could not fetch from {search.config.remote} ({e}); showing the genomes this host has",
                  file=sys.stderr)
    return search


def cmd_status(args) -> int:
    name = resolve_name(args.name, args.root)
    search = Search.open(name, root=args.root)
    try:
        while True:
            summary = summarize(search, rows=None if args.json else RECENT_ROWS)
            waiting = (summary.get("run") or {}).get("waiting")
            if waiting:  # the API's error, as the library wrote it (naming `timeout`): here, the flag
                waiting["error"] = as_flags(waiting["error"])
            if args.json:
                print(json.dumps(summary, indent=2, default=str))
            else:
                if args.watch:  # one screen, redrawn: cut to the terminal, never wrapped or scrolled
                    size = shutil.get_terminal_size()
                    print("\033[2J\033[H" + render_status(summary, width=size.columns, height=size.lines - 1),
                          flush=True)
                else:
                    print(render_status(summary))
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        search.close()


def cmd_show(args) -> int:
    first, *rest = args.args
    # The first word is the search unless it is a trial number (and no search has that name).
    named = not first.isdigit() or (bool(rest) and Search.exists(first, root=args.root))
    name = first if named else resolve_name(None, args.root)
    words = rest if named else args.args
    if not words:
        raise UsageError("give the search name (optional when there is only one) and one or more trial numbers")
    numbers = []
    for word in words:
        try:
            numbers.append(int(word))
        except ValueError:
            raise UsageError(f"trial number must be a whole number, not {word!r}") from None
    with open_synced(name, args.root) as search:
        print("\n\n".join(render_trial(search, number) for number in numbers))
    return 0


def cmd_best(args) -> int:
    from evo.search import check_folder  # the engine's modules: imported by the commands that need them only

    name = resolve_name(args.name, args.root)
    with open_synced(name, args.root) as search:
        lineage = search.lineage()
        best = lineage.best
        if best is None:
            raise UsageError(f"search {name!r} has no successful trial yet")
        if args.front:
            print(render_front(search, lineage))
            return 0
        if args.prefer:
            best = preferred(search, lineage, args.prefer)
        out = check_folder("--out", args.out) if args.out else search.folder / "best"
        out.mkdir(parents=True, exist_ok=True)
        for path, text in search.repo.files(best.commit, search.config.mutable).items():
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_text(text)
        spread = f" ± {best.spread:.4f} over {len(best.values)} seeds" if best.spread is not None else ""
        print(f"trial #{best.trial} ({search.config.metric} {best.score:.6f}{spread}; {best.description}) -> {out}")
    return 0


def render_front(search: Search, lineage) -> str:
    """The Pareto front as a table (a single-objective search: its best alone)."""
    names = search.objectives.names
    lines = ["trial  " + "  ".join(f"{n:>14}" for n in names) + "  description"]
    for ind in lineage.front():
        lines.append(f"#{ind.trial:<5} " + "  ".join(f"{v:>14.6g}" for v in ind.objectives) + f"  {ind.description}")
    return "\n".join(lines)


def preferred(search: Search, lineage, name: str):
    """The front's best genome in objective `name` (ties: the better first objective)."""
    spec = search.objectives
    if name not in spec.names:
        raise UsageError(f"--prefer {name}: search {search.config.name!r} optimises {', '.join(spec.names)}; "
                         "name one of those")
    k = spec.names.index(name)
    sign = 1.0 if spec.directions[k] == "minimize" else -1.0
    first = 1.0 if spec.directions[0] == "minimize" else -1.0
    return min(lineage.front(), key=lambda i: (sign * i.objectives[k], first * i.objectives[0], i.trial))


def cmd_export(args) -> int:
    name = resolve_name(args.name, args.root)
    out = None if args.out == "-" else check_output_file("--out", args.out)
    with Search.open(name, root=args.root) as search:
        text = results_tsv(search.trials(), metric=search.config.metric, direction=search.config.direction)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    # The report's figures need networkx and the engine's modules: `evo status` should not wait for them.
    from analysis.report import search_facts, write_report
    from analysis.walk import best_lineage, render_walk
    from evo.search import check_folder

    name = resolve_name(args.name, args.root)
    if args.out:
        check_folder("--out", args.out)
    with open_synced(name, args.root) as search:
        files = write_report(search, out=args.out, max_nodes=args.max_nodes, engine=args.layout)
        print(search_facts(search).headline())
        steps = best_lineage(search.lineage())
        if len(steps) > 1:
            print(f"\nbest lineage ({len(steps) - 1} steps from the seed; diffs in the report):")
            print(render_walk(steps))
            print()
    print(f"wrote {files.html}\n      {files.progress}\n      {files.lineage}")
    return 0
