"""Optuna's samplers as proposers (`--proposer tpe`, `cmaes`, `gp`): what a sampler child may change,
which trials a sampler conditions on, and the run end to end through `evo run`."""

from __future__ import annotations

import pytest

from conftest import run_evo
from evo import Engine, GreedyStrategy, LimitSpec, RunOptions, create_search
from evo.proposers import (FAMILY_ATTR, MixedProposer, Proposal, Proposer, SamplerProposer, code_family,
                           tunable_numbers)
from evo.proposers._hyperparams import hyperparameter_values
from evo.proposers._ranges import knob_for, override_of
from in_process import InstantRunner


def drive(engine):
    while (ticket := engine.ask()) is not None:
        engine.tell(ticket, engine.run(ticket))


def searched(project, proposer, trials: int, name: str = "s"):
    search = create_search(name, root=project / "runs", project=project, profile="tiny", budget=1)
    engine = Engine(search, GreedyStrategy(), proposer, RunOptions(limits=LimitSpec(trials=trials)), runner=InstantRunner())
    drive(engine)
    engine.close()
    return search


class CodeWriter(Proposer):
    """Writes new code (a helper function) into the parent, constants untouched: a stand-in for an LLM's change."""

    name = "writer"
    remote = False

    def mutate(self, parent, ctx):
        text = parent.files["train.py"]
        n = text.count("def helper_")
        return Proposal({**parent.files, "train.py": text + f"\n\ndef helper_{n}():\n    return {n}\n"}, f"helper {n}")

    crossover = None


@pytest.mark.parametrize("kind", ["tpe", "cmaes", "gp"])
def test_a_sampler_child_differs_from_its_parent_only_in_constants_within_their_ranges(instant_project, kind):
    search = searched(instant_project, SamplerProposer(kind), trials=8)
    trials = {t.number: t for t in search.trials()}
    children = [t for t in trials.values() if t.operator == "mutate"]
    assert len(children) == 7 and all(t.status == "ok" for t in children)
    for t in children:
        parent = search.repo.files(trials[t.parents[0]].commit, ["train.py"])
        child = search.repo.files(t.commit, ["train.py"])
        assert child != parent
        assert code_family(child, ["train.py"], "tiny") == code_family(parent, ["train.py"], "tiny")
        assert t.attrs[FAMILY_ATTR] == trials[t.parents[0]].attrs[FAMILY_ATTR]
        knobs = {k.name: k for u in tunable_numbers(search.repo.files(trials[0].commit, ["train.py"]), ["train.py"], "tiny")
                 for k in u.knobs}
        for name, value in hyperparameter_values(child, "tiny").items():
            assert knobs[name].inside(value) is not None, (name, value)
        assert t.attrs["wrote"] == {"code": "seed", "constants": kind}
    search.close()


def test_a_sampler_conditions_on_its_parents_code_family_only(instant_project):
    proposer = MixedProposer([(SamplerProposer("tpe"), 1.0), (CodeWriter(), 1.0)])
    search = searched(instant_project, proposer, trials=14)
    trials = sorted(search.trials(), key=lambda t: t.number)
    families = {t.attrs[FAMILY_ATTR] for t in trials}
    sampled = [t for t in trials if t.proposer == "tpe"]
    assert len(families) >= 2 and sampled
    by_number = {t.number: t for t in trials}
    for t in sampled:
        family = by_number[t.parents[0]].attrs[FAMILY_ATTR]
        before = [u for u in trials if u.number < t.number and u.finished_ok]
        mine = [u for u in before if u.attrs[FAMILY_ATTR] == family]
        assert t.attrs["sampler_conditioned"] == len(mine)
        assert t.attrs[FAMILY_ATTR] == family
    assert any(t.attrs["sampler_conditioned"] < sum(1 for u in trials if u.number < t.number and u.finished_ok)
               for t in sampled)   # trials of another family were there and left out
    search.close()


def test_ranges_follow_a_constants_kind_and_a_users_comment():
    assert knob_for("TOTAL_BATCH_SIZE", 2 ** 11).distribution.low == 9   # powers of two: exponents 9..13
    assert knob_for("DEPTH", 2).distribution.high == 4
    lr = knob_for("MATRIX_LR", 0.04).distribution
    assert lr.log and lr.low == pytest.approx(0.004) and lr.high == pytest.approx(0.4)
    assert knob_for("WARMUP_RATIO", 0.0).distribution.high == 1.0
    assert knob_for("MUON_MOMENTUM", 0.95).value(0.2) == 0.8
    spec = override_of("LR = 0.04  # a rate  evo: log 1e-3..0.3")
    d = knob_for("LR", 0.04, spec).distribution
    assert d.log and (d.low, d.high) == (1e-3, 0.3)
    assert knob_for("LR", 0.04, "fixed") is None


def test_proposer_tpe_runs_end_to_end_through_evo_run(project):
    done = run_evo("run", "t", "--proposer", "tpe", "--trials", "3", "--profile", "tiny", "--budget", "2", "--quiet",
                   cwd=project)
    assert done.returncode == 0, done.stderr[-2000:]
    from evo import Search
    with Search.open("t", root=project / "runs") as search:
        children = [t for t in search.trials() if t.operator == "mutate"]
        assert children and all(t.proposer == "tpe" and t.attrs["wrote"]["constants"] == "tpe" for t in children)
        assert any(t.status == "ok" for t in children)
