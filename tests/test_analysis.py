"""Analysis: statistics on hand-built searches, figures and the report from a real tiny search,
results.tsv export/import, and strategy comparisons (run and from existing searches)."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import re
import shutil
import statistics

import networkx
import pytest

from analysis.compare import Run, band, compare_runs, render_table
from analysis.noise import noise_floor
from analysis.progress import failure_rate, keep_rate, progress
from population.results_tsv import parse_results_tsv
from analysis.tree import lineage_graph, plot_lineage, tree_view
from analysis.walk import best_lineage
from analysis.yields import yield_by
from conftest import PROJECT_FILES, ROOT, run_evo
from population.lineage import Lineage
from population.store import TrialRecord

T0 = dt.datetime(2026, 1, 1, 8, 0, 0)


def rec(number: int, operator: str, parents: list[int], value: float | None, *, status: str | None = None,
        tree: str | None = None, proposer: str = "offline", wall: float = 10.0, finished: float | None = None,
        **attrs) -> TrialRecord:
    """A finished trial as the store would return it; `finished` is minutes after T0 (default: its number)."""
    status = status or ("ok" if value is not None else "crash")
    state = "COMPLETE" if value is not None else "FAIL"
    end = T0 + dt.timedelta(minutes=number if finished is None else finished)
    return TrialRecord(number=number, state=state, value=value,
                       attrs={"operator": operator, "parents": parents, "status": status, "proposer": proposer,
                              "tree": tree or f"tree{number}", "commit": f"c{number}", "description": f"change {number}",
                              "wall_seconds": wall, **attrs},
                       started=end - dt.timedelta(seconds=wall), finished=end)


@pytest.fixture
def small() -> list[TrialRecord]:
    """Seven trials with a failure, a crossover and a re-evaluation that lowers its genome's standing.

    genome scores (mean over evaluations): #0 2.0, #1 1.9, #2 1.95, #4 (1.85 + 1.95) / 2 = 1.9, #6 1.88
    """
    return [
        rec(0, "seed", [], 2.0, proposer="seed"),
        rec(1, "mutate", [0], 1.9),
        rec(2, "mutate", [1], 1.95),
        rec(3, "mutate", [1], None),
        rec(4, "crossover", [1, 2], 1.85, proposer="llm"),
        rec(5, "reeval", [4], 1.95, tree="tree4", proposer="reeval"),
        rec(6, "mutate", [4], 1.88, proposer="llm"),
    ]


# -- statistics on hand-built searches --------------------------------------------------------------

def test_progress_replays_the_best_genome_mean_after_each_trial(small):
    p = progress(small)
    assert [pt.trial.number for pt in p.points] == [0, 1, 2, 3, 4, 5, 6]
    # The re-evaluation of #4 pulls its mean back to 1.9: the best so far rises again.
    assert [round(pt.best, 6) for pt in p.points] == [2.0, 1.9, 1.9, 1.9, 1.85, 1.9, 1.88]
    assert [pt.trial.number for pt in p.improvements] == [0, 1, 4, 6]
    assert [pt.trial.number for pt in p.failures] == [3]
    assert p.final_best == pytest.approx(1.88)
    assert p.hours == pytest.approx(70 / 3600)


def test_progress_follows_the_order_results_arrived_not_trial_numbers():
    trials = [rec(0, "seed", [], 2.0), rec(1, "mutate", [0], 1.8, finished=10), rec(2, "mutate", [0], 1.9, finished=5)]
    p = progress(trials)
    assert [pt.trial.number for pt in p.points] == [0, 2, 1]
    assert [pt.trial.number for pt in p.improvements] == [0, 2, 1]


def test_keep_rate_and_failure_rate_count_children_only(small):
    # children: #1 #2 #3 #4 #6; kept #1 #4 #6; failed #3
    assert keep_rate(small) == pytest.approx(3 / 5)
    assert failure_rate(small) == pytest.approx(1 / 5)
    assert keep_rate(small[:1]) is None


def test_trials_to_reach_counts_finished_trials_until_the_target(small):
    p = progress(small)
    assert p.trials_to_reach(1.9) == 2
    assert p.trials_to_reach(1.86) == 5      # #4's 1.85, the fifth result, before its re-evaluation
    assert p.trials_to_reach(1.80) is None
    assert p.hours_to_reach(1.9) == pytest.approx(20 / 3600)


def test_yield_by_operator_judges_children_against_their_better_parent(small):
    rows = {r.group: r for r in yield_by(small, key="operator")}
    assert set(rows) == {"mutate", "crossover"}
    m = rows["mutate"]    # #1: 2.0-1.9 = +0.1, #2: 1.9-1.95 = -0.05, #3 failed, #6: 1.9-1.88 = +0.02
    assert (m.children, m.evaluated, m.improved, m.failed) == (4, 3, 2, 1)
    assert m.mean_gain == pytest.approx((0.1 - 0.05 + 0.02) / 3)
    assert m.best_gain == pytest.approx(0.1)
    assert m.rate == pytest.approx(0.5)
    c = rows["crossover"]  # #4 scores 1.9 (mean), its better parent #1 also 1.9: no improvement
    assert (c.children, c.evaluated, c.improved) == (1, 1, 0)
    assert c.mean_gain == pytest.approx(0.0)


def test_yield_by_proposer(small):
    rows = {r.group: r for r in yield_by(small, key="proposer")}
    assert (rows["offline"].children, rows["offline"].improved, rows["offline"].failed) == (3, 1, 1)
    assert rows["offline"].mean_gain == pytest.approx((0.1 - 0.05) / 2)
    assert (rows["llm"].children, rows["llm"].improved) == (2, 1)
    assert rows["llm"].mean_gain == pytest.approx(0.01)


def test_best_lineage_walks_first_parents_from_seed_to_best(small):
    steps = best_lineage(Lineage(small), diff=lambda a, b: f"{a}..{b}")
    assert [s.trial for s in steps] == [0, 1, 4, 6]
    assert [round(s.score, 6) for s in steps] == [2.0, 1.9, 1.9, 1.88]
    assert steps[0].delta is None and steps[0].diff is None
    assert [round(s.delta, 6) for s in steps[1:]] == [-0.1, 0.0, -0.02]
    assert [s.diff for s in steps[1:]] == ["c0..c1", "c1..c4", "c4..c6"]
    assert steps[2].operator == "crossover" and steps[2].parents == (1, 2) and steps[2].evaluations == 2


def test_best_lineage_survives_commits_git_does_not_have(small):
    def missing(a, b):
        raise RuntimeError("bad object")
    steps = best_lineage(Lineage(small), diff=missing)
    assert len(steps) == 4 and all(s.diff is None for s in steps)


def test_noise_floor_pools_the_spread_of_reevaluated_genomes(small):
    assert noise_floor(Lineage(small[:5])) is None
    more = small + [rec(7, "reeval", [6], 1.98, tree="tree6"), rec(8, "reeval", [6], 2.08, tree="tree6")]
    floor = noise_floor(Lineage(more))
    # genome #4: (1.85, 1.95), sd 0.0707 (1 dof); genome #6: (1.88, 1.98, 2.08), sd 0.1 (2 dof)
    expected = math.sqrt((1 * statistics.variance([1.85, 1.95]) + 2 * statistics.variance([1.88, 1.98, 2.08])) / 3)
    assert floor.sd == pytest.approx(expected)
    assert len(floor.genomes) == 2 and floor.evaluations == 5
    assert floor.max_range == pytest.approx(0.2)


def _line(values: list[float | None], *, strategy: str) -> list[TrialRecord]:
    """A one-line search: each trial mutates the best so far (None is a crash)."""
    trials, best, best_n = [rec(0, "seed", [], values[0], strategy=strategy)], values[0], 0
    for i, v in enumerate(values[1:], start=1):
        trials.append(rec(i, "mutate", [best_n], v, strategy=strategy))
        if v is not None and v < best:
            best, best_n = v, i
    return trials


def test_comparison_table_against_greedys_mean_final_best():
    runs = [Run("greedy", "g0", _line([2.0, 1.9, 1.95, 1.9], strategy="greedy")),     # final 1.9
            Run("greedy", "g1", _line([2.0, 2.1, 1.8, None], strategy="greedy")),     # final 1.8
            Run("evolve", "e0", _line([2.0, 1.84, 1.7, 1.75], strategy="evolve")),    # final 1.7, 1.84 <= 1.85 at 2
            Run("evolve", "e1", _line([2.0, 1.99, 1.98, 1.97], strategy="evolve"))]   # never reaches 1.85
    table = compare_runs(runs)
    assert table.reference == "greedy" and table.target == pytest.approx(1.85)
    greedy, evolve = table.rows
    assert greedy.mean == pytest.approx(1.85) and greedy.sd == pytest.approx(statistics.stdev([1.9, 1.8]))
    assert greedy.to_target == (None, 3)
    assert greedy.keep_rate == pytest.approx(2 / 6)      # g0: #1; g1: #2 of six children
    assert greedy.failure_rate == pytest.approx(1 / 6)
    assert evolve.finals == (1.7, 1.97) and evolve.to_target == (2, None)
    assert evolve.keep_rate == pytest.approx(5 / 6)
    text = render_table(table)
    assert "1.8500 ± 0.0707" in text and "3.0 (1/2)" in text and "2.0 (1/2)" in text


def test_band_covers_only_the_range_where_every_seed_has_a_result():
    runs = [Run("a", "a0", _line([2.0, 1.9, 1.8], strategy="greedy")), Run("a", "a1", _line([2.0, 1.7], strategy="greedy"))]
    x, mean, low, high = band(runs, hours=False)
    assert x == [1.0, 2.0]                   # a1 stopped after two trials: no mean over one seed past that
    assert mean == pytest.approx([2.0, 1.8]) and low == pytest.approx([2.0, 1.7]) and high == pytest.approx([2.0, 1.9])
    x, mean, _, _ = band(runs, hours=True)   # 10 s per trial: from the first result to a1's last, in hours
    assert x == pytest.approx([10 / 3600, 20 / 3600]) and mean == pytest.approx([2.0, 1.8])


# -- the lineage at 500 trials -------------------------------------------------------------------

def synthetic_search(n: int, *, seed: int = 0) -> list[TrialRecord]:
    """An evolve-like search: tournaments among the 8 best, 20% crossovers, 8% crashes, 3% duplicates."""
    rng = random.Random(seed)
    trials, scores = [rec(0, "seed", [], 1.0, proposer="seed")], {0: 1.0}
    for i in range(1, n):
        elite = sorted(scores, key=scores.get)[:8]
        first = min(rng.sample(elite, min(3, len(elite))), key=scores.get)
        parents = [first] + ([rng.choice([e for e in elite if e != first])] if len(elite) > 1 and rng.random() < 0.2 else [])
        operator = "crossover" if len(parents) == 2 else "mutate"
        r = rng.random()
        if r < 0.08:
            trials.append(rec(i, operator, parents, None))
        elif r < 0.11:
            trials.append(rec(i, operator, parents, scores[first], status="duplicate", tree=f"tree{first}", wall=0.0))
        else:
            value = min(scores[p] for p in parents) + rng.gauss(0.012, 0.01)
            trials.append(rec(i, operator, parents, value))
            scores[i] = value
    return trials


def test_lineage_of_500_trials_is_thinned_to_a_readable_figure(tmp_path):
    trials = synthetic_search(500)
    full = lineage_graph(trials)
    assert full.number_of_nodes() == 500
    crossover = next(t.number for t in trials if t.operator == "crossover")
    assert full.in_degree(crossover) == 2
    view = tree_view(trials, max_nodes=70, engine="tree")
    g = view.graph
    best = Lineage(trials).best.trial
    assert view.path[0] == 0 and view.path[-1] == best and all(n in g for n in view.path)
    shown = [n for n in g if isinstance(n, int)]
    # The best and its whole ancestry always stay; past that, at most one "+n" node per kept trial.
    must = {0, best} | networkx.ancestors(full, best)
    assert must <= set(shown)
    assert g.number_of_nodes() <= max(70, 2 * len(must)) < 150
    folded = sum(d["count"] for n, d in g.nodes(data=True) if d.get("summary"))
    assert folded == view.folded and len(shown) + folded == 500    # every trial is shown or counted
    for n in shown:   # kept trials keep all their ancestors
        assert all(p in g for p in full.predecessors(n))
    fig = plot_lineage(trials, tmp_path / "lineage.png", view=view)
    width, height = fig.get_size_inches()
    assert width <= 16 and height <= 16
    assert (tmp_path / "lineage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("case", ["infeasible", "min_gain"])
def test_the_lineage_figure_marks_the_best_evo_status_names(case):
    # #1 has the better raw mean but is not the best: over the memory limit, or better than the
    # seed only by less than the min gain its result was judged with.
    judged = {"min_gain": 0.6} if case == "min_gain" else {}
    first = rec(1, "mutate", [0], 1.5, **judged)
    if case == "infeasible":
        first.constraints["vram_gb"] = 1.0
    trials = [rec(0, "seed", [], 2.0, proposer="seed"), first, rec(2, "mutate", [1], 1.8, **judged),
              rec(3, "mutate", [0], 1.7, **judged)]
    best = Lineage(trials).best.trial    # what `evo status` (analysis.summary) names
    assert best == (3 if case == "infeasible" else 0)
    view = tree_view(trials, engine="tree")
    assert view.path[-1] == best and view.path == Lineage(trials).path_to(best)
    assert lineage_graph(trials).graph["best"] == best
    thinned = tree_view(trials, max_nodes=2, engine="tree")   # thinning keeps that best, not the raw top
    assert best in thinned.graph and thinned.path[-1] == best


@pytest.mark.parametrize("case", ["infeasible", "min_gain"])
def test_the_report_and_evo_status_name_the_same_best(case, tmp_path):
    # The same four trials as above, in a real search's store: `evo status` (analysis.summary), the
    # report's headline, its lineage figure and its best-lineage walk all end at one genome.
    from analysis.report import search_facts, write_report
    from analysis.summary import summarize
    from population.search import Search, SearchConfig
    from population.store import TrialStatus

    judged = {"min_gain": 0.6} if case == "min_gain" else {}
    rows = [(0, "seed", [], 2.0, {}), (1, "mutate", [0], 1.5, {"vram_gb": 1.0} if case == "infeasible" else {}),
            (2, "mutate", [1], 1.8, {}), (3, "mutate", [0], 1.7, {})]
    search = Search.create(tmp_path / "runs", SearchConfig(name="b", profile="tiny", budget=1.0, mutable=["train.py"],
                                                           data="none"), seed_files=None)
    try:
        for number, operator, parents, value, constraints in rows:
            attrs = {"operator": operator, "parents": parents, "tree": f"tree{number}", "commit": f"c{number}",
                     "description": f"change {number}", **({} if operator == "seed" else judged)}
            assert search.store.start(attrs) == number
            search.store.finish(number, status=TrialStatus.OK, value=value, metrics={"val_bpb": value},
                                constraints=constraints)
        best = summarize(search)["best"]
        assert best == (3 if case == "infeasible" else 0)
        assert search_facts(search).best == best
        files = write_report(search)
        assert f"(trial #{best}:" in files.html.read_text()
        trials = search.trials()
        assert tree_view(trials, engine="tree").path[-1] == best
        assert best_lineage(search.lineage())[-1].trial == best
    finally:
        search.close()


def test_small_lineage_is_not_thinned(small):
    view = tree_view(small, max_nodes=70, engine="tree")
    assert view.folded == 0
    assert sorted(view.graph.nodes) == [0, 1, 2, 3, 4, 6]   # the re-evaluation folds into its genome
    assert view.graph.nodes[4]["evaluations"] == 2 and view.path == [0, 1, 4, 6]


def test_dot_layout_is_used_when_graphviz_is_installed(small, tmp_path, monkeypatch):
    # A stand-in `dot` that answers in graphviz's plain format: one node per line, x = its index.
    fake = tmp_path / "dot"
    fake.write_text("#!/usr/bin/env python3\nimport re, sys\nnames = re.findall(r'^(n\\d+);$', sys.stdin.read(), re.M)\n"
                    "print('graph 1 10 10')\nfor i, n in enumerate(names):\n    print(f'node {n} {i} 0 0.1 0.1 x solid point black lightgrey')\nprint('stop')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    view = tree_view(small, engine="auto")
    assert view.engine == "dot"
    assert sorted(x for x, _ in view.positions.values()) == [0, 1, 2, 3, 4, 5]


# -- results.tsv -------------------------------------------------------------------------------

def test_parse_results_tsv_reads_autoresearch_rows_and_rejects_bad_ones():
    text = ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
            "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
            "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n"
            "c3d4e5f\t0.993200\t44.2\tdiscard\tlr 0.04 -> 0.05\twith a tab\n")
    rows = parse_results_tsv(text)
    assert [r["status"] for r in rows] == ["keep", "crash", "discard"]
    assert rows[1]["val_bpb"] is None and rows[0]["memory_gb"] == 44.0
    assert rows[2]["description"] == "lr 0.04 -> 0.05\twith a tab"
    with pytest.raises(ValueError, match="line 2: status"):
        parse_results_tsv("a\t1.0\t1.0\tkeep\tx\nb\t1.0\t1.0\tmaybe\ty\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_results_tsv("abc\tnot-a-number\t1\tkeep\tx\n")


def test_import_makes_a_greedy_line_with_reevaluations(tmp_path):
    from population.importer import import_results_tsv
    tsv = tmp_path / "results.tsv"
    tsv.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                   "aaaaaaa\t1.000000\t1.0\tkeep\tbaseline\n"
                   "bbbbbbb\t0.990000\t1.0\tkeep\tbetter\n"
                   "ccccccc\t0.995000\t1.0\tdiscard\tworse\n"
                   "ddddddd\t0.000000\t0.0\tcrash\tboom\n"
                   "bbbbbbb\t0.992000\t1.0\tdiscard\tsame commit again\n"
                   "eeeeeee\t0.980000\t1.0\tkeep\tbest\n")
    search = import_results_tsv(tsv, "imp", root=tmp_path / "runs", budget=300)
    try:
        trials = {t.number: t for t in search.trials()}
        assert [trials[n].operator for n in range(6)] == ["seed", "mutate", "mutate", "mutate", "reeval", "mutate"]
        assert [trials[n].parents for n in range(6)] == [[], [0], [1], [1], [1], [1]]
        assert trials[3].status == "crash" and trials[3].value is None
        lineage = search.lineage()
        assert lineage.individual(1).values == [0.99, 0.992]
        assert lineage.best.trial == 5
        assert progress(search.trials()).hours == pytest.approx(6 * 300 / 3600)
    finally:
        search.close()


def test_report_of_a_search_without_any_result(tmp_path):
    from analysis.report import write_report
    from population.importer import import_results_tsv
    tsv = tmp_path / "results.tsv"
    tsv.write_text("aaaaaaa\t0.000000\t0.0\tcrash\tthe baseline did not run\n")
    search = import_results_tsv(tsv, "nothing", root=tmp_path / "runs")
    try:
        files = write_report(search)
    finally:
        search.close()
    html = files.html.read_text()
    assert "No successful trial yet" in html and 'id="trial-0"' in html


# -- a real tiny search ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(tmp_path_factory, cache_dir):
    """One real search shared by the tests below: 6 tiny CPU trials, each new best re-evaluated once."""
    folder = tmp_path_factory.mktemp("analysis-project")
    for name in PROJECT_FILES:
        shutil.copyfile(ROOT / name, folder / name)
    env = {"EVO_CACHE": str(cache_dir), "EVO_PROFILE": "tiny"}
    proc = run_evo("run", "real", "--profile", "tiny", "--budget", "2", "--trials", "6", "--reeval", "1",
                   "--quiet", cwd=folder, env=env)
    assert proc.returncode == 0, proc.stderr
    return folder, env


def _open(folder, name):
    from population.search import Search
    return Search.open(name, root=folder / "runs")


def test_report_writes_figures_and_a_self_contained_page(real):
    folder, env = real
    proc = run_evo("report", "real", cwd=folder, env=env)
    assert proc.returncode == 0, proc.stderr
    report = folder / "runs" / "real" / "report"
    for png in ("progress.png", "lineage.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (report / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2
    # Nothing fetched from anywhere: no http(s) in src/href, no external stylesheet or script.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<link\b|<script[^>]+src", html, re.I)
    search = _open(folder, "real")
    try:
        trials = search.trials()
    finally:
        search.close()
    for t in trials:
        assert f'id="trial-{t.number}"' in html
    assert "noise floor: val_bpb sd" in html          # --reeval 1 re-measured the seed at least
    assert '<table class="sortable">' in html and "<svg" in html


def test_progress_agrees_with_the_keep_flags_the_loop_recorded(real):
    folder, _ = real
    search = _open(folder, "real")
    try:
        trials = search.trials()
    finally:
        search.close()
    points = progress(trials).points
    assert len(points) == 6
    assert [p.improved for p in points] == [bool(p.trial.attrs.get("kept")) for p in points]


def test_walk_of_a_real_search_carries_git_diffs(real):
    folder, _ = real
    search = _open(folder, "real")
    try:
        lineage = search.lineage()
        child = next(t.number for t in lineage.trials if t.operator == "mutate" and t.finished_ok)
        steps = best_lineage(lineage, diff=search.repo.diff, target=child)
    finally:
        search.close()
    assert steps[0].operator == "seed" and steps[-1].trial == child
    for step in steps[1:]:
        assert step.diff.startswith("diff --git a/train.py b/train.py")
        assert any(line.startswith("+") and not line.startswith("+++") for line in step.diff.splitlines())


def test_results_tsv_round_trips_through_export_and_import(real):
    folder, env = real
    exported = folder / "exported.tsv"
    assert run_evo("export", "real", "--tsv", "--out", str(exported), cwd=folder, env=env).returncode == 0
    proc = run_evo("import", str(exported), "imported", cwd=folder, env=env)
    assert proc.returncode == 0, proc.stderr
    again = run_evo("export", "imported", "--tsv", cwd=folder, env=env)
    assert again.returncode == 0
    assert again.stdout == exported.read_text()
    assert run_evo("status", "imported", cwd=folder, env=env).returncode == 0
    refused = run_evo("run", "imported", "--trials", "9", cwd=folder, env=env)
    assert refused.returncode == 2 and "imported" in refused.stderr
    assert run_evo("report", "imported", cwd=folder, env=env).returncode == 0
    compared = run_evo("compare", "both", "--searches", "real", "autoresearch=imported", cwd=folder, env=env)
    assert compared.returncode == 0, compared.stderr
    assert re.search(r"^evolve\s+1\s+6\s", compared.stdout, re.M)
    assert re.search(r"^autoresearch\s+1\s+6\s", compared.stdout, re.M)
    assert (folder / "runs" / "both" / "compare.png").exists()


def test_compare_runs_every_strategy_and_resumes_after_a_stop(real):
    from evo.compare import CompareConfig, Comparison
    from evo.loop import parse_devices
    from evo.proposers import OfflineProposer

    folder, env = real
    root = folder / "runs"
    comparison = Comparison.create(CompareConfig("cmp", strategies=["greedy", "random"], seeds=1, trials=1,
                                                 profile="tiny", budget=2.0, base_seed=5), root=root)

    def stop_at_second(event, name, info):   # as Ctrl-C would, once the first search is done
        if event == "start" and name == "cmp-random-s0":
            comparison.stop()
    reason = comparison.run(make_proposer=OfflineProposer, slots=parse_devices("cpu"),
                            creation={"project": folder}, on_member=stop_at_second)
    assert str(reason) == "interrupted"
    greedy = _open(folder, "cmp-greedy-s0")
    try:
        first = [(t.number, t.value) for t in greedy.trials()]
        assert len(first) == 1 and greedy.config.seed == 5
        assert {t.attrs.get("strategy") for t in greedy.trials()} == {"greedy"}
    finally:
        greedy.close()

    proc = run_evo("compare", "cmp", "--trials", "2", "--project", str(folder), "--devices", "cpu", cwd=folder, env=env)
    assert proc.returncode == 0, proc.stderr
    for name, strategy in (("cmp-greedy-s0", "greedy"), ("cmp-random-s0", "random")):
        search = _open(folder, name)
        try:
            trials = search.trials()
            assert sum(1 for t in trials if t.counts) == 2
            assert {t.attrs.get("strategy") for t in trials} == {strategy}
            if strategy == "greedy":   # resumed, not redone
                assert [(t.number, t.value) for t in trials[:1]] == first
        finally:
            search.close()
    assert "final best (mean ± sd)" in proc.stdout
    assert re.search(r"^greedy\s+1\s+2\s", proc.stdout, re.M) and re.search(r"^random\s+1\s+2\s", proc.stdout, re.M)
    assert (root / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_evo("compare", "cmp", "--profile", "cpu", cwd=folder, env=env).returncode == 2   # fixed once created
