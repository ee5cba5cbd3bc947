"""Statistics in `evo compare`: intervals, the permutation test, its sentence, and the refusal of searches
that do not compare."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import re
import statistics

import numpy as np
import pytest

from analysis.compare import Run, compare_runs, comparability, render_table
from analysis.stats import bootstrap_ci, detectable, permutation_test, smallest_p, verdict
from conftest import ROOT, run_evo
from population.store import TrialRecord

T0 = dt.datetime(2026, 1, 1)


def _exact_p(a, b) -> float:
    """The definition, spelled out: the share of relabellings at least as far apart as the observed one."""
    pooled = list(a) + list(b)
    observed = abs(statistics.fmean(a) - statistics.fmean(b))
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += abs(statistics.fmean(x) - statistics.fmean(y)) >= observed - 1e-12
        total += 1
    return hits / total


def test_permutation_test_is_exact_for_few_seeds():
    assert permutation_test([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)   # only the two extreme splits
    rng = random.Random(3)
    for _ in range(5):
        a = [rng.gauss(0, 1) for _ in range(rng.randint(2, 5))]
        b = [rng.gauss(0.5, 1) for _ in range(rng.randint(2, 5))]
        assert permutation_test(a, b) == pytest.approx(_exact_p(a, b))


def test_permutation_test_monte_carlo_agrees_with_the_exact_count():
    rng = random.Random(5)
    a = [rng.gauss(0, 1) for _ in range(6)]
    b = [rng.gauss(1, 1) for _ in range(6)]    # 924 relabellings
    exact = permutation_test(a, b, resamples=1000)
    sampled = permutation_test(a, b, resamples=900, seed=1)   # fewer draws than relabellings: Monte Carlo
    assert abs(sampled - exact) < 0.02 and sampled > 0


def test_permutation_test_rejects_a_true_null_about_one_time_in_twenty():
    rng = np.random.default_rng(0)
    p = [permutation_test(rng.normal(0, 1, 5), rng.normal(0, 1, 5)) for _ in range(300)]
    assert 0.01 <= np.mean(np.array(p) < 0.05) <= 0.09


def test_bootstrap_interval_covers_the_true_mean_about_as_often_as_it_says():
    rng = np.random.default_rng(1)
    cover = 0
    for i in range(200):
        low, high = bootstrap_ci(rng.normal(3.0, 0.1, 12), resamples=2000, seed=i)
        cover += low <= 3.0 <= high
    assert 0.85 <= cover / 200 <= 0.99     # percentile bootstrap runs a little narrow at 12 values
    assert bootstrap_ci([2.5]) is None and bootstrap_ci([2.5, 2.7]) == bootstrap_ci([2.5, 2.7])


def test_verdict_says_who_is_ahead_or_what_could_not_be_seen():
    ahead = verdict("evolve", [2.50, 2.51, 2.49, 2.52, 2.50], "greedy", [2.60, 2.62, 2.59, 2.61, 2.63])
    assert ahead.detected and ahead.difference == pytest.approx(0.106)
    assert ahead.sentence == ("evolve ahead of greedy by 0.1060 val_bpb, p = 0.00794 "
                              "(two-sided permutation test on final bests, 5 vs 5 seeds)")
    behind = verdict("random", [2.70, 2.72, 2.69, 2.71], "greedy", [2.60, 2.62, 2.59, 2.61])
    assert behind.detected and behind.sentence.startswith("greedy ahead of random by 0.1000")
    unclear = verdict("evolve", [2.55, 2.70, 2.60, 2.52], "greedy", [2.60, 2.62, 2.50, 2.66])
    assert not unclear.detected
    assert re.fullmatch(r"no difference detectable between evolve and greedy at this noise \(σ = 0\.\d{4} across seeds; "
                        r"p = [01]\.\d\d, 4 vs 4 seeds\): differences below ~0\.\d{4} would not show", unclear.sentence)
    assert unclear.sentence.endswith(f"~{detectable(unclear.sigma, 4, 4):.4f} would not show")
    few = verdict("evolve", [2.5, 2.4, 2.45], "greedy", [2.6, 2.7, 2.65])
    assert few.p is None and "too few seeds to test (3 vs 3 seeds" in few.sentence
    assert smallest_p(3, 3) == pytest.approx(0.1) and smallest_p(4, 4) < 0.05


def test_a_maximised_metric_turns_ahead_around():
    v = verdict("b", [0.9, 0.91, 0.92, 0.93], "a", [0.5, 0.51, 0.52, 0.53], direction="maximize", unit="accuracy")
    assert v.sentence.startswith("b ahead of a by 0.4000 accuracy")


def _search(values: list[float], *, strategy: str, **config) -> list[TrialRecord]:
    trials = []
    best = 0
    for i, v in enumerate(values):
        trials.append(TrialRecord(number=i, state="COMPLETE", value=v, finished=T0 + dt.timedelta(minutes=i),
                                  started=T0 + dt.timedelta(minutes=i, seconds=-36),
                                  attrs={"operator": "seed" if i == 0 else "mutate", "parents": [] if i == 0 else [best],
                                         "status": "ok", "tree": f"t{i}", "strategy": strategy, "wall_seconds": 36.0}))
        if v < values[best]:
            best = i
    return trials


def test_the_table_gives_intervals_time_to_target_and_the_tests_in_words():
    config = {"profile": "tiny", "budget": 5.0, "data": "shakespeare", "harness_sha256": "ab" * 32}
    greedy = [[3.0, 2.9, 2.8, 2.75], [3.0, 2.95, 2.85, 2.8], [3.0, 2.9, 2.88, 2.86], [3.0, 2.92, 2.8, 2.78]]
    evolve = [[3.0, 2.79, 2.7, 2.65], [3.0, 2.78, 2.7, 2.6], [3.0, 2.75, 2.72, 2.7], [3.0, 2.79, 2.66, 2.64]]
    runs = ([Run("greedy", f"g{k}", _search(v, strategy="greedy"), config=config) for k, v in enumerate(greedy)]
            + [Run("evolve", f"e{k}", _search(v, strategy="evolve"), config=config) for k, v in enumerate(evolve)])
    table = compare_runs(runs)
    greedy_row, evolve_row = table.rows
    assert table.target == pytest.approx(statistics.fmean([2.75, 2.8, 2.86, 2.78]))   # 2.7975
    assert evolve_row.to_target == (2, 2, 2, 2) and evolve_row.hours_to_target == pytest.approx((0.02,) * 4)
    assert greedy_row.to_target == (4, None, None, 4)     # two seeds end above their mean
    low, high = evolve_row.ci
    assert low < evolve_row.mean < high and min(evolve_row.finals) <= low
    text = render_table(table)
    assert not table.problems and "WARNING" not in text
    assert f"[{low:.4f}, {high:.4f}]" in text and "2.0 (4/4)" in text and "0.020 (4/4)" in text
    assert "evolve ahead of greedy by 0.1500 val_bpb, p = 0.0286 (two-sided permutation test on final bests, 4 vs 4 seeds)" in text
    assert "noise: final bests vary by σ = " in text and "single-evaluation noise unknown" in text


def test_searches_that_differ_in_settings_or_compute_are_named_in_a_warning():
    base = {"profile": "tiny", "budget": 5.0, "data": "shakespeare", "harness_sha256": "ab" * 32}
    runs = [Run("greedy", "g0", _search([3.0, 2.9], strategy="greedy"), config=base),
            Run("evolve", "e0", _search([3.0, 2.8], strategy="evolve"), config={**base, "harness_sha256": "cd" * 32}),
            Run("evolve", "e1", _search([3.0, 2.8, 2.7], strategy="evolve"), config={**base, "budget": 300.0}),
            Run("imported", "i0", _search([3.0, 2.9], strategy="greedy"), config={**base, "harness_sha256": ""})]
    problems = comparability(runs)
    assert problems == ["budget (s per trial) differs: 5 in g0, e0, i0; 300 in e1",
                        "harness differs: ababababab in g0, e1; cdcdcdcdcd in e0",   # i0 records none: left out
                        "trials differ (not equal compute): 2 in g0, e0, i0; 3 in e1"]
    text = render_table(compare_runs(runs))
    assert text.splitlines()[:3] == [f"WARNING: these searches do not compare: {p}" for p in problems]


@pytest.mark.slow
def test_compare_takes_the_run_options_fixes_them_and_refuses_a_changed_harness(instant_project):
    args = ["compare", "c", "--strategies", "greedy,evolve", "--seeds", "2", "--trials", "6", "--profile", "tiny",
            "--budget", "1", "--noise-runs", "2", "--min-gain", "auto", "--elite", "4", "--quiet"]
    proc = run_evo(*args, cwd=instant_project, env={"EVO_TEST_NOISE": "0.02"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from population.search import Search
    for name in ("c-greedy-s0", "c-evolve-s1"):
        with Search.open(name, root=instant_project / "runs") as search:
            trials = search.trials()
        assert [t.operator for t in trials[:3]] == ["seed", "reeval", "reeval"] and len(trials) == 6
        assert trials[3].attrs["min_gain"] > 0
    assert "95% CI of mean" in proc.stdout and "too few seeds to test (2 vs 2 seeds" in proc.stdout
    assert "a single evaluation by" in proc.stdout
    # Replicates are independent: none proposed from the lab notebook of those that ran before it.
    assert not (instant_project / "runs" / "notebook.db").exists()
    changed = run_evo("compare", "c", "--min-gain", "0.1", cwd=instant_project)
    assert changed.returncode == 2 and "--min-gain is fixed at 'auto'" in changed.stderr
    changed = run_evo("compare", "c", "--elite", "9", cwd=instant_project)
    assert changed.returncode == 2 and "--elite is fixed at 4" in changed.stderr
    (instant_project / "prepare.py").write_text((instant_project / "prepare.py").read_text() + "\n# changed\n")
    grown = run_evo("compare", "c", "--seeds", "3", cwd=instant_project)
    assert grown.returncode == 2 and "the harness (prepare.py" in grown.stderr and "changed since" in grown.stderr
    assert not (instant_project / "runs" / "c-greedy-s2").exists()


# A comparison's manifest as evoresearch wrote it before its run options were a `RunOptions`: every
# setting a flat key. Comparisons made then must still open, keep their settings and resume.
FLAT_MANIFEST = """{
  "name": "c",
  "strategies": [
    "greedy"
  ],
  "seeds": 1,
  "trials": 4,
  "proposer": "offline",
  "profile": "tiny",
  "budget": 1.0,
  "base_seed": 3,
  "reeval": 1,
  "searches": [],
  "created": "2026-05-01T09:30:00+00:00",
  "noise_runs": 2,
  "min_gain": "auto",
  "prune": false,
  "max_vram_gb": 40.0,
  "max_cost_usd": null,
  "strategy_options": {},
  "data": null,
  "harness_sha256": ""
}
"""


def test_a_comparison_saved_with_flat_run_options_opens_with_them_and_is_saved_as_it_was(tmp_path):
    from evo.compare import Comparison
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "compare.json").write_text(FLAT_MANIFEST)
    comparison = Comparison.open("c", root=tmp_path)
    run = comparison.config.run
    assert (run.noise.reeval, run.noise.noise_runs, run.noise.min_gain, run.prune, run.max_vram_gb,
            run.limits.max_cost_usd) == \
        (1, 2, "auto", False, 40.0, None)
    member = comparison.config.member_options()
    assert (member.limits.trials, member.noise.reeval, member.noise.noise_runs, member.noise.min_gain,
            member.max_vram_gb) == \
        (4, 1, 2, "auto", 40.0)
    assert member.memory is False   # replicates never read each other's notebook
    assert member is not run and run.limits.trials is None   # a member's limit is not the comparison's
    comparison.save()
    assert json.loads((tmp_path / "c" / "compare.json").read_text()) == json.loads(FLAT_MANIFEST)


@pytest.mark.slow
def test_a_comparison_saved_with_flat_run_options_resumes_with_them(instant_project):
    (instant_project / "runs" / "c").mkdir(parents=True)
    (instant_project / "runs" / "c" / "compare.json").write_text(FLAT_MANIFEST.replace('"reeval": 1', '"reeval": 0'))
    changed = run_evo("compare", "c", "--min-gain", "0.1", cwd=instant_project)
    assert changed.returncode == 2 and "--min-gain is fixed at 'auto'" in changed.stderr
    proc = run_evo("compare", "c", "--quiet", cwd=instant_project, env={"EVO_TEST_NOISE": "0.02"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from population.search import Search
    with Search.open("c-greedy-s0", root=instant_project / "runs") as search:
        trials = search.trials()
        assert search.config.seed == 3 and search.config.budget == 1.0
    assert [t.operator for t in trials[:3]] == ["seed", "reeval", "reeval"] and len(trials) == 4
    assert trials[3].attrs["min_gain"] > 0


def test_compare_refuses_min_gain_auto_without_noise_runs_before_writing_anything(project):
    proc = run_evo("compare", "bad", "--strategies", "greedy,evolve", "--trials", "3", "--min-gain", "auto", cwd=project)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--min-gain auto needs a measured noise floor" in proc.stderr
    assert not (project / "runs").exists()


def test_the_strategy_benchmark_runs_the_real_strategies_proposer_and_lineage():
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    import strategy_landscape as bench
    from population.lineage import Lineage

    job = bench.Job("evolve", 0, 30, 0.002, 2, 2, "auto", 1, {"crossover_rate": 0.5, "cross_from": "best"})
    sim = bench.Simulation(job)
    curve = sim.run()
    records = sorted(sim.records, key=lambda t: t.number)
    assert len(curve) == len(records) == 30 and [t.number for t in records] == list(range(30))
    assert [t.operator for t in records[:3]] == ["seed", "reeval", "reeval"]          # noise runs first
    assert {"mutate", "crossover"} <= {t.operator for t in records}
    lineage = Lineage(sim.records)
    assert all(t.attrs.get("kept", False) == lineage.kept(t.number) for t in records)   # loop rule == replay
    assert curve[-1] == sim.land.true(bench.params_of(sim.files[lineage.best.trial]))
    land = bench.Landscape(0, noise=0.0)
    assert land.true(land.seed) > min(curve) > 0.9       # the seed is not the landscape's best
