"""Proposals prepared side by side: each child is the one its proposer would make alone.

The engine prepares proposals in worker threads while devices are busy (one per slot), so
every proposer runs in several threads at once: the offline one parsing genomes, the command
one driving agents in scratch folders, the LLM ones talking HTTP. Here the real proposers
prepare many children at once, and each is compared with the child the same inputs give
when prepared alone; then real searches on four CPU slots must run every child they plan.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
import re
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, run_evo
from fake_llm import FakeServer, anthropic_reply, proposal
from evo.proposers import AnthropicProposer, CommandProposer, Genome, OfflineProposer, ProposalContext
from population.genomes import genome_hash
from population.lineage import Lineage
from population.search import Search

TRAIN = (ROOT / "train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()
PARENTS = 16   # different parents (so no parse is served from a cache), each proposed for twice over
THREADS = 8

# An agent that raises the parent's MATRIX_LR by a quarter and names no change when EVO_PARENTS is
# odd (then the engine describes the change itself, parsing both genomes in the proposal's thread).
AGENT = """
import os, re
text = open("train.py").read()
old = re.search(r"^MATRIX_LR = (\\S+)", text, re.M).group(1)
new = round(float(old) * 1.25, 6)
open("train.py", "w").write(re.sub(r"^MATRIX_LR = \\S+", f"MATRIX_LR = {new}", text, flags=re.M))
if int(os.environ["EVO_PARENTS"].split()[0]) % 2 == 0:
    open(os.environ["EVO_DESCRIPTION"], "w").write(f"MATRIX_LR {old} -> {new}\\n")
"""


def _parent(i: int) -> Genome:
    text = TRAIN.replace("MATRIX_LR = 0.04", f"MATRIX_LR = {0.0401 + 0.0001 * i:.4f}")
    assert text != TRAIN
    return Genome(trial=i, commit=f"c{i}", files={"train.py": text}, description=f"parent {i}", score=3.0)


def _context(i: int, scratch: Path) -> ProposalContext:
    return ProposalContext(program=PROGRAM, mutable=["train.py"], settings={"profile": "tiny", "budget": 2, "seq_len": 128},
                           lineage=Lineage([]), rng=random.Random(i), is_known=lambda files: False,
                           scratch=scratch / f"proposal-{i}")


def _llm_answer(request):
    """The fake model doubles the parent's MATRIX_LR, read from the prompt it was sent."""
    text = "\n".join(b["text"] for m in request.body["messages"] if isinstance(m["content"], list)
                     for b in m["content"] if b.get("type") == "text")
    old = re.search(r"^MATRIX_LR = (\S+)", text, re.M).group(1)
    new = f"{float(old) * 2:g}"
    return anthropic_reply(proposal(f"MATRIX_LR {old} -> {new}", [("train.py", f"MATRIX_LR = {old}", f"MATRIX_LR = {new}")]))


def _crossed(proposer, i: int, ctx: ProposalContext):
    a, b = _parent(i), _parent((i + 5) % PARENTS)
    b.files = {"train.py": b.files["train.py"].replace("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6")}
    return proposer.crossover(a, b, _parent(i), ctx)


class _Garbage:
    """Cyclic garbage with a finalizer, as a search's other threads leave it (HTTP clients, processes,
    database sessions): a collection, triggered by whichever thread allocates next, runs its Python
    finalizer there, which lets the interpreter switch threads in the middle of that thread's work
    (a parse, say). Without such switches a race in C code could never show in a test."""

    def __init__(self):
        self.cycle = self

    def __del__(self):
        sum(range(100))


def _leave_garbage(stop: threading.Event) -> None:
    while not stop.is_set():
        _Garbage()
        stop.wait(0.0005)


def _summary(p) -> tuple:
    return p.ok, p.error, p.description, genome_hash(p.files) if p.ok else None


def test_proposals_prepared_side_by_side_are_the_children_they_would_be_alone(tmp_path):
    offline = OfflineProposer()
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    command = CommandProposer(f"{sys.executable} {agent}")
    with FakeServer([_llm_answer]) as server:
        llm = AnthropicProposer(api_key="sk-ant-test", base_url=server.url)
        jobs = []  # (name, function of a scratch folder): every kind of proposal, all in one pool as in a search
        for i in range(PARENTS):
            jobs.append((f"offline mutate {i}", lambda s, i=i: offline.mutate(_parent(i), _context(i, s))))
            jobs.append((f"offline crossover {i}", lambda s, i=i: _crossed(offline, i, _context(i, s))))
            if i % 2 == 0:
                jobs.append((f"command {i}", lambda s, i=i: command.mutate(_parent(i), _context(i, s))))
                jobs.append((f"anthropic {i}", lambda s, i=i: llm.mutate(_parent(i), _context(i, s))))
        # Side by side first (a parse cached by the lone run would hide a parse that fails in a thread).
        stop = threading.Event()
        churn = threading.Thread(target=_leave_garbage, args=(stop,))
        churn.start()
        try:
            with cf.ThreadPoolExecutor(max_workers=THREADS) as pool:
                futures = [pool.submit(job, tmp_path / "together" / name.replace(" ", "-")) for name, job in jobs]
                together = {name: _summary(f.result()) for (name, _), f in zip(jobs, futures)}
        finally:
            stop.set()
            churn.join()
        alone = {name: _summary(job(tmp_path / "alone" / name.replace(" ", "-"))) for name, job in jobs}
        llm.close()
    wrong = {name: (together[name], alone[name]) for name, _ in jobs if together[name] != alone[name]}
    assert not wrong, f"{len(wrong)} of {len(jobs)} children differ when prepared side by side: {wrong}"
    failed = {name: s[1] for name, s in alone.items() if not s[0]}
    assert not failed, failed
    assert len({s[3] for s in alone.values()}) > PARENTS  # real, different children


# An agent for the instant genome: a crossover's conflicts resolved for the first parent, then a new
# learning rate (the engine refuses a known genome).
INSTANT_AGENT = """
import os, random, re
kept, side = [], "first"
for line in open("train.py").read().splitlines(keepends=True):
    if line.startswith("<<<<<<<"):
        side = "ours"
    elif line.startswith(("|||||||", "=======")) and side != "first":
        side = "theirs"
    elif line.startswith(">>>>>>>"):
        side = "first"
    elif side != "theirs":
        kept.append(line)
text = "".join(kept)
old = float(re.search(r"^LR = (\\S+)", text, re.M).group(1))
new = round(old * random.uniform(0.7, 1.4), 9)
open("train.py", "w").write(re.sub(r"^LR = \\S+", f"LR = {new}", text, flags=re.M))
open(os.environ["EVO_DESCRIPTION"], "w").write(f"LR {old} -> {new}\\n")
"""


@pytest.mark.parametrize("proposer", ["offline", "command"])
def test_a_search_on_four_slots_runs_every_child_it_plans(instant_project, tmp_path, proposer):
    agent = tmp_path / "agent.py"
    agent.write_text(INSTANT_AGENT)
    extra = ["--agent-command", f"{sys.executable} {agent}"] if proposer == "command" else []
    proc = run_evo("run", "four", "--profile", "tiny", "--budget", "1", "--trials", "16", "--devices", "cpu:4",
                   "--proposer", proposer, *extra, cwd=instant_project)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    search = Search.open("four", root=instant_project / "runs")
    try:
        trials = search.trials()
    finally:
        search.close()
    lost = [(t.number, t.status, t.error) for t in trials if t.status not in ("ok", "duplicate")]
    assert not lost, f"{len(lost)} of {len(trials)} children lost: {lost}"
    assert len(trials) == 16 and sum(1 for t in trials if t.status == "ok") >= 12
