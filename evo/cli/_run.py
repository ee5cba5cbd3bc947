"""`evo init`, `evo run` and `evo worker`: create a search, run or resume it, work on a shared one."""

from __future__ import annotations

import argparse
import random
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evo.cli._common import (UsageError, add_creation, add_noise_options, add_proposer_options, add_root,
                             add_strategy_options, as_flags, build_proposer, creation_kwargs, exit_code,
                             non_negative_int, peer_project, positive_float, positive_int, stop_on_signals,
                             strategy_options, trial_limit)
from evo.cli._progress import make_reporter
from evo.devices import Slot, check_slots, default_slots, nvidia_gpus, parse_devices
from evo.hosts import OneHost, SharedHosts
from evo.loop import BackoffSpec, LimitSpec, NoiseSpec, PromotionSpec, RunOptions, SearchLoop, fix_ladder
from evo.promotion import DEFAULT_TOP, LadderError, check_fits, parse_ladder
from evo.proposers import Genome, ProposalContext, ProposerError
from evo.search import NAMED_SOURCES, check_folder, create_search, describe_harness, join_search, resolve_sandbox
from evo.strategies import STRATEGIES, make_strategy
from evo.targets import target_of
from population.importer import check_runnable
from population.lineage import NOISE_MULTIPLE
from population.objectives import Constraint, Objective, ObjectiveError
from population.search import Search, SearchError
from population.store import redact


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

    p = sub.add_parser("worker", help="work on a search shared by several hosts",
                       description="Join a shared search (made with `evo init NAME --storage postgresql://... --remote "
                       "GIT_URL`) and take its trials until its --trials/--hours limit is reached across all workers. "
                       "Run one per host (or per folder): by hand, over ssh, or as a SLURM job array. The first time "
                       "on a host it builds runs/NAME from the database and the remote; later, `evo worker NAME` alone "
                       "resumes. A worker killed in any way leaves its trials to the others after the grace period.")
    p.add_argument("name", help="name of the search")
    p.add_argument("--storage", help="the search's PostgreSQL URL as this host reaches it (needed the first time on a "
                   "host; no file keeps its password: give it again each time, or put it in PGPASSWORD or ~/.pgpass)")
    p.add_argument("--remote", metavar="GIT_URL", help="the population's git remote as this host reaches it "
                   "(needed the first time on a host)")
    p.add_argument("--patience", type=positive_float, default=600.0, metavar="SECONDS",
                   help="how long to keep retrying a lost database or remote before stopping (default: 600)")
    p.add_argument("--cache-dir", help="this host's data and tokenizer cache (default: $EVO_CACHE or ~/.cache/evoresearch)")
    add_run_options(p, shared=True)
    add_strategy_options(p)
    add_proposer_options(p)
    add_root(p)
    p.set_defaults(handler=cmd_worker)


def add_run_options(p, *, shared: bool = False) -> None:
    g = p.add_argument_group("this run")
    if shared:
        g.add_argument("--trials", type=trial_limit, metavar="N|none", help="the search's limit: finished trials "
                       "across all workers, seed included (sets it for every worker; none lifts it; default: the limit "
                       "already set)")
        g.add_argument("--hours", type=positive_float, help="the search's limit: stop starting trials this many hours "
                       "after its first trial (sets it for every worker; default: the limit already set)")
    else:
        g.add_argument("--trials", type=trial_limit, metavar="N|none", help="stop when the search has this many "
                       "finished trials, seed included; the search keeps this limit for later runs until another "
                       "--trials N, or --trials none to lift it (default: the limit already set, else none)")
        g.add_argument("--hours", type=positive_float, help="stop starting trials after this many hours (this run only)")
    g.add_argument("--devices", help="cuda:0,cuda:1 | cpu | cpu:N (default: every visible GPU, else one CPU slot)")
    g.add_argument("--strategy", choices=tuple(STRATEGIES), default="evolve",
                   help="evolve (default): tournament + crossover; greedy: autoresearch's hill-climb; random: best-of-N from the seed")
    g.add_argument("--proposer", default="offline", metavar="SPEC",
                   help="who writes children: offline (default, no network), anthropic, openai-compatible, command, "
                   "or a weighted mix such as offline:0.8,anthropic:0.2 (each trial records which one wrote it); "
                   "adaptive:offline,anthropic learns the weights from which member's children make new bests")
    g.add_argument("--reeval", type=non_negative_int, default=0, metavar="K",
                   help="re-evaluate a genome with K new seeds when it becomes the best; rank by the mean (default: 0)")
    add_noise_options(g)
    g.add_argument("--prune", action="store_true", help="stop children whose loss is clearly behind at the same point of the budget")
    g.add_argument("--max-vram-gb", type=positive_float, help="constraint: trials above this peak memory are never parents")
    g.add_argument("--max-memory-gb", type=positive_float, help="memory one trial's processes may use before they are "
                   "stopped as oom (default: 85%% of this machine's memory shared among the devices)")
    g.add_argument("--max-cost-usd", type=positive_float, help="stop proposing once the LLM spend reaches this")
    g.add_argument("--promote", metavar="LADDER", help="re-run the best genomes at larger scales: rungs separated by "
                   "commas, each budget*K and/or env:NAME=VALUE joined by +, e.g. budget*5 or budget*3,budget*9; "
                   "parents come from the highest rung (fixed for the search once used)")
    g.add_argument("--promote-top", type=positive_float, default=DEFAULT_TOP, metavar="F",
                   help="fraction of the genomes scored at a rung that climb to the next (default: 1/3)")
    g.add_argument("--api-backoff", type=backoff, default=(15.0, 600.0), metavar="FIRST[,LONGEST]",
                   help="seconds to wait before asking an LLM API again once it stopped answering, doubling up to "
                   "LONGEST while it stays down (default: 15,600); meanwhile devices re-evaluate the best genomes "
                   "or the offline member of a mix proposes, and the search never stops for an outage")
    g.add_argument("--no-memory", action="store_true", help="propose without the lab notebook (what this and earlier "
                   "searches of the task measured, see evo ideas), as before it existed: for fair comparisons")
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
    """This run's options from the flags; a combination that cannot work is a UsageError."""
    try:
        return RunOptions(limits=LimitSpec(trials=args.trials, hours=args.hours, max_cost_usd=args.max_cost_usd),
                          noise=NoiseSpec(reeval=args.reeval, noise_runs=args.noise_runs or 0,
                                          min_gain=0.0 if args.min_gain is None else args.min_gain),
                          promotion=PromotionSpec(ladder=parse_ladder(args.promote) if args.promote else (),
                                                  top=args.promote_top),
                          backoff=BackoffSpec(api_backoff=args.api_backoff),
                          prune=args.prune, max_vram_gb=args.max_vram_gb, max_memory_gb=args.max_memory_gb,
                          memory=not args.no_memory)
    except ValueError as e:
        raise UsageError(str(e)) from None



@dataclass(frozen=True)
class FixedFlag:
    """A creation flag that cannot change once the search exists: given again, it must say what the search has."""

    flag: str
    attr: str                                      # its name in argparse's namespace
    recorded: Callable[[Search], tuple]            # the values that say what the search has (the first is shown)
    normal: Callable[[object], object] = lambda v: v  # the given value as the search would record it
    kind: str = ""                                 # "harness" or "command": the kind of search it describes


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _sandbox(choice: str) -> str:
    return resolve_sandbox(choice) if choice == "auto" else choice


# Every creation flag but --cache-dir (this host's data cache, which may move: see `apply_changeable`).
FIXED = (
    FixedFlag("--profile", "profile", lambda s: (s.config.profile,), kind="harness"),
    FixedFlag("--budget", "budget", lambda s: (s.config.budget,)),
    FixedFlag("--mutable", "mutable", lambda s: (s.config.mutable,)),
    FixedFlag("--data", "data", lambda s: (s.config.data,), lambda d: d if d in NAMED_SOURCES else _absolute(d),
              kind="harness"),
    FixedFlag("--project", "project", lambda s: (s.config.project,) if s.config.project else (), _absolute),
    FixedFlag("--seed", "seed", lambda s: (s.config.seed,)),
    FixedFlag("--sandbox", "sandbox", lambda s: (s.config.sandbox,), _sandbox),
    FixedFlag("--allow-network", "allow_network", lambda s: (s.config.allow_network,), lambda v: v or None),
    FixedFlag("--read", "read", lambda s: (s.config.read,), lambda r: [_absolute(f) for f in r] or None),
    # Compared without a password: how search.json keeps a URL is not the user's concern.
    FixedFlag("--storage", "storage", lambda s: (redact(s.config.storage_url(s.paths)), redact(s.config.storage)),
              redact),
    FixedFlag("--remote", "remote", lambda s: (s.config.remote,)),
    FixedFlag("--heartbeat", "heartbeat", lambda s: (s.config.heartbeat,)),
    FixedFlag("--grace", "grace", lambda s: (s.config.grace,)),
    FixedFlag("--run", "run", lambda s: (s.config.target.get("run"),), kind="command"),
    FixedFlag("--metric", "metric", lambda s: (s.config.metric,), kind="command"),
    FixedFlag("--direction", "direction", lambda s: (s.config.direction,), kind="command"),
    FixedFlag("--metric-pattern", "metric_pattern", lambda s: (s.config.target.get("pattern"),), kind="command"),
    FixedFlag("--evaluate", "evaluate", lambda s: (s.config.target.get("evaluate"),), kind="command"),
    # Compared as the search records them (the spelling may differ: params:min is params:minimize).
    FixedFlag("--objective", "objective", lambda s: ([o.spelled() for o in s.objectives.objectives],),
              lambda given: _objectives_given(given)),
    FixedFlag("--constraint", "constraint", lambda s: ([c.key for c in s.objectives.constraints],),
              lambda given: _constraints_given(given)),
)


def _objectives_given(texts: list[str]):
    """--objective flags as the search would record them (None when none were given; a spelling that does
    not parse is left as it is, so it differs and the fixed-flag line names it)."""
    if not texts:
        return None
    try:
        return [Objective.parse(t).spelled() for t in texts]
    except ObjectiveError:
        return texts


def _constraints_given(texts: list[str]):
    if not texts:
        return None
    try:
        return [Constraint.parse(t).key for t in texts]
    except ObjectiveError:
        return texts


def check_fixed(args, search: Search) -> None:
    """A creation flag given again must say what the search already fixed (a UsageError naming the fix)."""
    cfg = search.config
    kind = "command" if cfg.target else "harness"
    for fixed in FIXED:
        given = getattr(args, fixed.attr, None)
        given = None if given is None else fixed.normal(given)
        recorded = fixed.recorded(search)
        if given is None or not recorded or given in recorded:
            continue
        if fixed.kind and fixed.kind != kind:
            what = (f"runs the command {cfg.target['run']!r}, not evoresearch's harness" if cfg.target else
                    "runs evoresearch's harness (prepare.py), not a command")
            raise UsageError(f"search {cfg.name!r} already exists and {what}: drop {fixed.flag}, or give a new name "
                             "to create another search")
        shown = "none" if recorded[0] in (None, "") else repr(recorded[0])  # a search made without --objective: none
        raise UsageError(f"{fixed.flag} is fixed at {shown} for search {cfg.name!r}; drop the flag or start a new "
                         "search (another name)")


def apply_changeable(args, search: Search) -> None:
    """Creation flags that may change on resume take effect: --cache-dir (the harness's data, on this host)."""
    cache_dir = getattr(args, "cache_dir", None)
    if cache_dir is None or search.config.target:
        return
    cache_dir = str(check_folder("--cache-dir", cache_dir))
    if cache_dir != search.config.cache_dir:
        search.use_cache_dir(cache_dir)


def cmd_init(args) -> int:
    if args.remote and args.storage and not Search.exists(args.name, root=args.root) \
            and Search.in_database(args.storage, args.name):
        search = join_search(args.name, root=args.root, storage=args.storage, remote=args.remote,
                             cache_dir=args.cache_dir)
        try:
            check_fixed(args, search)
        except UsageError:
            search.close()
            raise
        print(f"joined shared search {search.config.name} in {search.folder} (study {redact(search.config.storage)}, "
              f"population {search.config.remote})")
    else:
        search = create(args)
    if search.config.shared:
        cfg = search.config
        print(f"start one worker per host: evo worker {cfg.name} --storage '{redact(cfg.storage)}' --remote "
              f"'{cfg.remote}' --trials N")
    search.close()
    return 0


def create(args) -> Search:
    """Create the search the flags describe and say what was made (and what the user should know)."""
    check_folder("--root", args.root)
    had_program = (Path(args.project or ".") / "program.md").exists()
    search = create_search(args.name, **creation_kwargs(args))
    cfg = search.config
    what = (f"profile {cfg.profile}, data {cfg.data}" if not cfg.target else
            f"run '{cfg.target['run']}', {cfg.direction} {cfg.metric}" if cfg.target.get("run") else
            f"evaluate '{cfg.target['evaluate']}', {cfg.direction} {cfg.metric}")
    where = f"; study {redact(cfg.storage)}, population {cfg.remote}" if cfg.shared else ""
    print(f"created search {cfg.name} in {search.folder} ({what}, budget {cfg.budget:g}s, mutable "
          f"{', '.join(cfg.mutable)}, sandbox {cfg.sandbox}, scored {cfg.evaluation.replace('harness', 'by the harness')}"
          f"{where})")
    peer = peer_project(args)
    if peer is not None:
        _say_peer_settings(peer, running=args.command == "run" and args.trials == peer.trials)
    elif not had_program and search.paths.program.exists():
        print(f"the project has no program.md: wrote {search.paths.program} from a template; edit it to tell LLM "
              "proposers what to try", file=sys.stderr)
    if cfg.sandbox == "none":
        secret = "the validation data" if not cfg.target else "whatever scores it"
        print(f"warning: trials run without a sandbox: a genome can read {secret}, fake its score or change the "
              "search folder (install bubblewrap: apt-get install bubblewrap)", file=sys.stderr)
    return search


def _say_peer_settings(peer, *, running: bool) -> None:
    """What the peer project's config.yaml gave, and what the user must pass by hand or cannot have."""
    took = [f"trials {peer.trials}"] if peer.trials and running else []
    took += ["system message -> program.md"] if peer.program else []
    took += [f"stage 1 evaluate_stage1, threshold {peer.threshold:g}"] if peer.quick else []
    took += [f"evaluator timeout {peer.eval_limit:g}s"] if peer.eval_limit else []
    if took:
        print(f"from {peer.folder / 'config.yaml'}: {', '.join(took)}")
    flags = [f"--trials {peer.trials}"] if peer.trials and not running else []
    flags += [peer.proposer_hint()] if peer.models else []
    flags += [f"--islands {peer.islands}"] if peer.islands else []
    flags += [f"--migration-rate {peer.migration_rate:g}"] if peer.migration_rate is not None else []
    if flags:
        print(f"its other settings are flags of evo run: {' '.join(flags)}")
    if peer.unmapped:
        print(f"not mapped (no counterpart here): {', '.join(peer.unmapped)}", file=sys.stderr)


def open_or_create(args, slots: list[Slot] | None = None) -> Search:
    """The search `evo run NAME` means: the existing one (its fixed settings unchanged) or a new one.
    The devices asked for are checked against the GPUs trials would see before either."""
    if not Search.exists(args.name, root=args.root):
        prepare = Path(args.project or ".") / "prepare.py"
        if slots and args.run is None and args.evaluate is None and prepare.exists():  # without it, creation says what is missing
            _check_devices(slots, int(describe_harness(prepare.resolve(), args.profile).get("cuda_devices", 0)))
        elif slots:
            _check_devices(slots, nvidia_gpus())
        return create(args)
    # --storage again: its password, which the folder does not keep (the URL must name the same study;
    # for another one, check_fixed says which flag to drop).
    given = getattr(args, "storage", None)
    try:
        search = Search.open(args.name, root=args.root, storage=given)
    except SearchError:
        if not given:
            raise
        search = Search.open(args.name, root=args.root)
    try:
        check_runnable(search)
        check_fixed(args, search)
        apply_changeable(args, search)
    except Exception:
        search.close()
        raise
    return search


def _noise_rule(options: RunOptions) -> str:
    """How this run measures noise and judges gains, for its first line ("" when it does neither)."""
    noise = options.noise
    parts = [f"{noise.noise_runs} noise runs of the seed"] if noise.noise_runs else []
    if noise.min_gain == "auto":
        parts.append(f"min gain auto ({NOISE_MULTIPLE:g} x the noise floor)")
    elif noise.min_gain:
        parts.append(f"min gain {noise.min_gain:g}")
    return "".join(f", {p}" for p in parts)


def _check_devices(slots: list[Slot], gpus: int) -> None:
    for warning in check_slots(slots, gpus):
        print(f"warning: {as_flags(warning)}", file=sys.stderr)


def cmd_run(args) -> int:
    peer = None if Search.exists(args.name, root=args.root) else peer_project(args)
    if peer is not None and args.trials is None:
        args.trials = peer.trials  # max_iterations / num_generations, unless --trials says otherwise
    options = run_options(args)  # reject options that cannot work before creating anything
    proposer = build_proposer(args.proposer, args)
    strategy = make_strategy(args.strategy, **strategy_options(args, args.strategy))
    slots = parse_devices(args.devices) if args.devices else None  # reject a bad device before creating anything
    if options.promotion.ladder and args.budget and not Search.exists(args.name, root=args.root):
        check_ladder(options, budget=args.budget)
    search = open_or_create(args, slots)
    try:
        check_ladder(options, search=search)
    except UsageError:
        search.close()
        raise
    if search.config.shared:  # `evo run` on a shared search is this host's worker
        search.close()
        search = Search.open(args.name, root=args.root, worker=True)
        return run_loop(search, args, options, strategy, proposer, slots, SharedHosts(search))
    return run_loop(search, args, options, strategy, proposer, slots, OneHost())


def check_ladder(options: RunOptions, *, search: Search | None = None, budget: float | None = None) -> None:
    """A --promote ladder that cannot run here (too long for --hours, or not the search's own) is a UsageError."""
    ladder, hours = options.promotion.ladder, options.limits.hours
    if not ladder:
        return
    try:
        if search is not None:
            check_fits(ladder, budget=search.config.budget, startup=search.config.startup_grace, hours=hours)
            fix_ladder(search, ladder)
        else:
            check_fits(ladder, budget=budget, hours=hours)
    except (LadderError, SearchError) as e:
        raise UsageError(str(e)) from None


def run_loop(search: Search, args, options: RunOptions, strategy, proposer, slots, hosts: OneHost) -> int:
    """Run the loop until it stops; the exit code says how (0 done, 1 error, 130 interrupted)."""
    slots = slots or default_slots(search)
    cfg = search.config
    try:
        fits = check_proposer(search, proposer)
    except ProposerError as e:  # e.g. the prompt cannot fit the model: say so before anything runs
        proposer.close()
        search.close()
        raise UsageError(str(e)) from None
    if not args.quiet:
        who = f"worker on {socket.gethostname()} of shared search" if hosts.shared else "search"
        task = f"profile {cfg.profile}" if not cfg.target else f"{cfg.direction} {cfg.metric} ({cfg.evaluation})"
        print(f"{who} {cfg.name}: {task}, budget {cfg.budget:g}s, strategy {strategy.describe()}, "
              f"proposer {proposer.name}, devices {', '.join(s.name for s in slots)}{_noise_rule(options)}; "
              f"folder {search.folder}", flush=True)
        for line in fits:
            print(as_flags(line), flush=True)
    reporter = make_reporter(search, options, quiet=args.quiet, strategy=strategy.name, proposer=proposer.name)
    loop = SearchLoop(search, strategy, proposer, slots, options, on_event=reporter, hosts=hosts)
    reporter.follow(loop)
    leave = ("stopping: killing running trials (other workers re-run them)" if hosts.shared else
             "stopping: killing running trials (they re-run on resume)")

    def quit_now() -> None:  # a second Ctrl-C
        reporter.abort()
        loop.abandon()

    try:
        with reporter, stop_on_signals(loop.stop.set, loop.stop.is_set, f"{leave}; Ctrl-C again to quit at once",
                                       abandon=quit_now, say=reporter.notice):
            reason = loop.run()
    finally:
        search.close()
    return exit_code(reason, args.command)


def check_proposer(search: Search, proposer) -> list[str]:
    """The proposer's lines about this search (does its prompt for the best genome, or the seed, fit the model?);
    ProposerError when it cannot work here."""
    cfg, lineage = search.config, search.lineage()
    best = lineage.best
    if best is not None and not search.repo.missing([best.commit]):  # a shared search's best may be on the remote only
        parent = search.genome(best.trial, lineage)
    elif cfg.seed_commit:
        parent = Genome(trial=0, commit=cfg.seed_commit, files=search.repo.files(cfg.seed_commit, cfg.mutable),
                        description="seed genome")
    else:
        return []
    ctx = ProposalContext(program=search.program, mutable=cfg.mutable, lineage=lineage, rng=random.Random(0),
                          settings=target_of(cfg).proposer_settings())
    return proposer.preflight(parent, ctx)


def cmd_worker(args) -> int:
    options = run_options(args)  # reject options that cannot work before joining anything
    proposer = build_proposer(args.proposer, args)
    strategy = make_strategy(args.strategy, **strategy_options(args, args.strategy))
    slots = parse_devices(args.devices) if args.devices else None
    if not Search.exists(args.name, root=args.root):
        if not args.storage or not args.remote:
            raise UsageError(f"no folder for search {args.name!r} in {Path(args.root).resolve()} yet: give --storage "
                             "postgresql://... and --remote GIT_URL the first time on a host")
        check_folder("--root", args.root)
        join_search(args.name, root=args.root, storage=args.storage, remote=args.remote, cache_dir=args.cache_dir).close()
    # --storage again: its password, which the folder does not keep (the URL must name the same study).
    search = Search.open(args.name, root=args.root, worker=True, storage=args.storage)
    try:
        cfg = search.config
        if not cfg.shared:
            raise SearchError(f"search {cfg.name!r} in {search.folder} runs on one host: run it with `evo run {cfg.name}`")
        check_fixed(args, search)
        apply_changeable(args, search)
        check_runnable(search)
        hosts = SharedHosts(search, patience=args.patience)
    except Exception:
        search.close()
        raise
    return run_loop(search, args, options, strategy, proposer, slots, hosts)
