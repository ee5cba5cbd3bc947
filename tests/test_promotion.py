"""Promotion to larger scales (evo run --promote): the ladder, who climbs, ranking by the highest
rung, and how well a rung predicted the next."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from analysis.promotion import describe_rho, rung_rows
from analysis.stats import spearman
from conftest import assert_promoted_at_twice_the_budget, run_evo
from evo.promotion import LadderError, Rung, next_promotion, parse_ladder
from population.lineage import Lineage
from population.search import Search
from population.store import TrialRecord

T0 = dt.datetime(2026, 1, 1)


def rec(number: int, operator: str, value: float | None, *, parents=(), tree: str | None = None,
        rung: int | None = None) -> TrialRecord:
    attrs = {"operator": operator, "parents": list(parents), "status": "ok" if value is not None else "crash",
             "tree": tree or f"t{number}", "commit": f"c{number}"}
    if rung is not None:
        attrs.update(rung=rung, rung_label=f"budget*{5 ** rung}")
    return TrialRecord(number=number, state="COMPLETE" if value is not None else "FAIL", value=value, attrs=attrs,
                       finished=T0 + dt.timedelta(minutes=number))


def test_a_ladder_parses_into_rungs_and_a_bad_one_says_how_to_write_it():
    assert parse_ladder("budget*5") == (Rung(5.0),)
    assert parse_ladder("budget*3, budget x 9") == (Rung(3.0), Rung(9.0))
    assert parse_ladder("budget*4+env:DEPTH=8") == (Rung(4.0, {"DEPTH": "8"}),)
    assert parse_ladder("budget*4+env:DEPTH=8")[0].label == "budget*4+env:DEPTH=8"
    for bad, words in [("", "names no rung"), ("budget*0.5", "above 1"), ("budget*9,budget*3", "must not shrink"),
                       ("depth=8", "cannot read rung part"), ("env:8X=1", "not an environment variable"),
                       ("budget*abc", "cannot read"), (",".join(["budget*2"] * 6), "at most 5")]:
        with pytest.raises(LadderError, match=words):
            parse_ladder(bad)


def test_the_top_third_of_a_rung_climbs_once_and_higher_rungs_go_first():
    trials = [rec(0, "seed", 2.0), rec(1, "mutate", 1.9, parents=[0])]
    ladder = parse_ladder("budget*5,budget*25")
    nothing_taken = lambda ind, rung: False  # noqa: E731
    assert next_promotion(Lineage(trials), ladder, top=1 / 3, taken=nothing_taken) is None  # 2 scored: quota 0
    trials.append(rec(2, "mutate", 1.95, parents=[0]))
    ind, rung = next_promotion(Lineage(trials), ladder, top=1 / 3, taken=nothing_taken)
    assert (ind.trial, rung) == (1, 1)                                     # the best of three climbs
    promoted = trials + [rec(3, "promote", 1.5, parents=[1], tree="t1", rung=1)]
    taken = lambda ind, rung: ind.trial == 1 and rung == 1  # noqa: E731
    assert next_promotion(Lineage(promoted), ladder, top=1 / 3, taken=taken) is None
    # Rung 0 has an unpromoted genome in its top two thirds (#3), but rung 1's best (#2 there) climbs first.
    more = promoted + [rec(4, "mutate", 1.92, parents=[0]), rec(5, "promote", 1.4, parents=[2], tree="t2", rung=1)]
    taken = lambda ind, rung: ind.trial in (1, 2) and rung == 1  # noqa: E731
    ind, rung = next_promotion(Lineage(more), ladder, top=0.67, taken=taken)
    assert (ind.trial, rung) == (2, 2)


def test_parents_rank_by_the_highest_rung_and_promotions_never_move_the_small_scale_best():
    trials = [rec(0, "seed", 2.0), rec(1, "mutate", 1.8, parents=[0]), rec(2, "mutate", 1.7, parents=[0]),
              rec(3, "promote", 1.2, parents=[1], tree="t1", rung=1)]
    lineage = Lineage(trials)
    assert lineage.best.trial == 1 and lineage.best.rung == 1     # #2 is better at rung 0 but was never promoted
    assert [i.trial for i in lineage.ranked()] == [1, 2, 0]
    assert lineage.individual(2).score == 1.7 and lineage.individual(1).score == 1.8   # rung 0 means untouched
    assert not lineage.kept(3) and lineage.kept(2)                 # a promotion is not a new best at rung 0
    assert not lineage.would_keep(1.0, operator="promote", feasible=True)


def test_rank_correlation_between_rungs():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486833, rel=1e-6)   # ties get mean ranks
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    trials = [rec(0, "seed", 2.0), rec(1, "mutate", 1.8, parents=[0]), rec(2, "mutate", 1.9, parents=[0]),
              rec(3, "promote", 1.5, parents=[1], tree="t1", rung=1),
              rec(4, "promote", 1.3, parents=[2], tree="t2", rung=1),   # rung 0 ranked #1 above #2: wrong
              rec(5, "promote", 1.6, parents=[0], tree="t0", rung=1)]
    rows = rung_rows(Lineage(trials))
    assert [(r.rung, r.genomes, r.attempts) for r in rows] == [(0, 3, 3), (1, 3, 3)]
    assert rows[1].rho == pytest.approx(0.5) and rows[1].pairs == 3 and rows[1].best == 1.3
    assert "Spearman rho +0.50 over 3 genomes" in describe_rho(rows[1])


def test_a_search_promotes_its_best_genomes_at_twice_the_budget_and_reports_how_well_the_small_scale_predicted(
        instant_project):
    run = run_evo("run", "p", "--profile", "tiny", "--budget", "1", "--strategy", "evolve", "--trials", "14",
                  "--devices", "cpu", "--promote", "budget*2", cwd=instant_project)
    assert run.returncode == 0, run.stderr + run.stdout
    search = Search.open("p", root=instant_project / "runs")
    try:
        trials = search.trials()
        lineage = search.lineage()
    finally:
        search.close()
    assert_promoted_at_twice_the_budget(trials, lineage)
    status = run_evo("status", "p", cwd=instant_project)
    assert "rung 1 (budget*2)" in status.stdout and "rho +1.00" in status.stdout   # a pure shift keeps the ranking
    report = run_evo("report", "p", "--out", "r.html", cwd=instant_project)
    assert report.returncode == 0, report.stderr
    html = (instant_project / "r.html" / "report.html").read_text()
    assert "<h2>Promotion</h2>" in html and "Spearman rho +1.00" in html
    again = run_evo("run", "p", "--trials", "15", "--promote", "budget*3", cwd=instant_project)
    assert again.returncode == 2 and "promotes along --promote budget*2" in again.stderr


@pytest.mark.parametrize("ladder, words", [("budget*0.5", "above 1"), ("size*2", "cannot read rung part"),
                                           ("budget*100", "more than --hours")])
def test_a_ladder_that_cannot_run_is_refused_before_anything_is_created(instant_project, ladder, words):
    run = run_evo("run", "q", "--profile", "tiny", "--budget", "60", "--hours", "1", "--promote", ladder,
                  cwd=instant_project)
    assert run.returncode == 2 and words in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (instant_project / "runs" / "q").exists()
