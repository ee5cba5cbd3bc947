"""Several objectives: the specs, Pareto ranking and keeping, the study, the CLI, and the harness's trusted size.

Most tests build trial records and lineages directly (no processes); one runs a whole two-objective
search through the CLI on an instant command target, one scores a genome that hides weights in
buffers with the harness's real scorer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import ROOT, run_evo
from evo import LimitSpec, Proposal, Proposer, RunOptions, SearchLoop, create_search, parse_devices
from evo.cli._common import as_flags
from evo.strategies import make_strategy
from population import Search, SearchError
from population.lineage import Lineage
from population.objectives import (Constraint, Objective, ObjectiveError, ObjectiveSpec, check_trusted,
                                   crowding_distances, dominates, hypervolume, nondominated_ranks, nsga_order,
                                   parse_objectives)
from population.store import TrialRecord, TrialStore

MIN2 = ("minimize", "minimize")


def rec(n, values, parents=(), op="mutate", feasible=True, status="ok"):
    """A finished trial of a two-objective search (values: its vector; None: failed)."""
    done = values is not None and status == "ok"
    return TrialRecord(number=n, state="COMPLETE" if done else "FAIL", value=values[0] if done else None,
                       values=tuple(values) if done else None,
                       attrs={"operator": op, "parents": list(parents), "tree": f"t{n}", "commit": f"c{n}",
                              "status": status, "description": f"trial {n}"},
                       constraints={} if feasible else {"peak_memory_mb<=100": 5.0})


def lineage_of(trials, directions=MIN2):
    return Lineage(trials, direction=directions[0], directions=directions)


# -- specs ------------------------------------------------------------------------------------------


def test_objectives_and_constraints_parse_with_directions_and_bounds():
    assert Objective.parse("val_bpb") == Objective("val_bpb", "minimize")
    assert Objective.parse("params:min") == Objective("params", "minimize")
    assert Objective.parse("ops:max").spelled() == "ops:max"
    assert Objective.parse("ops:maximize") == Objective("ops", "maximize")
    for bad in ("params:smallest", "", "9lives", "a b"):
        with pytest.raises(ObjectiveError, match="NAME:min or NAME:max"):
            Objective.parse(bad)
    c = Constraint.parse("peak_memory_mb<=40000")
    assert (c.metric, c.op, c.bound, c.key) == ("peak_memory_mb", "<=", 40000.0, "peak_memory_mb<=40000")
    assert c.violation({"peak_memory_mb": 39000}) == -1000 and c.violation({"peak_memory_mb": 41000}) == 1000
    assert c.violation({}) > 0  # a bound nobody showed is met counts as violated
    assert Constraint.parse("ops >= 5").violation({"ops": 7}) == -2
    with pytest.raises(ObjectiveError, match="NAME<=NUMBER"):
        Constraint.parse("peak_memory_mb<40000")


def test_a_trials_metrics_become_its_vector_and_its_constraints():
    spec = ObjectiveSpec((Objective("loss"), Objective("size")), (Constraint("peak", "<=", 100),))
    assert spec.judge(0.5, {"loss": 0.5, "size": 8, "peak": 80}) == ([0.5, 8.0], {"peak<=100": -20}, "")
    values, violations, missing = spec.judge(0.5, {"loss": 0.5, "peak": 120})
    assert values is None and violations == {"peak<=100": 20} and "no finite size" in missing
    assert spec.judge(None, {}) == (None, {}, "")  # a failed trial: nothing to judge
    one = ObjectiveSpec((Objective("loss"),))
    assert not one.multi and one.judge(0.5, {"loss": 0.5}) == (None, {}, "")


def test_the_first_objective_is_the_metric_and_each_is_given_once():
    assert [o.name for o in parse_objectives(["loss", "size:min"], metric=None, direction=None)] == ["loss", "size"]
    with pytest.raises(ObjectiveError) as error:  # the library names `objective`; the command line, its flag
        parse_objectives(["size:min", "score"], metric="score", direction=None)
    assert "put --objective score first" in as_flags(str(error.value))
    with pytest.raises(ObjectiveError, match="given twice"):
        parse_objectives(["loss", "loss:max"], metric=None, direction=None)
    with pytest.raises(ObjectiveError, match="disagrees"):
        parse_objectives(["loss:max", "size"], metric=None, direction="minimize")


def test_a_harness_search_refuses_numbers_the_genome_reports_about_itself(tmp_path):
    check_trusted([Objective("val_bpb"), Objective("params"), Objective("forward_ms")],
                  [Constraint("peak_memory_mb", "<=", 1e4)])
    for name in ("mfu_percent", "reported_val_bpb", "num_params_M"):
        with pytest.raises(ObjectiveError, match=f"'{name}' is not measured outside the genome"):
            check_trusted([Objective("val_bpb"), Objective(name)], [])
    with pytest.raises(SearchError, match="'mfu_percent' is not measured outside the genome"):
        create_search("h", root=tmp_path / "runs", project=ROOT, objectives=["val_bpb", "mfu_percent:max"])
    with pytest.raises(SearchError, match="'num_params_M' is not measured"):
        create_search("h", root=tmp_path / "runs", project=ROOT, constraints=["num_params_M<=5"])
    assert not (tmp_path / "runs" / "h").exists()


# -- Pareto arithmetic --------------------------------------------------------------------------------


def test_dominance_ranks_and_crowding_follow_nsga2():
    assert dominates((1, 2), (2, 2), MIN2) and not dominates((1, 3), (2, 2), MIN2)
    assert not dominates((1, 2), (1, 2), MIN2)  # equal is not better
    assert dominates((1, 5), (2, 5), ("minimize", "maximize")) and not dominates((1, 4), (2, 5), ("minimize", "maximize"))
    assert not dominates((1.95, 2), (2, 2), MIN2, margins=(0.1, 0))  # better by less than the min gain
    points = [(1, 5), (2, 3), (3, 2), (5, 1), (2, 5), (4, 4), (6, 6)]
    assert nondominated_ranks(points, MIN2) == [0, 0, 0, 0, 1, 1, 2]
    crowding = crowding_distances(points[:4])
    assert crowding[0] == crowding[3] == float("inf")  # the extremes are always kept
    assert crowding[1] == pytest.approx((3 - 1) / 4 + (5 - 2) / 4) and crowding[2] == pytest.approx(3 / 4 + 2 / 4)
    assert [r for r, _ in nsga_order(points, MIN2)] == [0, 0, 0, 0, 1, 1, 2]


def test_hypervolume_of_a_front_is_the_area_it_dominates():
    ref = (10, 10)
    assert hypervolume([(5, 5)], ref, MIN2) == 25
    assert hypervolume([(2, 8), (5, 5), (8, 2)], ref, MIN2) == pytest.approx(8 * 2 + 5 * 3 + 2 * 3)
    assert hypervolume([(2, 8), (5, 5), (6, 6)], ref, MIN2) == hypervolume([(2, 8), (5, 5)], ref, MIN2)
    assert hypervolume([(11, 1)], ref, MIN2) == 0  # beyond the reference: nothing
    assert hypervolume([(5, 5)], (10, 0), ("minimize", "maximize")) == 25
    assert hypervolume([(1, 1, 1)], (2, 2, 3), ("minimize",) * 3) == 2


# -- the lineage as a partial order --------------------------------------------------------------------


def test_a_child_is_kept_only_when_it_dominates_the_best():
    trials = [rec(0, (3.0, 100), op="seed"),
              rec(1, (2.5, 200), [0]),        # better loss, larger: a trade-off, not kept
              rec(2, (2.9, 90), [0]),         # dominates the seed: kept, the new best
              rec(3, (2.0, 95), [2], feasible=False),  # would dominate, but infeasible
              rec(4, (3.5, 50), [2]),         # smaller, worse: on the front, not kept
              rec(5, (2.95, 95), [2])]        # dominated by #2
    lineage = lineage_of(trials)
    assert [r.kept for r in lineage.history()] == [True, False, True, False, False, False]
    assert lineage.best.trial == 2
    assert [i.trial for i in lineage.front()] == [1, 2, 4]   # by the first objective
    assert lineage.would_keep(2.8, operator="mutate", feasible=True, values=[2.8, 80])
    assert not lineage.would_keep(2.8, operator="mutate", feasible=True, values=[2.8, 91])
    # The min gain applies to the first objective: better there by less, and no better elsewhere, is no gain.
    assert not lineage.would_keep(2.89, operator="mutate", feasible=True, values=[2.89, 90], min_gain=0.05)
    assert lineage.would_keep(2.89, operator="mutate", feasible=True, values=[2.89, 89], min_gain=0.05)
    # Ranked by non-dominated rank, the lonelier first along the front (diversity), the best first of all.
    ranked = lineage.ranked()
    assert ranked[0].trial == 2 and {i.trial for i in ranked[:3]} == {1, 2, 4} and 3 not in [i.trial for i in ranked]
    assert [i.trial for i in ranked[3:]] == [5, 0]


def test_a_single_objective_lineage_ranks_as_before():
    trials = [TrialRecord(number=n, state="COMPLETE", value=v,
                          attrs={"operator": op, "parents": [0] if n else [], "tree": f"t{n}", "status": "ok"})
              for n, v, op in ((0, 3.0, "seed"), (1, 2.5, "mutate"), (2, 2.7, "mutate"))]
    lineage = Lineage(trials)
    assert not lineage.multi and lineage.best.trial == 1 and [i.trial for i in lineage.front()] == [1]
    assert [i.trial for i in lineage.ranked()] == [1, 2, 0]
    assert lineage.rank_key(lineage.best) == (False, 0, 2.5, 1)


def test_strategies_select_on_the_front_and_cross_distant_members():
    trials = [rec(0, (3.0, 160), op="seed"), rec(1, (1.0, 300), [0]), rec(2, (2.0, 150), [0]),
              rec(3, (4.0, 20), [0]), rec(4, (3.5, 200), [0]), rec(5, (5.0, 400), [0])]
    lineage = lineage_of(trials)
    greedy = make_strategy("greedy").plan(lineage, random.Random(0))
    assert greedy.parents == (lineage.best.trial,)
    evolve = make_strategy("evolve", elite=3, tournament=3, crossover_rate=1.0, cross_from="best")
    pairs = {evolve.plan(lineage, random.Random(seed)).parents for seed in range(20)}
    front = {i.trial for i in lineage.front()}
    assert front == {1, 2, 3} and all(set(p) <= front for p in pairs)
    # The best (#2, which dominated the seed) is crossed with the front member farthest from it in objective
    # space, each objective scaled by its range (#3, the smallest; #1 lies nearer).
    assert lineage.best.trial == 2 and pairs == {(2, 3)}


# -- the study and search.json ----------------------------------------------------------------------


def test_a_multi_objective_study_is_told_vectors_and_reports_its_front(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = TrialStore.create(url, "mo", {}, directions=list(MIN2), metrics=["val_bpb", "params"])
    for vector in ((3.0, 100), (2.0, 200), (3.5, 300)):
        number = store.start({"operator": "mutate"})
        assert store.finish(number, status="ok", value=vector[0], values=list(vector))
    dup = store.start({})
    store.finish(dup, status="duplicate", value=3.0)  # no vector: nothing to tell a multi-objective study
    records = store.trials()
    assert [r.values for r in records[:3]] == [(3.0, 100), (2.0, 200), (3.5, 300)]
    assert records[1].value == 2.0 and records[3].state == "FAIL" and records[3].status == "duplicate"
    study = optuna.load_study(study_name="mo", storage=url)
    assert len(study.directions) == 2 and study.metric_names == ["val_bpb", "params"]
    assert sorted(t.number for t in study.best_trials) == [0, 1]
    store.close()


def test_a_search_made_before_objectives_opens_unchanged(tmp_path):
    import tarfile
    with tarfile.open(Path(__file__).parent / "data" / "old-format-search.tar.gz") as archive:
        archive.extractall(tmp_path / "runs", filter="data")
    before = (tmp_path / "runs" / "old-format" / "search.json").read_text()
    with Search.open("old-format", root=tmp_path / "runs") as search:
        spec = search.objectives
        assert not spec.multi and spec.names == ["val_bpb"] and spec.constraints == ()
        lineage = search.lineage()
        assert not lineage.multi and lineage.best.score == pytest.approx(2.921956)
        assert len(search.store.study.directions) == 1
    assert (tmp_path / "runs" / "old-format" / "search.json").read_text() == before


# -- end to end ------------------------------------------------------------------------------------------

BENCH = '''import model
size = model.WIDTH * model.DEPTH
loss = 1.0 / (1 + size) + 0.01 * abs(model.WIDTH - 4 * model.DEPTH)
print(f"loss: {loss:.6f}")
print(f"size: {size}")
print(f"peak: {size * 10}")
'''


@pytest.fixture
def tradeoff(tmp_path) -> Path:
    """A command-target project whose two knobs trade loss for size at once (peak is ten times the size)."""
    project = tmp_path / "tradeoff"
    project.mkdir()
    (project / "model.py").write_text('"""Width and depth trade loss for size."""\nWIDTH = 8\nDEPTH = 2\n')
    (project / "bench.py").write_text(BENCH)
    return tmp_path


@pytest.mark.slow
def test_a_two_objective_search_runs_end_to_end_with_a_front(tradeoff):
    args = ["--project", "tradeoff", "--mutable", "model.py", "--run", "python bench.py", "--sandbox", "none",
            "--objective", "loss", "--objective", "size:min", "--constraint", "peak<=300"]
    proc = run_evo("run", "mo", *args, "--trials", "14", "--quiet", cwd=tradeoff)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = json.loads((tradeoff / "runs" / "mo" / "search.json").read_text())
    assert recorded["objectives"] == [{"name": "loss", "direction": "minimize"},
                                      {"name": "size", "direction": "minimize"}]
    assert recorded["constraints"] == [{"metric": "peak", "op": "<=", "bound": 300.0}]
    with Search.open("mo", root=tradeoff / "runs") as search:
        lineage = search.lineage()
        front = lineage.front()
        study = search.store.study
        # Optuna sees a two-objective study whose best trials are the front (and their duplicates).
        assert len(study.directions) == 2 and study.metric_names == ["loss", "size"]
        best_trials = {t.number for t in study.best_trials}
        feasible_best = {t.number for t in study.best_trials if lineage.by_number[t.number].feasible}
        assert {i.trial for i in front} <= best_trials and all(lineage.individual(n) in front for n in feasible_best)
        # Non-trivial: a smaller, worse model and a larger, better one are both on it.
        assert len(front) >= 2 and front[0].objectives[1] > front[-1].objectives[1]
        assert all(i.feasible and i.objectives[1] * 10 <= 300 for i in front)
        infeasible = [t for t in lineage.trials if t.finished_ok and not t.feasible]
        assert all(t.constraints["peak<=300"] > 0 for t in infeasible)
    status = run_evo("status", "mo", cwd=tradeoff)
    assert status.returncode == 0 and f"front ({len(front)} genomes; loss:min, size:min)" in status.stdout
    listed = run_evo("best", "mo", "--front", cwd=tradeoff)
    assert listed.returncode == 0 and all(f"#{i.trial} " in listed.stdout for i in front)
    smallest = run_evo("best", "mo", "--prefer", "size", "--out", "small", cwd=tradeoff)
    assert smallest.returncode == 0 and f"trial #{front[-1].trial} " in smallest.stdout
    changed = run_evo("run", "mo", *args[:-4], "--objective", "loss", "--trials", "15", cwd=tradeoff)
    assert changed.returncode == 2 and "--objective is fixed at ['loss:min', 'size:min']" in changed.stderr


# -- the harness's trusted size ------------------------------------------------------------------------

HIDDEN = 50_000


def _score(folder: Path, env: dict) -> dict:
    """The harness's model process and scorer on the handed-over model in folder/out, as the engine runs them."""
    import socket
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {**env, "EVO_OUTPUT": str(folder / "out")}
    model = subprocess.Popen([sys.executable, "-P", "prepare.py", "--serve-model"], cwd=folder, pass_fds=[theirs.fileno()],
                             stdout=subprocess.DEVNULL, env={**env, "EVO_EVAL_SOCKET": str(theirs.fileno())})
    scorer = subprocess.Popen([sys.executable, "prepare.py", "--score"], cwd=folder, pass_fds=[ours.fileno()],
                              env={**env, "EVO_EVAL_SOCKETS": str(ours.fileno())}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    ours.close()
    theirs.close()
    out, _ = scorer.communicate("go\n", timeout=300)
    model.wait(timeout=60)
    return json.loads(next(l for l in out.splitlines() if l.startswith("EVO_SCORE "))[len("EVO_SCORE "):])


@pytest.mark.slow
def test_weights_hidden_in_buffers_count_towards_the_models_size(tiny_env, tmp_path):
    import torch
    for name in ("train.py", "prepare.py"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    env = {**os.environ, "EVO_PROFILE": "tiny", "EVO_TIME_BUDGET": "1", "EVO_DEVICE": "cpu",
           "EVO_OUTPUT": str(tmp_path / "out")}
    trained = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert trained.returncode == 0, trained.stdout[-1000:] + trained.stderr[-1000:]
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    in_file = sum(v.numel() for v in saved.values())
    honest = _score(tmp_path, env)
    assert honest["verdict"] == "ok" and honest["forward_ms"] > 0
    # The seed's rotary tables are buffers it does not save (rebuilt by build_model): they count too.
    assert honest["params"] > in_file
    # The same weights, rebuilt by a genome that keeps a table of its own in a buffer it never saves.
    anchor = "class GPT(nn.Module):\n    def __init__(self, config):\n        super().__init__()\n"
    text = (tmp_path / "train.py").read_text()
    assert anchor in text
    (tmp_path / "train.py").write_text(text.replace(anchor, anchor + f"        self.register_buffer('hidden', "
                                                    f"torch.randn({HIDDEN}), persistent=False)\n"))
    hider = _score(tmp_path, env)
    assert hider["verdict"] == "ok" and hider["params"] == honest["params"] + HIDDEN


class _Sizes(Proposer):
    """Proposes the seed with given edits, one child each, in order: the sizes a front is made of."""

    name = "sizes"

    def __init__(self, seed: str, children: list[tuple[str, list[tuple[str, str]]]]):
        self.queue = []
        for label, edits in children:
            text = seed
            for old, new in edits:
                assert old in text, old
                text = text.replace(old, new, 1)
            self.queue.append((label, text))

    def mutate(self, parent, ctx):
        label, text = self.queue.pop(0)
        return Proposal({"train.py": text}, label, rationale="a size of the seed")


@pytest.mark.slow
def test_a_two_objective_tiny_harness_search_finds_a_front_of_sizes(project):
    """val_bpb and the scorer's size on the tiny profile, end to end in the sandbox. At a budget this short a
    smaller model trains better, so the smaller child also learns 100 times slower: a smaller, worse model.
    With the seed (larger, better) both lie on the front whatever the third child does."""
    search = create_search("sizes", root=project / "runs", project=project, profile="tiny", budget=2,
                           objectives=["val_bpb", "params:min"], constraints=["peak_memory_mb<=100000"])
    seed = (project / "train.py").read_text()
    slow = [(f"{name} = {value}", f"{name} = {value} * 0.01")
            for name, value in (("EMBEDDING_LR", "0.6"), ("UNEMBEDDING_LR", "0.004"), ("MATRIX_LR", "0.04"),
                                ("SCALAR_LR", "0.5"))]
    proposer = _Sizes(seed, [("one layer, learning slowly", [("DEPTH = per_profile(tiny=2,", "DEPTH = per_profile(tiny=1,"),
                                                             *slow]),
                             ("wider", [("ASPECT_RATIO = per_profile(tiny=32,", "ASPECT_RATIO = per_profile(tiny=64,")])])
    reason = SearchLoop(search, make_strategy("greedy"), proposer, parse_devices("cpu"),
                        RunOptions(limits=LimitSpec(trials=3), max_memory_gb=4)).run()
    assert str(reason) == "reached 3 trials", reason
    lineage = search.lineage()
    assert all(t.finished_ok for t in lineage.trials), [(t.status, t.error) for t in lineage.trials]
    sizes = {t.number: t.metrics["params"] for t in lineage.trials}
    assert sizes[2] > sizes[0] > sizes[1] > 0 and all(t.values == (t.value, t.metrics["params"]) for t in lineage.trials)
    front = lineage.front()
    assert len(front) >= 2 and 1 in {i.trial for i in front}, [(i.trial, i.objectives) for i in front]
    # Ordered by val_bpb: the best model is the largest on the front, the smallest the worst.
    assert front[0].objectives[1] > front[-1].objectives[1] and front[-1].trial == 1
    study = optuna.load_study(study_name="sizes", storage=search.config.storage_url(search.paths))
    assert len(study.directions) == 2 and {t.number for t in study.best_trials} == {i.trial for i in front}
    search.close()


def test_compare_ranks_strategies_by_the_hypervolume_of_their_fronts():
    from analysis.compare import Run, compare_runs, render_table

    def run(label, seed, front):
        trials = [rec(0, (3.0, 100), op="seed")] + [rec(n, v, [0]) for n, v in enumerate(front, start=1)]
        return Run(label=label, name=f"{label}-{seed}", trials=trials, metric="loss", objectives=("loss", "size"),
                   directions=MIN2)

    runs = [run("greedy", 0, [(2.9, 100)]), run("greedy", 1, [(2.8, 100)]),
            run("evolve", 0, [(2.0, 150), (2.9, 60)]), run("evolve", 1, [(2.1, 150), (2.9, 50)])]
    table = compare_runs(runs, reference="greedy")
    hv = table.hypervolume
    # The reference point: the worst of each objective over every front, a tenth of its range further out.
    assert hv.objectives == ("loss", "size") and hv.reference_point == pytest.approx((2.99, 160.0))
    by_label = dict(hv.rows)
    assert by_label["greedy"] == pytest.approx(((2.99 - 2.9) * (160 - 100), (2.99 - 2.8) * (160 - 100)))
    assert by_label["evolve"] == pytest.approx((0.9 * 10 + 0.09 * 100, 0.8 * 10 + 0.09 * 110))
    assert min(by_label["evolve"]) > max(by_label["greedy"])
    text = render_table(table)
    assert "fronts by hypervolume over loss, size (larger is better" in text
    assert "evolve vs greedy" in text and "95% CI [" in text.split("fronts by hypervolume")[1]
    # A single-objective comparison prints what it printed before.
    plain = [Run(label=r.label, name=r.name, trials=[dataclasses.replace(t, values=None) for t in r.trials],
                 metric="loss") for r in runs]
    assert compare_runs(plain).hypervolume is None and "hypervolume" not in render_table(compare_runs(plain))


def test_promotion_climbs_the_front_first():
    from evo.promotion import next_promotion, parse_ladder

    trials = [rec(0, (3.0, 100), op="seed"), rec(1, (2.0, 300), [0]), rec(2, (2.5, 350), [0]), rec(3, (4.0, 50), [0])]
    lineage = lineage_of(trials)
    chosen: list[int] = []
    while (step := next_promotion(lineage, parse_ladder("budget*3"), top=0.75,
                                  taken=lambda ind, rung: ind.trial in chosen)) is not None:
        chosen.append(step[0].trial)
    # #2 has the second-best loss but #1 beats it in both objectives: the front (#1, #0, #3) climbs instead.
    assert chosen == [1, 0, 3]
