"""No trial spent twice on a known idea (issue 31): before a child is trained its change is compared with the
lab notebook, and a repeat of an idea measured worse beyond the noise is not trained. Trials run in this
process (`InstantRunner`): what is checked is which proposals reach the runner, not what training does."""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import run_evo
from evo import Engine, GreedyStrategy, LimitSpec, NoiseSpec, OfflineProposer, Proposal, Proposer, RunOptions, create_search
from evo.proposers import KnownIdeas
from in_process import InstantRunner
from population import Lineage
from population.lineage import auto_min_gain
from population.notebook import Change, Idea, Notebook, Recall, search_id_of
from population.repeats import REPEAT_ATTR, SKIPPED_ATTR, diff_lines, idea_key
from analysis.summary import render_status, render_trial, summarize


def drive(engine: Engine) -> None:
    while (ticket := engine.ask()) is not None:
        engine.tell(ticket, engine.run(ticket))


def searched(project, name: str, proposer: Proposer, trials: int, noise_runs: int = 2) -> Engine:
    """A finished search of the instant genome (greedy); its engine, still open."""
    search = create_search(name, root=project / "runs", project=project, profile="tiny", budget=1)
    engine = Engine(search, GreedyStrategy(), proposer, RunOptions(limits=LimitSpec(trials=trials),
                                                                   noise=NoiseSpec(noise_runs=noise_runs)),
                    runner=InstantRunner())
    drive(engine)
    # The engine adds a trial's row before its next proposal: a reader (here, the next search in this
    # process, whose notebook is already open) adds the last ones, as `evo ideas` or a new `evo run` does.
    Notebook.for_search(search).sync(search)
    return engine


def closed(*engines: Engine) -> None:
    for engine in engines:
        engine.close()
        engine.search.close()


def moves(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(","))


def test_the_same_idea_is_recognised_through_reformatting_and_comments_but_not_another_edit():
    parent = {"train.py": "LR = 0.04  # a rate\n\ndef f(a, b):\n    return a + b\n"}
    edit = {"train.py": "LR = 0.05  # a rate\n\ndef f(a, b):\n    return a * b\n"}
    again = {"train.py": "LR = 5e-2\n\ndef f(a, b):\n    return a*b   # the product, this time\n"}
    other = {"train.py": "LR = 0.05  # a rate\n\ndef f(a, b):\n    return a - b\n"}
    lr = (Change("LR", 0.04, 0.05),)
    key = idea_key(lr, diff_lines([parent], edit))
    assert key and key == idea_key(lr, diff_lines([parent], again))
    assert key != idea_key(lr, diff_lines([parent], other))
    assert key != idea_key((Change("LR", 0.04, 0.06),), diff_lines([parent], edit))
    # The same edit to a parent whose other code differs is the same idea (context is not the idea).
    elsewhere = {"train.py": "LR = 0.04\nDEPTH = 3\n\ndef f(a, b):\n    return a + b\n"}
    moved = {"train.py": "LR = 0.05\nDEPTH = 3\n\ndef f(a, b):\n    return a * b\n"}
    assert idea_key(lr, diff_lines([elsewhere], moved)) == key
    # A comment is no idea at all: no key, so it never matches anything.
    assert not idea_key((), diff_lines([parent], {"train.py": parent["train.py"].replace("a rate", "the rate")}))


def row(trial: int, search: str, effect: float, parents=(0,), noise_sd=0.001) -> Idea:
    return Idea(search_id=f"{search}@t", trial=trial, search=search, task="t", profile="tiny", budget=1.0,
                metric="val_bpb", direction="minimize", operator="mutate", proposer="offline", parents=parents,
                description="LR 0.04 -> 0.05", changes=(Change("LR", 0.04, 0.05),),
                diff="-LR = 0.04 # a rate\n+LR = 0.05 # a rate", parent_score=2.0, score=2.0 - effect,
                effect=effect, noise_sd=noise_sd, status="ok")


@pytest.mark.parametrize("effects, parents, verdict, refused", [
    ([-0.01], (0,), "worse", True),                       # beyond 2 x the floor: not trained on any parent
    ([0.01], (0,), "better", False),                      # better, on another parent of this search: a new combination
    ([0.01], (1,), "measured on this parent", True),      # the same genome again, in all but its formatting
    ([-0.001], (0,), "inside the noise", False),          # no evidence either way: measured again
])
def test_a_known_idea_is_refused_when_it_measured_worse_or_on_this_parent_and_trained_as_a_new_combination_else(
        effects, parents, verdict, refused):
    from population.store import TrialRecord

    class Config:
        name, created, profile, budget, metric = "here", "t", "tiny", 1.0, "val_bpb"

    trials = [TrialRecord(n, "COMPLETE", 2.0, attrs={"operator": "seed" if n == 0 else "mutate", "parents": [] if n == 0 else [0],
                                                     "status": "ok", "tree": f"tree{n}", "commit": f"c{n}"})
              for n in range(3)]
    here = search_id_of(Config).split("@")[0]
    recall = Recall.of([row(7 + k, here if parents == (1,) else "old", e, parents) for k, e in enumerate(effects)])
    parent = {"train.py": "LR = 0.04  # a rate\n"}
    judge = KnownIdeas(recall, Lineage(trials), Config, [1], [parent])
    judged = judge.judge({"train.py": "LR = 0.05   # faster\n"})
    assert (judged.verdict, judged.refuse) == (verdict, refused)
    assert f"{statistics.fmean(effects):+.4f}" in judged.reason() and "#7" in judged.reason()
    assert judge.judge({"train.py": "LR = 0.06\n"}) is None  # an idea the notebook does not know


def test_a_repeated_worse_idea_from_the_offline_proposer_is_drawn_again_not_trained(instant_project, monkeypatch):
    """Search b walks search a's path again (same seed, same genome): near the optimum the offline proposer's
    memory finds every move it draws measured worse, and picks the least bad one, which a measured. The
    engine draws again instead; the child's record says what was skipped and why, `evo status` counts it."""
    monkeypatch.setenv("EVO_TEST_NOISE", "0.002")  # a seed-dependent error, so the noise runs measure a floor
    a = searched(instant_project, "a", OfflineProposer(), 20)
    b = searched(instant_project, "b", OfflineProposer(), 24)
    try:
        book = Notebook.for_search(a.search)
        rows = book.ideas(search="a")
        floor = max(i.noise_sd for i in book.ideas() if i.noise_sd)
        by_move: dict[frozenset, list[float]] = {}
        for i in rows:
            if i.effect is not None and i.changes:
                by_move.setdefault(moves(i.move), []).append(i.effect)
        worse_in_a = {m for m, e in by_move.items() if statistics.fmean(e) < -auto_min_gain(floor) / len(e) ** 0.5}
        assert worse_in_a

        trials = b.search.trials()
        assert sum(1 for t in trials if t.spends_trial) == 24  # the skipped proposals spent none
        saved = [t for t in trials if t.attrs.get(SKIPPED_ATTR)]
        assert saved, "b repeats a's path: some proposal must have repeated an idea a measured worse"
        for t in saved:
            for entry in t.attrs[SKIPPED_ATTR]:
                assert entry["verdict"] == "worse" and entry["proposer"] == "offline"
                assert moves(entry["description"]) in worse_in_a, entry
                assert "measured worse beyond the noise" in entry["reason"] and "of search a" in entry["reason"]
        # What was trained in b: never an idea a had measured worse.
        trained = [t for t in trials if t.operator == "mutate" and t.number in b.runner.runs]
        assert trained and not [t.description for t in trained if moves(t.description) in worse_in_a]
        assert all(t.status == "ok" for t in saved)  # each skip was followed by a child that was trained

        summary = summarize(b.search)
        skipped = sum(len(t.attrs[SKIPPED_ATTR]) for t in saved)
        assert summary["known_ideas"] == {"trials_saved": len(saved), "skipped": skipped}
        assert f"known ideas: {len(saved)} trial(s) saved ({skipped} proposal(s)" in render_status(summary)
        shown = render_trial(b.search, saved[0].number)
        assert "skipped before this child" in shown and saved[0].attrs[SKIPPED_ATTR][0]["reason"] in shown
        # Moves a measured better are tried again in b, on b's own parents: new combinations, said so.
        repeats = [t for t in trials if t.attrs.get(REPEAT_ATTR)]
        assert any(t.attrs[REPEAT_ATTR]["verdict"] == "better" for t in repeats)
        assert "repeats a known idea" in render_trial(b.search, repeats[0].number)
    finally:
        closed(a, b)


QUARTER = ('    budget = float(os.environ.get("EVO_TIME_BUDGET", "1"))',
           '    budget = float(os.environ.get("EVO_TIME_BUDGET", "1")) / 4  # a quarter of the budget')


class QuarterTheBudget(Proposer):
    """Always the same code change to the instant genome: it trains on a quarter of its budget (worse)."""

    name = "scripted"
    remote = False

    def mutate(self, parent, ctx):
        return Proposal({"train.py": parent.files["train.py"].replace(*QUARTER)}, "train on a quarter of the budget")


def test_a_repeated_worse_idea_from_the_llm_is_sent_back_with_what_was_measured_and_the_extra_turn_is_paid(
        instant_project, monkeypatch):
    from fake_llm import FakeServer, anthropic_reply, proposal
    from evo.proposers import AnthropicProposer
    from evo.proposers._pricing import DEFAULT_PRICES

    monkeypatch.setenv("EVO_TEST_NOISE", "0.001")
    a = searched(instant_project, "a", QuarterTheBudget(), 4)  # seed, two noise runs, the worse idea: #3
    assert a.search.trials()[3].value > a.search.trials()[0].value + 0.01
    # The same change reformatted (spacing, no comment): still the idea a measured worse.
    again = ('budget = float(os.environ.get("EVO_TIME_BUDGET", "1"))',
             'budget = float( os.environ.get("EVO_TIME_BUDGET", "1") )/4')
    script = [anthropic_reply(proposal("use a quarter of the budget", [("train.py", *again)])),
              anthropic_reply(proposal("lower LR 0.04 -> 0.03", [("train.py", "LR = 0.04", "LR = 0.03")]))]
    with FakeServer(script) as server:
        llm = AnthropicProposer(api_key="sk-ant-test", base_url=server.url, model="claude-sonnet-5-5", max_retries=0)
        b = searched(instant_project, "b", llm, 2, noise_runs=0)
    try:
        trials = b.search.trials()
        child = trials[1]
        assert (child.status, child.description) == ("ok", "lower LR 0.04 -> 0.03") and b.runner.runs == [0, 1]
        [skipped] = child.attrs[SKIPPED_ATTR]
        assert (skipped["description"], skipped["verdict"], skipped["proposer"]) == (
            "use a quarter of the budget", "worse", "anthropic")
        effect = Notebook.for_search(a.search).ideas(search="a")[0].effect
        assert f"{effect:+.4f}" in skipped["reason"] and "#3 of search a" in skipped["reason"]

        first, second = server.received  # one conversation: the answer was sent back, once
        assert len(second.body["messages"]) == len(first.body["messages"]) + 2
        sent_back = second.body["messages"][-1]["content"][0]
        assert sent_back["type"] == "tool_result" and sent_back["is_error"] is True
        assert "repeats an idea the lab notebook has already measured" in sent_back["content"]
        assert skipped["reason"] in sent_back["content"]  # what was measured: the effect, where, the noise

        usage = child.attrs["usage"]
        assert usage["calls"] == 2 and usage["input_tokens"] == 2000 and usage["output_tokens"] == 400
        one = DEFAULT_PRICES["claude-sonnet-5-5"].cost(input_tokens=1000, output_tokens=200)
        assert usage["cost_usd"] == pytest.approx(2 * one)
        assert b.search.store.ledger.spend_usd == pytest.approx(2 * one)
        assert "asked again: a known idea" in b.search.paths.trial(1).artifact("prompt.md").read_text()
    finally:
        closed(a, b)
    status = run_evo("status", "b", "--json", cwd=instant_project)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["known_ideas"] == {"trials_saved": 1, "skipped": 1}
    shown = run_evo("show", "b", "1", cwd=instant_project)
    assert "skipped before this child: 1 proposal(s)" in shown.stdout and "use a quarter of the budget" in shown.stdout
