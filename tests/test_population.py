"""The data layer: genomes in a real git repository, trials in a real Optuna storage, lineage from records."""

from __future__ import annotations

import os
import subprocess

import optuna
import pytest

from population import GenomeRepo, Lineage, TrialRecord, TrialStore, genome_hash, merge_texts
from population._trial_cache import REREAD_AFTER


@pytest.fixture
def repo(tmp_path):
    r = GenomeRepo.init(tmp_path / "population.git")
    yield r
    r.close()


def test_genome_hash_equals_gits_tree_hash_for_flat_and_nested_files(repo):
    for files in ({"train.py": "x = 1\n"}, {"train.py": "a\n", "model/gpt.py": "b\n", "model/opt.py": "c\n", "z.py": ""}):
        assert genome_hash(files) == repo.write_tree(files)


def test_commits_record_genetic_parents_as_git_parents(repo):
    seed = repo.commit({"train.py": "LR = 1\n"}, parents=[], message="seed")
    a = repo.commit({"train.py": "LR = 2\n"}, parents=[seed], message="a")
    b = repo.commit({"train.py": "LR = 3\n"}, parents=[seed], message="b")
    child = repo.commit({"train.py": "LR = 4\n"}, parents=[a, b], message="cross")
    assert repo.parents(child) == [a, b]
    assert repo.merge_base(a, b) == seed
    assert repo.merge_base(seed, child) == seed and repo.merge_base(a, child) == a
    assert repo.files(child) == {"train.py": "LR = 4\n"}
    repo.set_branch("evo/demo/3", child)
    assert repo.has_branch("evo/demo/3") and not repo.has_branch("evo/demo/4")
    assert "-LR = 2" in repo.diff(a, child) and "+LR = 4" in repo.diff(a, child)


def test_checkout_into_worktree_replaces_previous_genome_and_leftovers(repo, tmp_path):
    one = repo.commit({"train.py": "one\n"}, parents=[], message="1")
    two = repo.commit({"train.py": "two\n"}, parents=[one], message="2")
    wt = repo.checkout(tmp_path / "wt", one)
    (wt / "leftover.txt").write_text("junk")
    (wt / "train.py").write_text("edited")
    repo.checkout(tmp_path / "wt", two)
    assert (wt / "train.py").read_text() == "two\n"
    assert not (wt / "leftover.txt").exists()


def test_checkout_starts_from_an_empty_tree_whatever_the_last_trial_hid(repo, tmp_path):
    one = repo.commit({"train.py": "one\n"}, parents=[], message="1")
    wt = repo.checkout(tmp_path / "wt", one)
    subprocess.run(["git", "init", "-q", str(wt / "stash")], check=True)  # git clean -fdx keeps nested repositories
    (wt / "stash" / "weights.pt").write_text("weights")
    os.mkfifo(wt / "zz_notes.py")                                           # and named pipes
    (wt / ".evo" / "locked").mkdir(parents=True)
    (wt / ".evo" / "locked" / "weights.pt").write_text("weights")
    (wt / ".evo" / "locked").chmod(0)
    repo.checkout(tmp_path / "wt", one)
    assert sorted(p.name for p in wt.iterdir()) == [".git", "train.py"]
    assert (wt / "train.py").read_text() == "one\n"


def test_merge_texts_merges_disjoint_edits_and_marks_conflicts():
    base = "a = 1\nb = 2\nc = 3\n"
    merged, conflict = merge_texts(base, "a = 10\nb = 2\nc = 3\n", "a = 1\nb = 2\nc = 30\n")
    assert not conflict and merged == "a = 10\nb = 2\nc = 30\n"
    merged, conflict = merge_texts(base, "a = 10\nb = 2\nc = 3\n", "a = 20\nb = 2\nc = 3\n", labels=("#1", "base", "#2"))
    assert conflict and "<<<<<<< #1" in merged and ">>>>>>> #2" in merged


def test_merge_texts_answers_one_sided_and_identical_edits_as_git_would(tmp_path):
    base, edit = "a = 1\nb = 2\n", "a = 1\nb = 20\n"
    for ours, theirs in ((edit, edit), (base, edit), (edit, base), (base, base)):
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            (tmp_path / name).write_text(text)
            paths.append(str(tmp_path / name))
        git = subprocess.run(["git", "merge-file", "-p", *paths], capture_output=True, text=True)
        assert merge_texts(base, ours, theirs) == (git.stdout, False) and git.returncode == 0


def test_store_round_trips_attrs_states_and_constraints(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = TrialStore.create(url, "demo", {"profile": "tiny"})
    n0 = store.start({"operator": "seed", "commit": "c0", "parents": []})
    store.finish(n0, status="ok", value=2.5, metrics={"val_bpb": 2.5}, constraints={"vram_gb": -1.0})
    n1 = store.start({"operator": "mutate", "commit": "c1", "parents": [n0]})
    store.finish(n1, status="crash", error="boom")
    n2 = store.start({"operator": "mutate", "commit": "c2", "parents": [n0]})
    store.finish(n2, status="ok", value=2.4, constraints={"vram_gb": 0.5})
    n3 = store.start({"operator": "mutate", "parents": [n0]})
    reopened = TrialStore.open(url, "demo")
    assert reopened.config == {"profile": "tiny"}
    t = {r.number: r for r in reopened.trials()}
    assert (t[n0].state, t[n0].value, t[n0].feasible, t[n0].metrics) == ("COMPLETE", 2.5, True, {"val_bpb": 2.5})
    assert (t[n1].state, t[n1].status, t[n1].error, t[n1].value) == ("FAIL", "crash", "boom", None)
    assert t[n2].feasible is False
    assert t[n3].status == "running" and not t[n3].counts
    orphans = reopened.orphans.fail_running()
    assert [o.number for o in orphans] == [n3]
    t3 = {r.number: r for r in reopened.trials()}[n3]
    assert (t3.state, t3.status, t3.counts) == ("FAIL", "interrupted", False)


def test_store_spend_accumulates(tmp_path):
    store = TrialStore.create(f"sqlite:///{tmp_path / 's.db'}", "s", {})
    store.ledger.add_spend(0.25)
    assert store.ledger.add_spend(0.5) == pytest.approx(0.75)
    assert TrialStore.open(f"sqlite:///{tmp_path / 's.db'}", "s").ledger.spend_usd == pytest.approx(0.75)


def test_store_works_on_a_journal_file_too(tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    store = TrialStore.create(storage, "j", {"profile": "tiny"})
    n = store.start({"operator": "seed"})
    store.finish(n, status="ok", value=1.0)
    assert [r.value for r in TrialStore.open(storage, "j").trials()] == [1.0]


def test_store_report_prunes_a_trial_clearly_behind_the_others(tmp_path):
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=10)
    store = TrialStore.create(f"sqlite:///{tmp_path / 'p.db'}", "p", {})
    store.pruner = pruner
    for _ in range(3):
        n = store.start({})
        for step in range(0, 60, 10):
            assert store.report(n, step, 3.0 - step / 100) is False
        store.finish(n, status="ok", value=2.4)
    n = store.start({})
    assert store.report(n, 5, 9.0) is False     # inside the warm-up: never pruned
    assert store.report(n, 20, 9.0) is True     # far behind the median at 20% of the budget
    assert store.report(n, 20, 1.0) is False    # one value per step
    store.finish(n, status="pruned")
    assert store.trials()[-1].state == "PRUNED"


def rec(n, value=None, parents=(), op="mutate", tree=None, status="ok", feasible=True, island=0):
    state = "COMPLETE" if value is not None and status in ("ok", "duplicate") else ("RUNNING" if status == "running" else "FAIL")
    return TrialRecord(number=n, state=state, value=value if state == "COMPLETE" else None,
                       attrs={"operator": op, "parents": list(parents), "tree": tree or f"t{n}", "commit": f"c{n}",
                              "status": status, "island": island, "description": f"trial {n}"},
                       constraints={} if feasible else {"vram_gb": 1.0})


def test_lineage_ranks_genomes_by_mean_over_reevaluations():
    trials = [rec(0, 3.0, op="seed"), rec(1, 2.0, [0]), rec(2, 2.2, [0]),
              rec(3, 2.6, [1], op="reeval", tree="t1"), rec(4, 2.5, [1], op="reeval", tree="t1")]
    lineage = Lineage(trials)
    one = lineage.individual(1)
    assert one.values == [2.0, 2.6, 2.5] and one.score == pytest.approx(7.1 / 3)
    assert one.spread == pytest.approx(0.3214550253664318)
    assert [i.trial for i in lineage.ranked()] == [2, 1, 0]   # 2.2 < mean(2.0, 2.6, 2.5) = 2.367
    assert lineage.best.trial == 2
    assert lineage.individual(3) is one


def test_lineage_excludes_infeasible_failed_and_duplicate_trials_from_ranking():
    trials = [rec(0, 3.0, op="seed"), rec(1, 1.0, [0], feasible=False), rec(2, None, [0], status="crash"),
              rec(3, 2.0, [0], status="duplicate", tree="t0"), rec(4, 2.9, [0])]
    lineage = Lineage(trials)
    assert [i.trial for i in lineage.ranked()] == [4, 0]
    assert [i.trial for i in lineage.ranked(feasible_only=False)] == [1, 4, 0]
    assert lineage.individual(0).values == [3.0]  # a duplicate reuses a result, it is not a new evaluation


def test_lineage_ancestry_follows_both_parents_of_a_crossover():
    trials = [rec(0, 3.0, op="seed"), rec(1, 2.9, [0]), rec(2, 2.8, [0]), rec(3, 2.7, [1]),
              rec(4, 2.6, [3, 2], op="crossover"), rec(5, 2.5, [4])]
    lineage = Lineage(trials)
    assert lineage.ancestors(5) == {4, 3, 2, 1, 0}
    assert lineage.related(5, 2) and not lineage.related(3, 2)
    assert lineage.path_to(5) == [0, 1, 3, 4, 5]


def test_store_reads_only_what_changed_and_still_sees_every_trial_as_a_full_read_does(tmp_path):
    """Finished trials are read once and kept; another process's new, running and finished trials still show."""
    url = f"sqlite:///{tmp_path / 'i.db'}"
    writer = TrialStore.create(url, "i", {})
    reader = TrialStore.open(url, "i")

    def same() -> None:
        full = TrialStore.open(url, "i").trials()
        got = reader.trials()
        assert [(t.number, t.state, t.value, t.attrs) for t in got] == [(t.number, t.state, t.value, t.attrs) for t in full]

    same()
    a = writer.start({"operator": "seed"})
    same()
    writer.finish(a, status="ok", value=2.0)
    b, c = writer.start({"operator": "mutate"}), writer.start({"operator": "mutate"})
    same()
    writer.set_attrs(b, {"pid": 42})        # a running trial's attributes change: seen on the next read
    writer.finish(c, status="crash", error="boom")
    d = writer.start({"operator": "crossover"})
    same()
    writer.finish(b, status="ok", value=1.5)
    writer.finish(d, status="pruned")
    same()
    assert [t.status for t in reader.trials()] == ["ok", "ok", "crash", "pruned"]
    # Many trials written elsewhere since the last read (a worker resuming far behind): read again at once,
    # with one running among them and the ones before it all seen.
    for i in range(REREAD_AFTER + 20):
        writer.finish(writer.start({"operator": "mutate", "i": i}), status="ok", value=1.0 + i)
    e = writer.start({"operator": "mutate"})
    for i in range(5):
        writer.finish(writer.start({"operator": "mutate", "j": i}), status="ok", value=0.5)
    same()
    assert len(reader.trials()) == 4 + REREAD_AFTER + 20 + 1 + 5 and reader.trials()[e].state == "RUNNING"


@pytest.fixture(scope="module")
def postgres_url():
    """A database in a throw-away PostgreSQL cluster (skipped, with the reason, where none can start)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[postgres]'")
    from services import Postgres, Unavailable
    try:
        pg = Postgres().start()
    except Unavailable as e:
        pytest.skip(str(e))
    yield pg.create_database("reads")
    pg.destroy()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_first_read_of_a_search_gives_what_optunas_own_read_gives(tmp_path, backend, request):
    """The store reads a study's trials with plain SQL at first (population._sql_trials: Optuna's own read
    builds an ORM object per row, ~10x slower on a long search); trial for trial, it is Optuna's answer."""
    from population._sql_trials import read_all_trials
    url = f"sqlite:///{tmp_path / 'r.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    other = TrialStore.create(url, "other", {})   # another study in the same file: none of its trials shows
    other.finish(other.start({"operator": "seed"}), status="ok", value=9.0)
    store = TrialStore.create(url, "s", {})
    store.pruner = optuna.pruners.NopPruner()
    n0 = store.start({"operator": "seed", "parents": [], "provenance": {"sandbox": "bwrap", "probe_batches": 2}},
                     params={"LR": 0.01, "DEPTH": 4, "USE_BIAS": True, "WINDOW": (2, 8)})
    for step in (10, 20):
        store.report(n0, step, 3.0 - step / 100)
    store.finish(n0, status="ok", value=2.5, metrics={"val_bpb": 2.5}, constraints={"vram_gb": -1.0})
    store.finish(store.start({"operator": "mutate", "parents": [n0]}, params={"LR": 0.02}), status="crash", error="x")
    store.finish(store.start({"operator": "mutate", "parents": [n0]}), status="pruned")
    store.start({"operator": "mutate", "parents": [n0], "description": "still running"})
    store.study.add_trial(optuna.trial.create_trial(value=float("inf"), intermediate_values={0: float("-inf"), 5: 1.0},
                                                    user_attrs={"operator": "reeval", "note": None}))
    study_id = store.storage.get_study_id_from_name("s")

    ours, optunas = read_all_trials(store.storage, study_id), store.storage.get_all_trials(study_id, deepcopy=False)
    assert [t.state.name for t in optunas] == ["COMPLETE", "FAIL", "PRUNED", "RUNNING", "COMPLETE"]
    assert optunas[0].params and optunas[0].intermediate_values and optunas[0].system_attrs
    assert ours == optunas
    assert [(t.number, t.state, t.value, t.attrs, t.constraints, t.started, t.finished)
            for t in TrialStore.open(url, "s").trials()] == \
        [(t.number, t.state.name, t.value if t.state.name == "COMPLETE" else None, t.user_attrs,
          {"vram_gb": -1.0} if t.number == 0 else {}, t.datetime_start, t.datetime_complete) for t in optunas]


def _reads_of_a_growing_search(rng, steps: int, slots: int):
    """What the store hands out as a search grows: each read, every trial in number order; a finished
    trial's record is the same object from one read to the next, a running one's a new one each time."""
    import datetime as dt
    t0 = dt.datetime(2026, 1, 1)
    finished: dict[int, TrialRecord] = {}
    running: dict[int, dict] = {}
    clock, number = 0, 0
    for _ in range(steps):
        while len(running) < slots:
            tree = f"g{rng.randrange(number + 1)}" if number and rng.random() < 0.3 else f"g{number}"
            operator = "seed" if number == 0 else ("reeval" if rng.random() < 0.2 else
                                                   "promote" if rng.random() < 0.1 else "mutate")
            running[number] = {"operator": operator, "parents": [rng.randrange(number)] if number else [],
                               "tree": tree, "commit": "c" + tree, "rung": 1, "min_gain": rng.choice((0.0, 0.05))}
            number += 1
        done = rng.choice(sorted(running))  # any running trial may finish next, not the oldest
        clock += 1
        attrs = running.pop(done)
        value = None if rng.random() < 0.15 else round(2 - 0.01 * done + rng.gauss(0, 0.05), 4)
        status = rng.choice(("ok", "ok", "ok", "interrupted")) if value is not None else "crash"
        finished[done] = TrialRecord(number=done, state="COMPLETE" if value is not None else "FAIL", value=value,
                                     attrs={**attrs, "status": status},
                                     constraints={"vram_gb": 1.0} if rng.random() < 0.1 else {},
                                     finished=t0 + dt.timedelta(seconds=clock))
        records = dict(finished)
        records.update({n: TrialRecord(number=n, state="RUNNING", value=None, attrs=dict(a)) for n, a in running.items()})
        yield [records[n] for n in sorted(records)]


@pytest.mark.parametrize("seed", range(6))
def test_a_lineage_built_on_the_last_one_is_the_lineage_built_afresh(seed):
    import random
    rng = random.Random(seed)
    previous = None
    for trials in _reads_of_a_growing_search(rng, 120, slots=1 + seed % 3):
        if rng.random() < 0.2:
            Lineage(trials).history()   # a replay that was never run is not built on
        grown, fresh = Lineage(trials, previous=previous), Lineage(trials)
        assert [vars(i) for i in grown.individuals] == [vars(i) for i in fresh.individuals]
        assert (grown.best and grown.best.trial) == (fresh.best and fresh.best.trial)
        assert [(r.trial.number, r.best, r.kept) for r in grown.history()] == \
               [(r.trial.number, r.best, r.kept) for r in fresh.history()]
        assert all(grown.individual(t.number) == fresh.individual(t.number) for t in trials)
        assert grown.would_keep(1.5, operator="mutate", feasible=True) == fresh.would_keep(1.5, operator="mutate",
                                                                                         feasible=True)
        if previous is not None:   # and the lineage it was built on is as it was
            again = Lineage(previous.trials)
            assert [vars(i) for i in previous.individuals] == [vars(i) for i in again.individuals]
        previous = grown if rng.random() < 0.9 else fresh


def test_one_status_vocabulary_reads_old_records_and_writes_plain_strings(tmp_path):
    import json

    from population.store import DUPLICATE, INTERRUPTED, INVALID, OK, TrialStatus
    from evo.runner import STATUSES
    assert {OK, DUPLICATE, INTERRUPTED, INVALID} | set(STATUSES) <= set(TrialStatus)
    store = TrialStore.create(f"sqlite:///{tmp_path}/s.db", "s", {})
    n = store.start({"operator": "seed"})
    store.finish(n, status=OK, value=1.0)
    t = store.trials()[0]
    assert t.status == "ok" and TrialStatus(t.status) is TrialStatus.OK
    assert json.dumps({"status": TrialStatus.INVALID_PROPOSAL}) == '{"status": "invalid_proposal"}'
    store.close()
