"""The shape of the code: layers that import one way, no import circles, short functions, a library
that builds what the CLI builds, and a search made by an earlier version that still opens and resumes."""

from __future__ import annotations

import dataclasses
import ast
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, run_evo

PACKAGES = ("population", "evo", "analysis")
LONGEST_FUNCTION = 80  # lines; longer ones must say why in their docstring ("Long because ...")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path], exported: dict[tuple[str, str], str] | None = None) -> set[str]:
    """The project modules `path` imports (at any depth of its code: a late import is an import too).

    `from package import name` depends on the module that defines `name`: the submodule
    `package.name`, or the module the package's __init__ re-exports it from (`exported`), so a
    circle through a package's re-exports is a circle."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                names.add(full if full in modules else (exported or {}).get((node.module, a.name), node.module))
    return {n for n in names if n in modules}


def _exports(modules: dict[str, Path]) -> dict[tuple[str, str], str]:
    """(package, name) -> the module defining a name its __init__ re-exports, followed through
    packages that re-export another package's names."""
    direct = {}
    for package, path in modules.items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                for a in node.names:
                    direct[(package, a.asname or a.name)] = (node.module, a.name)
    resolved = {}
    for key, (module, name) in direct.items():
        seen = set()
        while (module, name) in direct and (module, name) not in seen:  # re-exported again from a package
            seen.add((module, name))
            module, name = direct[(module, name)]
        resolved[key] = f"{module}.{name}" if f"{module}.{name}" in modules else module
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    exported = _exports(modules)
    return {name: _imports(path, modules, exported) - {name} for name, path in modules.items()}


def _is_cli(module: str) -> bool:
    return module == "evo.cli" or module.startswith("evo.cli.")


def test_data_flows_one_way_between_the_layers():
    wrong = []
    for module, deps in _graph().items():
        layer = module.split(".")[0]
        for dep in deps:
            other = dep.split(".")[0]
            if layer == "population" and other != "population":
                wrong.append(f"{module} -> {dep} (the data layer imports no layer above it)")
            elif layer == "analysis" and other == "evo":
                wrong.append(f"{module} -> {dep} (the views read the data layer, never the engine)")
            elif layer == "evo" and other == "analysis" and not _is_cli(module):
                wrong.append(f"{module} -> {dep} (only the CLI uses both the engine and the views)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_imports_itself_through_a_circle():
    # Every edge counts, a package's edges to the submodules its __init__ re-exports included: an
    # import of a re-exported name runs that __init__ (evo.devices -> evo.targets -> its _base ->
    # evo.devices was a circle once).
    edges = _graph()
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for dep in edges.get(node, ()):
            if state.get(dep) == "open":
                circles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_no_function_is_longer_than_80_lines_without_saying_why():
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION and "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, "\n".join(long)


LONGEST_CLASS = 300  # lines: a class that grows past it is doing more than one job
# Classes known to be longer, and why they may be for now.
LONG_CLASSES: dict[str, str] = {}   # a class allowed over the limit, and why (none today)


def test_no_class_is_longer_than_300_lines():
    # SearchLoop was once 1,000 lines: every capability landed inside it. The engine's parts are
    # separate classes and modules (evo.engine), and the loop only runs them in parallel.
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            name = f"{module}.{getattr(node, 'name', '')}"
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > LONGEST_CLASS:
                if name not in LONG_CLASSES:
                    long.append(f"{name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_the_library_builds_and_runs_what_the_cli_builds_without_argparse(instant_project):
    import evo
    from evo.pruners import percentile_pruner

    proposer = evo.from_spec("offline")
    mixed_spec = evo.proposers.parse_spec("offline:0.8,anthropic:0.2")
    assert mixed_spec == [("offline", 0.8), ("anthropic", 0.2)]
    strategy = evo.make_strategy("evolve", elite=4, tournament=2, crossover_rate=0.5, islands=2, migration_rate=0.2,
                                 cross_from="best")
    assert strategy.describe() == ("evolve(elite=4, tournament=2, crossover_rate=0.5, islands=2, "
                                   "migration_rate=0.2, cross_from=best)")
    options = evo.RunOptions(limits=evo.LimitSpec(trials=6), noise=evo.NoiseSpec(reeval=1, noise_runs=1, min_gain="auto"),
                             prune=True, max_vram_gb=100.0)
    # The pruner a notebook gets from prune=True is the rule `evo run --prune` uses.
    assert type(options.pruner_in_use()) is type(percentile_pruner())
    assert vars(options.pruner_in_use()) == vars(percentile_pruner())
    search = evo.create_search("lib", root=instant_project / "runs", project=instant_project, profile="tiny", budget=1)
    reason = evo.SearchLoop(search, strategy, proposer, evo.parse_devices("cpu"), options).run()
    assert reason.kind is evo.StopKind.TRIALS and str(reason) == "reached 6 trials"
    assert type(search.store.pruner).__name__ == "PercentilePruner"  # the loop handed its rule to the store
    trials = search.trials()
    assert sum(1 for t in trials if t.counts) == 6 and {t.attrs["strategy"] for t in trials} == {"evolve"}
    assert any(t.operator == "reeval" for t in trials) and all("min_gain" in t.attrs for t in trials)
    search.close()
    with pytest.raises(evo.SpecError, match="unknown proposer"):
        evo.from_spec("telepathy")
    with pytest.raises(ValueError, match="takes no options"):
        evo.make_strategy("greedy", elite=3)
    with pytest.raises(TypeError):
        evo.RunOptions(6)  # options are keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.limits.trials = 7  # and frozen: the engine that runs with them owns them


def _unpack(archive: str, runs: Path) -> None:
    """Unpack a search folder kept in tests/data into `runs`."""
    with tarfile.open(Path(__file__).parent / "data" / archive) as archive_file:
        archive_file.extractall(runs, filter="data")


def _resumed_and_reported(project: Path, name: str, trials: int) -> list:
    """Resume search `name` to `trials` trials, check every trial's branch, write its report; its trials."""
    resumed = run_evo("run", name, "--trials", str(trials), cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"stopped: reached {trials} trials" in resumed.stdout
    from population import Search

    with Search.open(name, root=project / "runs") as search:
        found = search.trials()
        assert [t.number for t in found] == list(range(trials))
        assert all(search.repo.resolve(f"refs/heads/{search.branch(t.number)}") == t.commit for t in found)
    report = run_evo("report", name, cwd=project)
    assert report.returncode == 0 and (project / "runs" / name / "report" / "report.html").exists()
    return found


@pytest.fixture
def old_search(project) -> Path:
    """A search folder made by evoresearch 0.1 (tests/data/old-format-search.tar.gz), unpacked
    somewhere else than where it was made: its search.json names /tmp/fx/runs/old-format/study.db."""
    _unpack("old-format-search.tar.gz", project / "runs")
    assert "/tmp/fx/runs/old-format/study.db" in (project / "runs" / "old-format" / "search.json").read_text()
    shutil.rmtree("/tmp/fx/runs/old-format", ignore_errors=True)  # the original must not be what opens
    return project


@pytest.mark.slow
def test_a_search_made_by_the_previous_version_opens_and_resumes(old_search):
    status = run_evo("status", "old-format", cwd=old_search)
    assert status.returncode == 0, status.stderr
    assert "5 finished" in status.stdout and "best: val_bpb 2.921956 at trial #1" in status.stdout
    shown = run_evo("show", "old-format", "1", cwd=old_search)
    assert shown.returncode == 0 and "WEIGHT_DECAY 0.2 -> 0.1" in shown.stdout and "diff against parent" in shown.stdout
    trials = _resumed_and_reported(old_search, "old-format", 7)
    assert all(t.status == "ok" for t in trials[5:]), [(t.status, t.error) for t in trials]


@pytest.mark.slow
def test_a_search_made_before_the_engine_and_the_notebook_opens_resumes_and_is_read_into_the_notebook(project):
    # tests/data/pre-engine-search.tar.gz: 4 tiny trials made by the version before the ask/tell engine,
    # several objectives and the lab notebook (63429b1), as `evo run pre-engine --profile tiny --budget 2
    # --trials 4` left it (the last trial's hand-over left out: it is what any trial leaves behind).
    _unpack("pre-engine-search.tar.gz", project / "runs")
    status = run_evo("status", "pre-engine", cwd=project)
    assert status.returncode == 0, status.stderr
    assert "4 finished (4 ok" in status.stdout and "best: val_bpb 2.870088 at trial #3" in status.stdout
    ideas = run_evo("ideas", "--search", "pre-engine", "--json", cwd=project)
    assert ideas.returncode == 0, ideas.stderr
    assert "HEAD_DIM 32 -> 16" in ideas.stdout and "WEIGHT_DECAY 0.2 -> 0.1" in ideas.stdout
    _resumed_and_reported(project, "pre-engine", 6)
    from population import Search

    with Search.open("pre-engine", root=project / "runs") as search:
        assert search.config.objectives in ((), [], None) and not search.lineage().multi


# What only evoresearch's own harness knows (prepare.py and its train.py genome): its file names, the
# keys of its summary block, its knobs, its sequence length, torch's compile cache. The engine, the views
# and the data layer reach them only through the target (`evo/targets/`: proposer settings, the compile
# cache, which leftover processes are a trial's), and the runner only through its harness module.
HARNESS_NAMES = ("train.py", "SUMMARY_KEYS", "MEASURED", "mfu_percent", "total_tokens_M", "num_params_M",
                 "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "seq_len", "inductor", "INDUCTOR")
HARNESS_HOMES = ("evo/targets/", "evo/runner/_harness.py")
HARNESS_NAMES_KEPT = {  # module: why it may name the harness
    "population/search_config.py": "seq_len is a field of every search.json (the on-disk format stays)",
    "population/importer.py": "imports autoresearch's results.tsv, whose genome is its train.py",
}


def _code_words(path: Path) -> list[tuple[int, str]]:
    """(line, word) for every identifier and every string without whitespace in a module's code: a
    name, a key, a path or an environment variable. Strings with whitespace (docstrings, help, messages)
    are prose for people, where naming the default target is fine."""
    words = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, (ast.arg, ast.keyword)) and node.arg:
            words.append((node.lineno, node.arg))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.alias):
            words.append((node.lineno, node.asname or node.name))
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            text = node.value.decode(errors="replace") if isinstance(node.value, bytes) else node.value
            if text and not any(c.isspace() for c in text):
                words.append((node.lineno, text))
    return words


def test_only_the_harness_target_names_the_harness():
    found = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(HARNESS_HOMES) or rel in HARNESS_NAMES_KEPT:
            continue
        for line, word in _code_words(path):
            found += [f"{rel}:{line}: {word}" for name in HARNESS_NAMES if name in word]
    assert not found, "harness names outside the harness target:\n" + "\n".join(sorted(set(found)))


def test_hosts_see_the_loop_only_through_their_protocol():
    # SharedHosts once set the loop's options through an untyped back-reference; what hosts may use of
    # the engine they serve is `evo.hosts.HostedLoop`, and the engine has all of it.
    hosts = ast.parse((ROOT / "evo" / "hosts.py").read_text())
    protocol = next((n for n in hosts.body if isinstance(n, ast.ClassDef) and n.name == "HostedLoop"), None)
    assert protocol is not None, "evo/hosts.py says nowhere what it uses of the loop (class HostedLoop)"
    allowed = {n.name for n in protocol.body if isinstance(n, ast.FunctionDef)}
    allowed |= {n.target.id for n in protocol.body if isinstance(n, ast.AnnAssign)}
    used = {n.attr for n in ast.walk(hosts)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "loop"}
    assert used <= allowed, f"evo/hosts.py uses {sorted(used - allowed)} of the loop outside HostedLoop"
    loop = next(n for n in ast.parse((ROOT / "evo" / "engine" / "_engine.py").read_text()).body
                if isinstance(n, ast.ClassDef) and n.name == "Engine")
    has = {n.name for n in loop.body if isinstance(n, ast.FunctionDef)}
    has |= {t.attr for n in ast.walk(loop) if isinstance(n, ast.Assign) for target in n.targets
            for t in ast.walk(target) if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
            and t.value.id == "self"}
    assert allowed <= has, f"Engine lacks {sorted(allowed - has)} of HostedLoop"


# Modules with a status vocabulary of their own: the enum itself, and autoresearch's results.tsv
# (its status column says keep, discard or crash).
STATUS_HOMES = ("population/store.py", "population/results_tsv.py")


def _bare_statuses(tree: ast.AST, values: set[str]) -> list[tuple[int, str]]:
    """(line, code) where a trial status is written or compared as a bare string: compared with something
    called status, passed as status=, given to Evaluation/TrialResult, returned as (status, error), or
    assigned to a .status."""
    def bare(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in values
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(bare(e) for e in node.elts)

    def first(node):
        return node.elts[0] if isinstance(node, ast.Tuple) and node.elts else node

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and "status" in ast.unparse(node) and any(
                bare(e) for e in [node.left, *node.comparators]):
            found.append(node)
        elif isinstance(node, ast.keyword) and node.arg == "status" and bare(node.value):
            found.append(node.value)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("Evaluation", "TrialResult")
              and node.args and bare(node.args[0])):
            found.append(node)
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and bare(first(node.value)):
            found.append(node)
        elif isinstance(node, ast.Assign) and any("status" in ast.unparse(first(t)) for t in node.targets) \
                and bare(first(node.value)):
            found.append(node)
    return [(n.lineno, ast.unparse(n)[:80]) for n in found]


def test_trial_statuses_are_one_enum_everywhere():
    from population.store import TrialStatus

    values = {s.value for s in TrialStatus}
    found = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel not in STATUS_HOMES:
            found += [f"{rel}:{line}: {code}" for line, code in _bare_statuses(ast.parse(path.read_text()), values)]
    assert not found, "trial statuses as bare strings (use population.store.TrialStatus):\n" + "\n".join(found)


BUILTIN_ERRORS = ("Exception", "ValueError", "TypeError", "RuntimeError", "KeyError", "LookupError")
# Built-in errors that never leave the library: each is caught where it is raised, or a step above.
CAUGHT_INSIDE = {
    "evo/proposers/_hyperparams.py:ValueError", "evo/proposers/_hyperparams.py:TypeError",  # its own parsers
    "evo/proposers/_anthropic.py:TypeError",   # a reply that is no message: _call makes it a CallFailed
    "evo/runner/_sandbox.py:RuntimeError",     # BwrapExecutor is built after bwrap_works() said it runs
    "analysis/stats.py:ValueError",            # a permutation test of an empty group: a caller's bug
    # The peer runner is a script run in the trial's sandbox, importing nothing of evo: its data codec's
    # and its program process's errors are caught inside it (run_shinka_eval's defaults say why).
    "evo/targets/_peer_runner.py:TypeError", "evo/targets/_peer_runner.py:ValueError",
    "evo/targets/_peer_runner.py:RuntimeError",
}


def test_every_error_of_ours_is_an_evo_error_and_the_cli_shows_parameters_as_flags():
    import importlib
    import inspect

    from evo.cli._common import as_flags
    from evo.loop import NoiseSpec
    from population.errors import EvoError

    ours = []
    for name in [m for m in _modules() if not m.endswith("__main__")]:  # importing that one runs the CLI
        module = importlib.import_module(name)
        ours += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                 if issubclass(cls, BaseException) and cls.__module__ == name]
    assert len(ours) >= 14
    assert not [c.__qualname__ for c in ours if not issubclass(c, EvoError)], "errors outside EvoError"
    # A library error names the parameter; the command line shows its flag.
    with pytest.raises(ValueError) as error:
        NoiseSpec(min_gain="auto")
    assert "min_gain auto" in str(error.value) and "noise_runs" in str(error.value)
    assert as_flags(str(error.value)).startswith("--min-gain auto needs a measured noise floor: add --noise-runs K")
    assert isinstance(error.value, EvoError)
    # Nor does the library raise a bare built-in error a caller would have to catch apart from EvoError.
    bare = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) \
                    and getattr(node.exc.func, "id", None) in BUILTIN_ERRORS and f"{rel}:{node.exc.func.id}" not in CAUGHT_INSIDE:
                bare.append(f"{rel}:{node.lineno}: {node.exc.func.id}")
    assert not bare, "built-in errors raised by the library (raise an EvoError subclass, e.g. OptionError):\n" + "\n".join(bare)


def test_a_bug_that_raises_a_lookup_error_shows_its_traceback_and_an_error_of_ours_one_line(monkeypatch, capsys):
    """The command line reads an EvoError as the one line it is (a ConfigError: exit 2; any other: exit 1),
    and lets a bare KeyError through with its traceback: a bug is not a usage error."""
    import argparse

    import evo.cli
    from population.errors import ConfigError, StorageError

    def parser_raising(error):
        parser = argparse.ArgumentParser(prog="evo")
        parser.set_defaults(command="status", handler=lambda args: (_ for _ in ()).throw(error))
        return lambda argv: parser

    monkeypatch.setattr(evo.cli, "_parser_for", parser_raising(KeyError("metrics.val_bpb")))
    with pytest.raises(KeyError):
        evo.cli.main([])
    monkeypatch.setattr(evo.cli, "_parser_for", parser_raising(ConfigError("`trials` must be at least 1")))
    assert evo.cli.main([]) == 2
    monkeypatch.setattr(evo.cli, "_parser_for", parser_raising(StorageError("the remote cannot be reached")))
    assert evo.cli.main([]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["evo status: error: --trials must be at least 1", "evo status: error: the remote cannot be reached"]


# Calls whose text a user reads as the library's own words: a raise, a warning, a remark, a stop.
MESSAGE_CALLS = ("warn", "warning", "say", "StopReason", "on_event")
# Whole-command advice may quote a command with its flags: `evo run NAME --trials 10`, (evo compare --searches).
WHOLE_COMMAND = r"`evo [^`]*`|\((?:see )?evo [^)]*\)"
# Text recorded as a trial's error (a proposal no prompt could fit): `evo show` prints the record as it is,
# and a view cannot rewrite free text that holds genomes' descriptions, so it keeps the flags it always had.
RECORDED_AS_TRIAL_ERRORS = {"evo/proposers/_fit.py"}


def _message_texts(tree: ast.AST):
    """(line, text) of each string inside a raise or a message call; an f-string's values read as {}."""
    def texts(node):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
        else:
            for child in ast.iter_child_nodes(node):
                yield from texts(child)

    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            yield from texts(node.exc)
        elif isinstance(node, ast.Call) and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) \
                in MESSAGE_CALLS:
            yield from texts(node)


def _cli_flags() -> set[str]:
    """Every option string of every `evo` subcommand."""
    import argparse

    from evo.cli import build_parser

    flags, parsers = set(), [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
    return flags


def test_library_messages_name_parameters_not_the_command_lines_flags():
    """A library message names the parameter (`trials`, min_gain); evo.cli.as_flags shows it as the flag."""
    import re

    from evo.cli._common import PARAMETER_FLAGS, as_flags

    flags = _cli_flags() - {"--help", "--version"}
    found = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("evo/cli/") or rel in RECORDED_AS_TRIAL_ERRORS:
            continue
        for line, text in _message_texts(ast.parse(path.read_text())):
            quoted = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", re.sub(WHOLE_COMMAND, "", text))) & flags
            if quoted:
                found.append(f"{rel}:{line}: {sorted(quoted)} in {text[:80]!r}")
    assert not found, "library messages quoting evo's flags (name the parameter, in backquotes):\n" + "\n".join(found)
    # Each parameter is shown as one of evo's flags; ordinary words, a server's text and commands stay as written.
    assert set(PARAMETER_FLAGS.values()) <= flags
    assert as_flags("give `trials` or `storage` more trials; min_gain") == "give --trials or --storage more trials; --min-gain"
    assert as_flags("the server said: max_tokens: 20000 > 16384") == "the server said: max_tokens: 20000 > 16384"
    assert as_flags("`evo run s --trials 3`") == "`evo run s --trials 3`"
