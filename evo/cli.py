"""The `evo` command: a thin layer over evo.Search and evo.SearchLoop.

Every subcommand explains itself with --help; bad input ends with one line on stderr
and exit code 2, and never touches a finished trial.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from evo.loop import RunOptions, SearchLoop, parse_devices
from evo.search import Search, SearchError, describe_harness
from evo.strategies import EvolveStrategy, GreedyStrategy, RandomStrategy

EXIT_USAGE = 2


class UsageError(Exception):
    pass


# -- argument parsing ------------------------------------------------------------------

def _number(convert, what: str, valid, rule: str):
    """An argparse type: `convert` the text, then check it with `valid`; errors name the rule broken."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text}")
        return value
    return parse


_positive_int = _number(int, "a whole number", lambda v: v >= 1, "a number >= 1")
_non_negative_int = _number(int, "a whole number", lambda v: v >= 0, "a number >= 0")
_positive_float = _number(float, "a number", lambda v: math.isfinite(v) and v > 0, "a positive number")
_probability = _number(float, "a probability", lambda v: 0 <= v <= 1, "a probability in [0, 1]")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_root(p):
    p.add_argument("--root", default="runs", help="folder holding the searches (default: runs)")


def _add_proposer_options(p):
    g = p.add_argument_group("LLM and agent proposers", "anthropic reads its key from ANTHROPIC_API_KEY (and its "
                             "address from ANTHROPIC_BASE_URL if set); keys are never written to the search folder "
                             "nor passed to trials")
    g.add_argument("--model", help="model of the LLM proposer: anthropic (default claude-sonnet-5-5) or "
                   "openai-compatible (required there, unless --openai-model is given)")
    g.add_argument("--base-url", metavar="URL", help="openai-compatible endpoint, e.g. http://localhost:8000/v1 "
                   "(vLLM, llama.cpp, Ollama); default $OPENAI_BASE_URL; a key, if needed, comes from OPENAI_API_KEY")
    g.add_argument("--openai-model", metavar="MODEL", help="model of the openai-compatible proposer when --model "
                   "names the anthropic one (a mix of both)")
    g.add_argument("--openai-mode", choices=("auto", "tools", "json", "text"), default="auto",
                   help="how the openai-compatible model answers: auto (default: function calls, falling back to "
                   "JSON mode, then plain text, as the server allows) or one of them")
    g.add_argument("--agent-command", metavar="CMD", help="command proposer: a shell command run in a scratch copy "
                   "of the parent, with the task on stdin and in EVO_TASK.md; what it leaves in the mutable files "
                   "is the child; it may write a one-line description to the file named by $EVO_DESCRIPTION "
                   "(e.g. 'claude -p \"$(cat EVO_TASK.md)\" --permission-mode acceptEdits')")
    g.add_argument("--prices", metavar="FILE", help="JSON price table, USD per million tokens: "
                   '{"MODEL": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}}; '
                   "adds to or overrides the built-in one (default: $EVO_PRICES)")
    g.add_argument("--proposer-timeout", type=_positive_float, metavar="SECONDS",
                   help="limit of one LLM call (default 600) or of one "
                   "agent run (default 1800 for command)")


def _add_creation(p):
    g = p.add_argument_group("fixed when the search is created")
    g.add_argument("--profile", choices=("tiny", "cpu", "gpu"), help="task profile (default: gpu with CUDA, else cpu)")
    g.add_argument("--budget", type=_positive_float, help="seconds of counted training per trial (default: the profile's)")
    g.add_argument("--mutable", nargs="+", metavar="FILE", help="files the search may change (default: train.py)")
    g.add_argument("--data", help="data source: shakespeare (embedded, default), a folder of .txt/.parquet, or climbmix")
    g.add_argument("--storage", help="Optuna storage URL (default: sqlite in the search folder; postgresql://... to share)")
    g.add_argument("--project", default=".", help="folder with train.py, prepare.py and program.md (default: .)")
    g.add_argument("--cache-dir", help="data and tokenizer cache (default: $EVO_CACHE or ~/.cache/evoresearch)")
    g.add_argument("--seed", type=_non_negative_int, default=0, help="base random seed of the trials (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evo", description="Autonomous ML research as evolution: a population of train.py genomes "
                     "in git, every trial under the same time budget, every result in an Optuna study.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("init", help="create a search folder", description="Create runs/NAME: the population repository, "
                       "the Optuna study and the seed genome. The profile, budget and mutable files are fixed from here on.")
    p.add_argument("name", help="name of the search")
    _add_creation(p)
    _add_root(p)

    p = sub.add_parser("run", help="run or resume a search", description="Run (or resume) a search until --trials, --hours "
                       "or Ctrl-C. Creates the search on first use (with the creation flags). Safe to stop at any time: "
                       "`evo run NAME` continues where it stopped.")
    p.add_argument("name", help="name of the search")
    g = p.add_argument_group("this run")
    g.add_argument("--trials", type=_positive_int, help="stop when the search has this many finished trials, seed included")
    g.add_argument("--hours", type=_positive_float, help="stop starting trials after this many hours")
    g.add_argument("--devices", help="cuda:0,cuda:1 | cpu | cpu:N (default: every visible GPU, else one CPU slot)")
    g.add_argument("--strategy", choices=("evolve", "greedy", "random"), default="evolve",
                   help="evolve (default): tournament + crossover; greedy: autoresearch's hill-climb; random: best-of-N from the seed")
    g.add_argument("--proposer", default="offline", metavar="SPEC",
                   help="who writes children: offline (default, no network), anthropic, openai-compatible, command, "
                   "or a weighted mix such as offline:0.8,anthropic:0.2 (each trial records which one wrote it)")
    g.add_argument("--reeval", type=_non_negative_int, default=0, metavar="K",
                   help="re-evaluate a genome with K new seeds when it becomes the best; rank by the mean (default: 0)")
    g.add_argument("--prune", action="store_true", help="stop children whose loss is clearly behind at the same point of the budget")
    g.add_argument("--max-vram-gb", type=_positive_float, help="constraint: trials above this peak memory are never parents")
    g.add_argument("--max-cost-usd", type=_positive_float, help="stop proposing once the LLM spend reaches this")
    g.add_argument("--quiet", action="store_true", help="print only the final line")
    e = p.add_argument_group("evolve strategy")
    e.add_argument("--elite", type=_positive_int, default=8, help="genomes eligible as parents (default: 8)")
    e.add_argument("--tournament", type=_positive_int, default=3, help="tournament size (default: 3)")
    e.add_argument("--crossover-rate", type=_probability, default=0.2, help="probability of crossover (default: 0.2)")
    e.add_argument("--islands", type=_positive_int, default=1, help="sub-populations (default: 1)")
    e.add_argument("--migration-rate", type=_probability, default=0.1, help="chance of a parent from the next island (default: 0.1)")
    _add_proposer_options(p)
    _add_creation(p)
    _add_root(p)

    p = sub.add_parser("status", help="how a search is doing", description="Best so far, trials done/running/failed, "
                       "keep rate, LLM spend, and what each device is doing.")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", type=_positive_float, nargs="?", const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    _add_root(p)

    p = sub.add_parser("show", help="one trial in full", description="Metrics, description, rationale, diff against the "
                       "parent(s) and the log tail of one trial.")
    p.add_argument("args", nargs="+", metavar="[NAME] N", help="search name (optional when there is only one) and trial number")
    _add_root(p)

    p = sub.add_parser("best", help="write the best genome's files", description="Write the files of the best genome "
                       "(lowest mean val_bpb among feasible trials) into a folder.")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--out", default=None, help="folder to write into (default: runs/NAME/best)")
    _add_root(p)

    p = sub.add_parser("export", help="export the trials", description="Write the trials as autoresearch's results.tsv "
                       "(commit, val_bpb, memory_gb, status, description).")
    p.add_argument("name", nargs="?", help="name of the search (optional when there is only one)")
    p.add_argument("--tsv", action="store_true", help="results.tsv format (the default and only format so far)")
    p.add_argument("--out", default="-", help="file to write (default: stdout)")
    _add_root(p)

    from evo import cli_analysis  # report, compare, import (imported here: it imports this module)
    cli_analysis.add_parsers(sub, add_root=_add_root, add_creation=_add_creation,
                             add_proposer_options=_add_proposer_options, positive_int=_positive_int,
                             non_negative_int=_non_negative_int, positive_float=_positive_float)
    return parser


# -- helpers -----------------------------------------------------------------------------

def _resolve_name(name: str | None, root: str) -> str:
    if name:
        return name
    known = sorted(p.parent.name for p in Path(root).glob("*/search.json"))
    if len(known) == 1:
        return known[0]
    if not known:
        raise UsageError(f"no searches in {Path(root).resolve()}; start one with `evo run NAME`")
    raise UsageError(f"several searches in {root} ({', '.join(known)}); name one")


def _strategy(args):
    if args.strategy == "greedy":
        return GreedyStrategy()
    if args.strategy == "random":
        return RandomStrategy()
    return EvolveStrategy(elite=args.elite, tournament=args.tournament, crossover_rate=args.crossover_rate,
                          islands=args.islands, migration_rate=args.migration_rate)


PROPOSERS = ("offline", "anthropic", "openai-compatible", "command")


def parse_proposer_spec(spec: str) -> list[tuple[str, float]]:
    """`offline:0.8,anthropic:0.2` -> [("offline", 0.8), ("anthropic", 0.2)]; a bare name weighs 1."""
    mix, hint = [], f"use {', '.join(PROPOSERS)} or a weighted mix such as offline:0.8,anthropic:0.2"
    for part in (p.strip() for p in spec.split(",")):
        name, sep, weight = part.partition(":")
        name = name.strip()
        if name not in PROPOSERS:
            raise UsageError(f"unknown proposer {name!r} in --proposer {spec!r}: {hint}")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise UsageError(f"bad weight {weight!r} for {name} in --proposer {spec!r}: use a positive number, e.g. {name}:0.2")
        if name in (n for n, _ in mix):
            raise UsageError(f"{name} is listed twice in --proposer {spec!r}")
        mix.append((name, value))
    return mix


def make_proposer(spec: str, args=None):
    """The proposer (or weighted mix) that `--proposer SPEC` and the proposer flags in `args` ask for.

    Raises UsageError with one line for a bad spec, a missing flag or key, or a bad price file."""
    from evo.proposers import MixedProposer, ProposerError, load_prices

    mix = parse_proposer_spec(spec)
    try:
        prices = load_prices(getattr(args, "prices", None))
    except ValueError as e:
        raise UsageError(str(e))
    built = []
    try:
        for name, weight in mix:
            built.append((_one_proposer(name, args, prices, [n for n, _ in mix]), weight))
    except (ProposerError, UsageError) as e:  # e.g. a missing key: say so before anything is created
        for proposer, _ in built:
            proposer.close()
        raise UsageError(str(e))
    return built[0][0] if len(built) == 1 else MixedProposer(built)


def _one_proposer(name: str, args, prices: dict, names: list[str]):
    from evo.proposers import AnthropicProposer, CommandProposer, OfflineProposer, OpenAICompatibleProposer
    from evo.proposers._anthropic import DEFAULT_MODEL
    from evo.proposers._pricing import price_for

    option = lambda attr: getattr(args, attr, None)
    timeout = {"timeout": option("proposer_timeout")} if option("proposer_timeout") else {}
    if name == "offline":
        return OfflineProposer()
    if name == "anthropic":
        model = option("model") or DEFAULT_MODEL
        if price_for(model, prices) is None:
            if option("max_cost_usd"):
                raise UsageError(f"no price known for model {model!r}, so --max-cost-usd cannot be enforced: "
                                 f"add it to a --prices file")
            print(f"warning: no price known for model {model!r}: its calls count as $0 (add it with --prices FILE)",
                  file=sys.stderr)
        return AnthropicProposer(model=model, prices=prices, **timeout)
    if name == "openai-compatible":
        base_url = option("base_url") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise UsageError("--proposer openai-compatible needs --base-url, e.g. http://localhost:8000/v1")
        model = option("openai_model") or (option("model") if "anthropic" not in names else None)
        if not model:
            raise UsageError("--proposer openai-compatible needs the model the server serves: --model NAME "
                             "(--openai-model NAME when mixed with anthropic)")
        return OpenAICompatibleProposer(base_url=base_url, model=model, prices=prices,
                                        mode=option("openai_mode") or "auto", **timeout)
    command = option("agent_command")
    if not command:
        raise UsageError("--proposer command needs --agent-command \"...\": the agent to run in a copy of the parent")
    return CommandProposer(command, **timeout)


def _creation_kwargs(args) -> dict:
    return dict(root=args.root, project=args.project, profile=args.profile, budget=args.budget,
                mutable=args.mutable or ["train.py"], data=args.data, storage=args.storage, cache_dir=args.cache_dir,
                seed=args.seed)


def _check_fixed(search: Search, args) -> None:
    cfg = search.config
    from evo.importer import is_imported
    if is_imported(search):
        raise UsageError(f"search {cfg.name!r} was imported from a results.tsv and has no genomes to run; "
                         f"report it (evo report) or compare it (evo compare --searches)")
    for flag, given, fixed in (("--profile", args.profile, cfg.profile), ("--budget", args.budget, cfg.budget),
                               ("--mutable", args.mutable, cfg.mutable), ("--data", args.data, cfg.data)):
        if given is not None and given != fixed:
            raise UsageError(f"{flag} is fixed at {fixed!r} for search {cfg.name!r}; drop the flag or start a new search")


def _fmt(value, digits=4):
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Reporter:
    """Prints one line per finished trial with the count, the best so far and an ETA."""

    def __init__(self, search: Search, options: RunOptions, slots: int, quiet: bool = False, out=sys.stdout):
        self.search, self.options, self.slots, self.quiet, self.out = search, options, slots, quiet, out
        self.started = time.time()
        self.finished_here = 0

    def __call__(self, kind: str, info: dict) -> None:
        if self.quiet and kind != "stopped":
            return
        if kind == "preparing":
            line = f"  {info['line']}" if "line" in info else f"preparing data: {info['data']} for profile {info['profile']}"
            print(line, file=self.out, flush=True)
        elif kind == "started":
            parents = ",".join(f"#{p}" for p in info.get("parents", []))
            print(f"       #{info['trial']:<4} started on {info['slot']}: {info.get('operator', '')} {parents} "
                  f"{(info.get('description') or '')[:70]}", file=self.out, flush=True)
        elif kind == "recovered":
            print(f"trial #{info['trial']} was left running by a stopped process: marked interrupted, will re-run",
                  file=self.out, flush=True)
        elif kind == "finished":
            self.finished_here += 1
            trials = self.search.trials()
            counted = sum(1 for t in trials if t.counts)
            from population.lineage import Lineage
            best = Lineage(trials).best
            total = self.options.trials
            count = f"[{counted:>3}/{total}]" if total else f"[{counted:>3}]"
            status = info["status"]
            value = info.get("value")
            mark = " * new best" if info.get("kept") else ""
            what = info.get("description") or info.get("operator", "")
            line = f"{count} #{info['trial']:<4} {info.get('operator', ''):9s} {status:9s} val_bpb {_fmt(value)}{mark}  {what[:70]}"
            if status not in ("ok", "duplicate") and info.get("error"):
                line += f"  ({info['error'][:80]})"
            eta = ""
            if total and self.finished_here:
                per = (time.time() - self.started) / self.finished_here
                eta = f" | eta {_duration(per * max(0, total - counted))}"
            best_s = f" | best {_fmt(best.score)} (#{best.trial})" if best else ""
            print(line + best_s + eta, file=self.out, flush=True)
        elif kind == "stopped":
            best = self.search.lineage().best
            best_s = f"best val_bpb {_fmt(best.score)} (trial #{best.trial}: {best.description})" if best else "no successful trial"
            print(f"stopped: {info['reason']}; {best_s}", file=self.out, flush=True)


# -- commands ----------------------------------------------------------------------------

def cmd_init(args) -> int:
    search = Search.create(args.name, **_creation_kwargs(args))
    cfg = search.config
    print(f"created search {cfg.name} in {search.folder} (profile {cfg.profile}, budget {cfg.budget:g}s, "
          f"mutable {', '.join(cfg.mutable)}, data {cfg.data})")
    return 0


def cmd_run(args) -> int:
    proposer = make_proposer(args.proposer, args)
    strategy = _strategy(args)
    slots = parse_devices(args.devices) if args.devices else None  # reject a bad device before creating anything
    if Search.exists(args.name, root=args.root):
        search = Search.open(args.name, root=args.root, pruner=_pruner(args))
        _check_fixed(search, args)
    else:
        Search.create(args.name, **_creation_kwargs(args)).close()
        search = Search.open(args.name, root=args.root, pruner=_pruner(args))
    if slots is None:
        slots = parse_devices(None, describe_harness(search.harness[0], search.config.profile)["cuda_devices"])
    options = RunOptions(trials=args.trials, hours=args.hours, reeval=args.reeval, prune=args.prune,
                         max_vram_gb=args.max_vram_gb, max_cost_usd=args.max_cost_usd)
    reporter = Reporter(search, options, len(slots), quiet=args.quiet)
    cfg = search.config
    if not args.quiet:
        print(f"search {cfg.name}: profile {cfg.profile}, budget {cfg.budget:g}s, strategy {strategy.describe()}, "
              f"proposer {proposer.name}, devices {', '.join(s.name for s in slots)}; folder {search.folder}", flush=True)
    loop = SearchLoop(search, strategy, proposer, slots, options, on_event=reporter)

    def on_sigint(signum, frame):
        if loop.stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping: killing running trials (they re-run on resume); Ctrl-C again to quit at once", file=sys.stderr)
        loop.stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_term = signal.signal(signal.SIGTERM, on_sigint)
    try:
        reason = loop.run()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
        search.close()
    if reason == "interrupted":
        return 130
    return 1 if loop.error else 0


def _pruner(args):
    if not getattr(args, "prune", False):
        return None
    import optuna
    # Stop a child only when its loss is worse than three quarters of the finished trials at the
    # same percent of the budget, and only past half of it: the learning-rate schedule makes
    # earlier losses poor predictors. Off by default: in bench/prune_payoff.py (tiny, 8 s, 4 min
    # each) a median rule at 30% pruned 31 of 37 children and this one 21 of 29, and neither
    # beat the unpruned search by more than the noise (best 2.538 vs 2.548; 2.564 vs 2.545).
    return optuna.pruners.PercentilePruner(75.0, n_startup_trials=5, n_warmup_steps=50, interval_steps=1)


def cmd_status(args) -> int:
    from analysis.summary import render_status, summarize
    name = _resolve_name(args.name, args.root)
    search = Search.open(name, root=args.root)
    try:
        while True:
            summary = summarize(search)
            if args.json:
                print(json.dumps(summary, indent=2, default=str))
            else:
                if args.watch:
                    print("\033[2J\033[H", end="")
                print(render_status(summary))
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        search.close()


def cmd_show(args) -> int:
    from analysis.summary import render_trial
    if len(args.args) == 1:
        name, number = _resolve_name(None, args.root), args.args[0]
    elif len(args.args) == 2:
        name, number = args.args
    else:
        raise UsageError("give the search name (optional when there is only one) and a trial number")
    try:
        number = int(number)
    except ValueError:
        raise UsageError(f"trial number must be a whole number, not {number!r}")
    with Search.open(name, root=args.root) as search:
        print(render_trial(search, number))
    return 0


def cmd_best(args) -> int:
    name = _resolve_name(args.name, args.root)
    with Search.open(name, root=args.root) as search:
        best = search.lineage().best
        if best is None:
            raise UsageError(f"search {name!r} has no successful trial yet")
        out = Path(args.out) if args.out else search.folder / "best"
        out.mkdir(parents=True, exist_ok=True)
        for path, text in search.repo.files(best.commit, search.config.mutable).items():
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_text(text)
        spread = f" ± {best.spread:.4f} over {len(best.values)} seeds" if best.spread is not None else ""
        print(f"trial #{best.trial} (val_bpb {best.score:.6f}{spread}; {best.description}) -> {out}")
    return 0


def cmd_export(args) -> int:
    from analysis.summary import results_tsv
    name = _resolve_name(args.name, args.root)
    with Search.open(name, root=args.root) as search:
        text = results_tsv(search.trials())
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


COMMANDS = {"init": cmd_init, "run": cmd_run, "status": cmd_status, "show": cmd_show, "best": cmd_best, "export": cmd_export}


def _analysis_command(name: str):
    def command(args) -> int:
        from evo import cli_analysis
        return cli_analysis.COMMANDS[name](args)
    return command


COMMANDS.update({name: _analysis_command(name) for name in ("report", "compare", "import")})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SearchError, UsageError, LookupError) as e:
        print(f"evo {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Delegate to the imported module so `python -m evo.cli` and the `evo` script share one
    # set of classes (UsageError raised by evo.cli_analysis is then the one caught here).
    from evo.cli import main as _main
    sys.exit(_main())
