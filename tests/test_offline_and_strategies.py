"""The offline proposer's edits and the strategies' choices, on hand-built lineages."""

from __future__ import annotations

import random

import pytest

from conftest import ROOT
from evo.proposers import Genome, OfflineProposer, ProposalContext
from evo.proposers._hyperparams import find_hyperparameters, format_value, mutate_value, rewrite
from evo.strategies import EvolveStrategy, GreedyStrategy, NoParentError, RandomStrategy
from evo.targets import HarnessTarget
from population import Lineage, genome_hash
from population.search import SearchConfig
from test_population import rec

SEED = (ROOT / "train.py").read_text()


def ctx(seed=0, known=(), profile="tiny", seq_len=128) -> ProposalContext:
    known = set(known)
    # What the loop hands a proposer: the harness target's settings (its knob invariant included).
    config = SearchConfig(name="t", profile=profile, budget=2.0, mutable=["train.py"], data="", seq_len=seq_len)
    return ProposalContext(program="", mutable=["train.py"], settings=HarnessTarget(config).proposer_settings(),
                           lineage=Lineage([]), rng=random.Random(seed),
                           is_known=lambda files: genome_hash(files) in known)


def changed_lines(a: str, b: str) -> list[tuple[str, str]]:
    return [(x, y) for x, y in zip(a.splitlines(), b.splitlines()) if x != y]


def test_hyperparameters_of_the_seed_are_found_per_profile():
    tiny = find_hyperparameters(SEED, "tiny")
    gpu = find_hyperparameters(SEED, "gpu")
    assert tiny["DEPTH"].value == 2 and gpu["DEPTH"].value == 8
    assert tiny["MATRIX_LR"].value == 0.04 and tiny["ADAM_BETAS"].value == (0.8, 0.95)
    assert gpu["TOTAL_BATCH_SIZE"].value == 2**19 and gpu["TOTAL_BATCH_SIZE"].text == "2**19"
    assert tiny["WINDOW_PATTERN"].value == "L"
    assert "POLAR_EXPRESS" not in tiny  # a table, not a knob


def test_rewrite_changes_only_the_value_and_keeps_its_style():
    new = rewrite(SEED, {"DEPTH": 3, "MATRIX_LR": 0.05, "TOTAL_BATCH_SIZE": 2**12}, "tiny")
    diff = changed_lines(SEED, new)
    assert len(diff) == 3
    assert ("DEPTH = per_profile(tiny=3, cpu=4, gpu=8)" in diff[0][1])          # only tiny's keyword
    assert any(b.startswith("MATRIX_LR = 0.05         # transformer matrices") for _, b in diff)  # comment kept
    assert any("tiny=2**12" in b for _, b in diff)
    assert format_value("SSL", '"L"') == '"SSL"' and format_value(0.5) == "0.5" and format_value(1.0) == "1.0"


@pytest.mark.parametrize("name,value,check", [
    ("DEPTH", 8, lambda v: v in (7, 9)),
    ("HEAD_DIM", 32, lambda v: v in (16, 64)),
    ("MATRIX_LR", 0.04, lambda v: v != 0.04 and 0.01 < v < 0.1),
    ("WARMDOWN_RATIO", 0.5, lambda v: 0.0 <= v <= 1.0 and v != 0.5),
    ("MUON_MOMENTUM", 0.95, lambda v: 0.8 < v < 1.0 and v != 0.95),
    ("FINAL_LR_FRAC", 0.0, lambda v: 0 < v <= 0.2),
    ("ADAM_BETAS", (0.8, 0.95), lambda v: len(v) == 2 and v != (0.8, 0.95)),
    ("WINDOW_PATTERN", "L", lambda v: v != "L" and set(v) <= set("SL")),
    ("USE_X", True, lambda v: v is False),
])
def test_mutations_respect_the_kind_of_value(name, value, check):
    for seed in range(20):
        assert check(mutate_value(name, value, random.Random(seed)))


def test_offline_mutation_is_reproducible_small_and_described():
    parent = Genome(trial=0, commit="c0", files={"train.py": SEED})
    a = OfflineProposer().mutate(parent, ctx(seed=5))
    b = OfflineProposer().mutate(parent, ctx(seed=5))
    assert a.ok and a.files == b.files and a.description == b.description
    diff = changed_lines(SEED, a.files["train.py"])
    assert 1 <= len(diff) <= 2
    assert " -> " in a.description
    name = a.description.split()[0]
    assert any(line.startswith(name) for _, line in diff)


def test_offline_mutation_never_proposes_a_known_genome_and_keeps_batches_whole():
    parent = Genome(trial=0, commit="c0", files={"train.py": SEED})
    known = {genome_hash(parent.files)}
    proposer = OfflineProposer()
    for seed in range(40):
        p = proposer.mutate(parent, ctx(seed=seed, known=known))
        assert p.ok and genome_hash(p.files) not in known
        params = find_hyperparameters(p.files["train.py"], "tiny")
        assert params["TOTAL_BATCH_SIZE"].value % (params["DEVICE_BATCH_SIZE"].value * 128) == 0
        known.add(genome_hash(p.files))


def test_offline_crossover_takes_each_constant_from_a_parent_and_merges_other_code():
    base = SEED
    a = rewrite(base, {"MATRIX_LR": 0.05, "DEPTH": 3}, "tiny")
    b = rewrite(base, {"MATRIX_LR": 0.03, "WARMDOWN_RATIO": 0.3}, "tiny")
    b = b.replace("def lr_multiplier(progress):", "def lr_multiplier(progress):\n    # a code change only parent b has")
    proposal = OfflineProposer().crossover(Genome(1, "c1", {"train.py": a}), Genome(2, "c2", {"train.py": b}),
                                           Genome(0, "c0", {"train.py": base}), ctx(seed=1))
    assert proposal.ok and proposal.description.startswith("cross #1 x #2")
    child = find_hyperparameters(proposal.files["train.py"], "tiny")
    assert child["MATRIX_LR"].value in (0.05, 0.03)
    assert child["DEPTH"].value == 3 and child["WARMDOWN_RATIO"].value == 0.3   # changes on one side only carry over
    assert "# a code change only parent b has" in proposal.files["train.py"]
    assert "<<<<<<<" not in proposal.files["train.py"]


def test_offline_crossover_falls_back_to_the_first_parent_on_a_code_conflict():
    base = SEED
    a = base.replace("def muon_momentum(step):", "def muon_momentum(step):\n    # version A")
    b = base.replace("def muon_momentum(step):", "def muon_momentum(step):\n    # version B")
    a = rewrite(a, {"MATRIX_LR": 0.05}, "tiny")
    proposal = OfflineProposer().crossover(Genome(1, "c1", {"train.py": a}), Genome(2, "c2", {"train.py": b}),
                                           Genome(0, "c0", {"train.py": base}), ctx(seed=2))
    assert proposal.ok
    assert "# version A" in proposal.files["train.py"] and "# version B" not in proposal.files["train.py"]
    assert "conflicts, kept #1's" in proposal.description


# -- strategies ------------------------------------------------------------------------

def population():
    return Lineage([rec(0, 3.0, op="seed"), rec(1, 2.5, [0]), rec(2, 2.7, [0]), rec(3, 2.4, [1]),
                    rec(4, 2.6, [2]), rec(5, None, [3], status="crash"), rec(6, 1.0, [3], feasible=False)])


def test_greedy_always_mutates_the_best_feasible_genome():
    plan = GreedyStrategy().plan(population(), random.Random(0))
    assert plan.operator == "mutate" and plan.parents == (3,)
    assert GreedyStrategy.prefetch is False


def test_random_always_mutates_the_seed():
    for seed in range(5):
        assert RandomStrategy().plan(population(), random.Random(seed)).parents == (0,)


def test_strategies_need_a_successful_genome():
    lineage = Lineage([rec(0, None, op="seed", status="crash")])
    for strategy in (GreedyStrategy(), RandomStrategy(), EvolveStrategy()):
        with pytest.raises(NoParentError):
            strategy.plan(lineage, random.Random(0))


def test_evolve_selects_from_elites_by_tournament():
    strategy = EvolveStrategy(elite=3, tournament=2, crossover_rate=0.0)
    parents = [strategy.plan(population(), random.Random(s)).parents[0] for s in range(200)]
    assert set(parents) <= {3, 1, 4}                 # the three best feasible genomes
    # Pairs drawn from three: the best wins 2 of 3 pairs, the second 1 of 3, the worst elite never.
    assert parents.count(3) > parents.count(1) > 0 and parents.count(4) == 0
    full = EvolveStrategy(elite=3, tournament=3, crossover_rate=0.0)
    assert {full.plan(population(), random.Random(s)).parents[0] for s in range(20)} == {3}


def test_evolve_crosses_only_genomes_of_different_lineages():
    strategy = EvolveStrategy(elite=5, tournament=2, crossover_rate=1.0)
    lineage = population()
    seen = set()
    for s in range(100):
        plan = strategy.plan(lineage, random.Random(s))
        if plan.operator == "crossover":
            a, b = plan.parents
            assert not lineage.related(a, b)
            seen.add(frozenset(plan.parents))
    assert seen  # e.g. 3 (from 1) with 2 or 4 (from 2)


def test_evolve_crossing_from_the_best_brings_other_lines_into_the_best_genome():
    strategy = EvolveStrategy(elite=5, tournament=1, crossover_rate=1.0, cross_from="best")
    lineage = population()                                  # best: 3 (from 1); unrelated to it: 2 and 4
    plans = [strategy.plan(lineage, random.Random(s)) for s in range(60)]
    assert {p.operator for p in plans} == {"crossover"}
    assert {p.parents[0] for p in plans} == {3} and {p.parents[1] for p in plans} == {2, 4}
    assert EvolveStrategy(cross_from="best").options()["cross_from"] == "best"
    mutations = EvolveStrategy(elite=3, tournament=2, crossover_rate=0.0, cross_from="best")
    assert {mutations.plan(lineage, random.Random(s)).parents[0] for s in range(60)} == {3, 1}   # still tournaments


def test_evolve_islands_keep_children_with_their_island():
    trials = [rec(0, 3.0, op="seed"), rec(1, 2.0, [0], island=0), rec(2, 2.9, [0], island=1)]
    strategy = EvolveStrategy(elite=4, tournament=4, crossover_rate=0.0, islands=2, migration_rate=0.0)
    plan = strategy.plan(Lineage(trials), random.Random(0))   # 3 trials -> island 1
    assert plan.island == 1 and plan.parents == (2,)          # island 1 does not see island 0's better genome


def test_evolve_rejects_bad_parameters():
    with pytest.raises(ValueError):
        EvolveStrategy(crossover_rate=1.5)
    with pytest.raises(ValueError):
        EvolveStrategy(elite=0)
    with pytest.raises(ValueError):
        EvolveStrategy(cross_from="anyone")
