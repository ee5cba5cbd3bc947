"""The lab notebook (population.notebook), what proposers learn from it, and `evo ideas` (issue 23)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_evo
from test_hosts import database, postgres  # noqa: F401  (fixtures: a PostgreSQL database per test)
from evo.proposers import Genome, OfflineProposer, ProposalContext
from population import Lineage
from population.notebook import FILE, Change, Idea, Notebook, Recall

SEED = (ROOT / "train.py").read_text()


def idea(trial: int, changes: tuple[Change, ...], effect: float, *, search="old", noise_sd=None) -> Idea:
    return Idea(search_id=f"{search}@t", trial=trial, search=search, task="t", profile="tiny", budget=1.0,
                metric="val_bpb", direction="minimize", operator="mutate", proposer="offline", parents=(0,),
                description=", ".join(str(c) for c in changes), changes=changes, parent_score=2.0,
                score=2.0 - effect, effect=effect, noise_sd=noise_sd, status="ok")


def ctx(seed: int, memory: Recall | None) -> ProposalContext:
    return ProposalContext(program="", mutable=["train.py"], settings={"profile": "tiny", "seq_len": 128},
                           lineage=Lineage([]), rng=random.Random(seed), memory=memory)


@pytest.mark.parametrize("noise_sd", [0.005, None])
def test_the_offline_proposer_does_not_try_a_third_time_a_move_measured_worse_twice(noise_sd):
    """The quick start's `HEAD_DIM 32 -> 16`, worse each of three times (issue 23): with two measurements
    in the notebook, beyond its noise floor (or both worse where no floor was measured), the proposer
    stops drawing it."""
    worse = Change("HEAD_DIM", 32, 16)
    memory = Recall.of([idea(1, (worse,), -0.05, noise_sd=noise_sd), idea(2, (worse,), -0.04, noise_sd=noise_sd)])
    parent = Genome(trial=0, commit="c0", files={"train.py": SEED})
    proposer = OfflineProposer()
    without = [proposer.mutate(parent, ctx(seed, None)).description for seed in range(60)]
    assert any("HEAD_DIM 32 -> 16" in d for d in without)  # what the proposer did before it had memory
    with_memory = [proposer.mutate(parent, ctx(seed, memory)) for seed in range(60)]
    assert all(p.ok for p in with_memory)
    assert not any("HEAD_DIM 32 -> 16" in p.description for p in with_memory)
    # Other moves of the same knob are still tried (the notebook rules out a move, not a constant).
    assert any("HEAD_DIM 32 -> 64" in p.description for p in with_memory)
    # One measurement inside the noise is no evidence: the move stays in the draw.
    once = Recall.of([idea(1, (worse,), -0.004, noise_sd=0.005)])
    assert any("HEAD_DIM 32 -> 16" in proposer.mutate(parent, ctx(seed, once)).description for seed in range(60))


def test_the_offline_proposer_leans_towards_a_move_measured_better_but_still_explores():
    better = Change("MATRIX_LR", 0.04, 0.05)
    memory = Recall.of([idea(1, (better,), 0.03, noise_sd=0.005)])
    parent = Genome(trial=0, commit="c0", files={"train.py": SEED})
    proposer = OfflineProposer()
    picked = [proposer.mutate(parent, ctx(seed, memory)).description for seed in range(80)]
    plain = [proposer.mutate(parent, ctx(seed, None)).description for seed in range(80)]
    hits = sum("MATRIX_LR 0.04 -> 0.05" in d for d in picked)
    assert hits > 3 * max(1, sum("MATRIX_LR 0.04 -> 0.05" in d for d in plain))
    assert hits < len(picked)  # exploration: other moves still get drawn


def finished_children(search) -> set[int]:
    return {t.number for t in search.trials() if t.operator in ("mutate", "crossover") and t.counts}


def notebook_rows(root, search_name: str) -> set[int]:
    with sqlite3.connect(root / FILE) as db:
        return {n for (n,) in db.execute("SELECT trial FROM evo_ideas WHERE search = ?", (search_name,))}


@pytest.mark.slow
def test_the_notebook_loses_nothing_to_kill_9_and_is_rebuilt_from_the_searches(instant_project):
    from population import Search

    project, root = instant_project, instant_project / "runs"
    argv = [sys.executable, "-m", "evo.cli", "run", "a", "--profile", "tiny", "--budget", "1", "--trials", "500",
            "--strategy", "greedy", "--devices", "cpu"]
    proc = subprocess.Popen(argv, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "EVO_TEST_SLEEP": "0.2"}, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ((root / FILE).exists() and len(notebook_rows(root, "a")) >= 5):
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its trial's processes, mid-trial
        proc.wait()
    with Search.open("a", root=root) as search:
        search.store.orphans.fail_running()
        done = finished_children(search)
    assert len(notebook_rows(root, "a")) >= 5, "the run wrote its ideas as it went"
    # A search made without memory never touched the notebook: its reader adds its ideas.
    made = run_evo("run", "b", "--profile", "tiny", "--budget", "1", "--trials", "8", "--strategy", "greedy",
                   "--devices", "cpu", "--no-memory", "--quiet", cwd=project)
    assert made.returncode == 0, made.stderr
    assert notebook_rows(root, "b") == set()
    listed = run_evo("ideas", "--json", cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert notebook_rows(root, "a") == done, "what finished before the kill is all there, once"
    with Search.open("b", root=root) as search:
        assert notebook_rows(root, "b") == finished_children(search) != set()
    rows = json.loads(listed.stdout)
    assert sum(r["tries"] for r in rows) == len(done) + len(notebook_rows(root, "b"))
    assert {s for r in rows for s in r["searches"]} == {"a", "b"}
    # Derived data: deleted, it is made again from the studies, the same.
    before = sorted(rows, key=lambda r: r["idea"])
    (root / FILE).unlink()
    again = run_evo("ideas", "--json", cwd=project)
    assert sorted(json.loads(again.stdout), key=lambda r: r["idea"]) == before


@pytest.mark.slow
def test_evo_ideas_on_two_searches_ranks_what_helped_above_what_hurt(instant_project):
    project = instant_project
    for name in ("a", "b"):
        made = run_evo("run", name, "--profile", "tiny", "--budget", "1", "--trials", "10", "--strategy", "greedy",
                       "--devices", "cpu", "--quiet", cwd=project)
        assert made.returncode == 0, made.stderr
    listed = run_evo("ideas", "--json", cwd=project)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    means = [r["mean"] for r in rows if r["mean"] is not None]
    assert means == sorted(means, reverse=True)
    helped = next(i for i, r in enumerate(rows) if r["mean"] is not None and r["mean"] > 0)
    hurt = next(i for i, r in enumerate(rows) if r["mean"] is not None and r["mean"] < 0)
    assert helped < hurt
    # b starts from a's notebook and the same seed, so it retries the moves a measured better: one idea each.
    both = [r for r in rows if r["searches"] == ["a", "b"]]
    assert both and all(r["tries"] >= 2 for r in both)
    table = run_evo("ideas", "--search", "b", "--like", rows[0]["idea"].split()[0].lower(), cwd=project)
    assert table.returncode == 0 and rows[0]["idea"].split()[0] in table.stdout and "effect" in table.stdout
    only_b = json.loads(run_evo("ideas", "--search", "b", "--json", cwd=project).stdout)
    assert only_b and all(r["searches"] == ["b"] for r in only_b)
    bad = run_evo("ideas", "--root", "nowhere", cwd=project)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--root" in bad.stderr


@pytest.mark.slow
def test_the_llm_reads_earlier_searches_ideas_with_their_outcomes_in_the_cached_part_of_its_prompt(instant_project):
    from fake_llm import FakeServer, anthropic_reply, proposal

    project = instant_project
    made = run_evo("run", "a", "--profile", "tiny", "--budget", "1", "--trials", "8", "--strategy", "greedy",
                   "--devices", "cpu", "--quiet", cwd=project)
    assert made.returncode == 0, made.stderr
    with FakeServer([anthropic_reply(proposal("lower LR 0.04 -> 0.03", [("train.py", "LR = 0.04", "LR = 0.03")]))]) as server:
        runs = {name: run_evo("run", name, "--proposer", "anthropic", "--model", "claude-sonnet-5-5", "--profile", "tiny",
                              "--budget", "1", "--trials", "2", "--devices", "cpu", "--quiet", *extra, cwd=project,
                              env={"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": server.url})
                for name, extra in (("b", ()), ("c", ("--no-memory",)))}
    assert all(p.returncode == 0 for p in runs.values()), [p.stderr for p in runs.values()]
    with_memory, without = server.received
    blocks = with_memory.body["system"]
    notebook = next(b for b in blocks if b["text"].startswith("# Lab notebook"))
    assert notebook["cache_control"] == {"type": "ephemeral"}
    listed = json.loads(run_evo("ideas", "--search", "a", "--json", cwd=project).stdout)
    measured = [r for r in listed if r["mean"] is not None]
    assert measured
    shown = [r for r in measured if f"- {r['idea']} | " in notebook["text"]]
    assert shown, notebook["text"]
    assert all(f"effect {r['mean']:+.4f}" in notebook["text"] for r in shown)
    assert not any("Lab notebook" in b["text"] for b in without.body["system"])  # --no-memory: as before


def test_an_adaptive_mix_shifts_its_weight_to_the_member_whose_children_make_new_bests():
    from evo.proposers import WEIGHTS_ATTR, AdaptiveProposer, CommandProposer, from_spec
    from population.store import TrialRecord

    def child(n: int, proposer: str, value: float) -> TrialRecord:
        return TrialRecord(n, "COMPLETE", value, attrs={"operator": "mutate", "parents": [0], "status": "ok",
                                                        "proposer": proposer, "tree": f"t{n}", "commit": f"c{n}"})

    seed = TrialRecord(0, "COMPLETE", 2.0, attrs={"operator": "seed", "parents": [], "status": "ok", "tree": "t0"})
    trials = [seed] + [child(n, "offline" if n % 2 else "command", 2.0 - 0.05 * n if n % 2 else 3.0)
                       for n in range(1, 21)]
    mix = AdaptiveProposer([(OfflineProposer(), 1.0), (CommandProposer("true"), 1.0)])
    assert mix.name == "adaptive:offline,command"
    assert mix.record(Lineage(trials)) == {"offline": (10, 10), "command": (10, 0)}
    start, now = mix.weights(Lineage([seed])), mix.weights(Lineage(trials))
    assert 0.4 < start["offline"] < 0.6 and now["offline"] > 0.95 and sum(now.values()) == pytest.approx(1.0)
    # Drawn by the learnt weights: the useful member gets the children, each recording the weights in force.
    ctx_now = ProposalContext(program="", mutable=["train.py"], settings={"profile": "tiny", "seq_len": 128},
                              lineage=Lineage(trials), rng=random.Random(3))
    proposal = mix.mutate(Genome(trial=0, commit="c0", files={"train.py": SEED}), ctx_now)
    assert proposal.proposer == "offline" and proposal.attrs[WEIGHTS_ATTR] == now
    built = from_spec("adaptive:offline:2,command", agent_command="true")
    assert isinstance(built, AdaptiveProposer) and [w for _, w in built.members] == [2.0, 1.0]


@pytest.mark.slow
def test_an_adaptive_run_records_its_weights_and_the_report_shows_them_and_the_notebook(instant_project):
    from population import Search

    project = instant_project
    made = run_evo("run", "ad", "--proposer", "adaptive:offline,command", "--agent-command", "true", "--trials", "8",
                   "--strategy", "greedy", "--profile", "tiny", "--budget", "1", "--devices", "cpu", "--quiet",
                   cwd=project)
    assert made.returncode == 0, made.stderr
    with Search.open("ad", root=project / "runs") as search:
        children = [t for t in search.trials() if t.operator == "mutate"]
    assert children and all(set(t.attrs["mix_weights"]) == {"offline", "command"} for t in children)
    assert all(sum(t.attrs["mix_weights"].values()) == pytest.approx(1.0, abs=0.01) for t in children)
    report = run_evo("report", "ad", cwd=project)
    assert report.returncode == 0, report.stderr
    page = (project / "runs" / "ad" / "report" / "report.html").read_text()
    assert "How the adaptive mix moved" in page and "Lab notebook: what the searches of this task measured" in page


@pytest.mark.slow
def test_two_hosts_of_a_shared_search_fill_one_notebook_in_its_database(instant_project, database, tmp_path):
    from services import GitDaemon
    from test_hosts import GRACE, finish, log_of, open_on, worker

    project = instant_project
    served = tmp_path / "served"
    subprocess.run(["git", "init", "--quiet", "--bare", str(served / "population.git")], check=True)
    daemon = GitDaemon(served)
    try:
        remote = daemon.url("population.git")
        init = run_evo("init", "s", "--profile", "tiny", "--budget", "1", "--storage", database, "--remote", remote,
                       *GRACE, "--root", "hosts/a", cwd=project)
        assert init.returncode == 0, init.stderr
        procs = [worker(project, h, "s", "--storage", database, "--remote", remote, "--trials", "14", sleep=0.3)
                 for h in ("a", "b")]
        finish(procs)
        assert all(p.returncode == 0 for p in procs), log_of(project, "a") + log_of(project, "b")
        with open_on(project, "a", "s") as search:
            children = {t.number: t.attrs["worker"] for t in search.trials()
                        if t.operator in ("mutate", "crossover") and t.counts}
        book = Notebook(database)
        try:
            written = {i.trial for i in book.ideas(search="s")}  # what the workers' proposals wrote, read as it is
            assert not (tmp_path / "hosts" / "a" / FILE).exists() and not (project / "hosts" / "a" / FILE).exists()
            assert len({children[n].rsplit("/", 2)[-2] for n in written}) == 2, "both hosts' trials are in it"
            with open_on(project, "b", "s") as search:
                book.sync(search)  # a reader adds the last results, which no proposal came after
            assert {i.trial for i in book.ideas(search="s")} == set(children)
        finally:
            book.close()
    finally:
        daemon.stop()


def test_an_imported_results_tsv_adds_its_ideas_to_the_notebook(tmp_path, instant_project):
    tsv = tmp_path / "results.tsv"
    tsv.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                   "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
                   "b2c3d4e\t0.000000\t0.0\tcrash\tdouble the width (OOM)\n"
                   "c3d4e5f\t0.993200\t44.2\tkeep\tadd warmup 0.05\n"
                   "d4e5f6a\t0.999000\t44.2\tdiscard\tlr 0.04 -> 0.08\n")
    proc = run_evo("import", str(tsv), "overnight", cwd=instant_project)
    assert proc.returncode == 0, proc.stderr
    assert "3 ideas into the lab notebook" in proc.stdout
    rows = json.loads(run_evo("ideas", "--json", cwd=instant_project).stdout)
    assert [(r["idea"], r["kind"], r["failed"]) for r in rows] == [
        ("add warmup 0.05", "code", 0), ("lr 0.04 -> 0.08", "code", 0), ("double the width (OOM)", "code", 1)]
    assert rows[0]["mean"] == pytest.approx(0.9979 - 0.9932) and rows[1]["mean"] == pytest.approx(0.9932 - 0.999)
    warm = json.loads(run_evo("ideas", "--like", "WARMUP", "--json", cwd=instant_project).stdout)
    assert [r["idea"] for r in warm] == ["add warmup 0.05"]
