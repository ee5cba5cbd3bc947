"""The LLM path as a small local model meets it: a loopback server (tests/fake_llm.py `SmallModel`)
that refuses tools and JSON mode, answers in prose, stops at its own length, drops connections and
serves one request at a time. Each test shows one thing a user must be told the truth about."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, run_evo
from evo.loop import LimitSpec, RunOptions
from evo.proposers import Genome, OpenAICompatibleProposer, ProposalContext, ProposerUnavailable
from fake_llm import Drop, SmallModel, proposal
from population.lineage import Lineage
from population.search import Search

TRAIN = (ROOT / "train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()
RAISE_MATRIX_LR = ("train.py", "MATRIX_LR = 0.04", "MATRIX_LR = 0.05")


def context(said: list | None = None) -> ProposalContext:
    ctx = ProposalContext(program=PROGRAM, mutable=["train.py"], settings={"profile": "gpu", "budget": 300},
                          lineage=Lineage([]), rng=random.Random(0))
    if said is not None:
        ctx.say = said.append
    return ctx


def seed() -> Genome:
    return Genome(trial=0, commit="c0", files={"train.py": TRAIN}, description="seed genome", score=2.9)


def in_prose(fields: dict) -> str:
    """A proposal as a small model writes one: words, then the JSON in a fence."""
    return "Sure! Here is my proposal for the next experiment.\n\n```json\n" + json.dumps(fields) + "\n```\nGood luck!"


def small(server: SmallModel, **options) -> OpenAICompatibleProposer:
    """The proposer as a user sets it up for this server: its context size given."""
    options.setdefault("context_tokens", server.context)
    return OpenAICompatibleProposer(base_url=server.url, model=server.model, backoff=(0.05, 0.05, 0.05), **options)


# -- prompts that fit ---------------------------------------------------------------------------

def test_the_prompt_fits_a_small_models_context_and_prompt_md_is_what_was_sent():
    said = []
    with SmallModel([in_prose(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))]) as server:
        proposer = small(server, context_tokens=8192)
        result = proposer.mutate(seed(), context(said))
        again = proposer.mutate(seed(), context(said))
    assert result.ok, result.error
    answered = server.answered[0]
    # The whole default train.py is ~8,000 of this model's tokens: the prompt was fitted, never cut by the server.
    assert answered["sent_tokens"] + answered["max_tokens"] <= 8192 and answered["max_tokens"] == 2048
    request = server.received[2].body  # tools refused, JSON mode refused, then plain text
    user = request["messages"][1]["content"]
    assert "MATRIX_LR = 0.04" in user and "EMBEDDING_LR = 0.6" in user  # the hyperparameters are shown whole
    assert "lines not shown: they do not fit the model's context" in user  # other parts summarised
    assert "regions of the files above are summarised" in user  # and the model is told
    assert result.usage["context_tokens"] == 8192 and result.usage["prompt_tokens_estimate"] >= answered["sent_tokens"]
    # prompt.md holds what went out: the JSON request, not the tool call the first attempt asked for.
    saved = result.artifacts["prompt.md"]
    assert user in saved and request["messages"][0]["content"] in saved
    assert "calling the `propose_change` tool" not in saved and "fitted to the model's context" in saved
    # Each fallback is said once, in one line; the second proposal goes straight to text.
    assert [line for line in said if "refused" in line] == [
        "small-instruct at " + server.url + "/chat/completions refused function calls (tools) (400: tools are not "
        "supported by this server (start it with --enable-auto-tool-choice)): asking for JSON mode (response_format) "
        "from now on",
        "small-instruct at " + server.url + "/chat/completions refused JSON mode (response_format) (400: "
        "response_format json_object is not supported): asking for a JSON object in plain text from now on"]
    assert again.ok and len(server.received) == 4 and "tools" not in server.received[3].body  # one request, in text


def test_a_context_too_small_for_any_prompt_is_one_line_at_start_up(project):
    with SmallModel(["unused"], context=2048) as server:
        proc = run_evo("run", "s", "--proposer", "openai-compatible", "--base-url", server.url, "--model",
                       "small-instruct", "--context-tokens", "2048", "--profile", "tiny", "--budget", "2",
                       "--trials", "2", cwd=project)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in proc.stderr
    assert re.search(r"the prompt for small-instruct needs ~[\d,]+ tokens .* a 2,048-token context with --max-tokens "
                     r"512 leaves [\d,]+: serve the model with a larger context", line), line
    assert not server.received  # no call was made, no trial run
    with Search.open("s", root=project / "runs") as search:
        assert search.trials() == []


# -- errors that tell the truth -------------------------------------------------------------------

def test_an_answer_cut_off_by_the_server_names_the_limit_it_hit():
    rambling = "Let me think about this step by step, considering the learning rate schedule. " * 200
    with SmallModel([rambling], n_predict=600, context=32768) as server:
        result = small(server, mode="text").mutate(seed(), context())
    assert not result.ok
    assert "cut off at 600 tokens (the server's own limit; max_tokens allowed 8192)" in result.error
    assert result.error.startswith("the model gave no proposal after 1 repair turn(s)")
    repair = server.received[1].body["messages"][-1]["content"]
    assert "cut off at 600 tokens" in repair and "16000" not in repair
    assert len(json.loads(result.artifacts["response.json"])["answers"][0]) > 1000  # what it said is kept


def test_prose_without_json_says_so_and_quotes_the_models_first_words():
    with SmallModel(["Sure! I think we should raise the learning rate a little, it usually helps."]) as server:
        result = small(server, mode="text").mutate(seed(), context())
    assert result.error == ("the model gave no proposal after 1 repair turn(s): no JSON object in the answer (it "
                            "began: 'Sure! I think we should raise the learning rate a little, it usually helps.')")
    assert "did not apply" not in result.error


# -- network faults are the server's --------------------------------------------------------------

def test_a_connection_dropped_mid_answer_is_asked_again_and_never_an_invalid_proposal():
    good = in_prose(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))
    with SmallModel([Drop("mid"), good]) as server:
        result = small(server, mode="text").mutate(seed(), context())
    assert result.ok and result.usage["calls"] == 1 and len(server.received) == 2

    with SmallModel([Drop("before")]) as server, pytest.raises(ProposerUnavailable) as caught:
        small(server, mode="text").mutate(seed(), context())
    assert "dropped the connection before answering (RemoteDisconnected" in str(caught.value)
    assert caught.value.usage["calls"] == 0 and "seconds" in caught.value.usage
    assert len(server.received) == 4  # the first try and the three of the backoff


def test_a_server_busy_with_another_request_is_waited_for():
    good = in_prose(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))
    other = in_prose(proposal("lower EMBEDDING_LR 0.6 -> 0.5", [("train.py", "EMBEDDING_LR = 0.6", "EMBEDDING_LR = 0.5")]))
    results = {}
    with SmallModel([good, other]) as server:
        proposer = OpenAICompatibleProposer(base_url=server.url, model=server.model, mode="text",
                                            backoff=(0.2,) * 50, context_tokens=server.context)
        hold = server.slow()
        first = threading.Thread(target=lambda: results.setdefault("first", proposer.mutate(seed(), context())))
        first.start()
        while not server.received:
            time.sleep(0.01)
        second = threading.Thread(target=lambda: results.setdefault("second", proposer.mutate(seed(), context())))
        second.start()
        while not server.busy_refusals:
            time.sleep(0.01)
        hold.set()
        first.join(60)
        second.join(60)
    assert results["first"].ok and results["second"].ok, (results["first"].error, results["second"].error)
    assert server.busy_refusals >= 1


# -- a whole search against it ----------------------------------------------------------------------

def nudge_lr(request) -> str:
    """A fresh proposal for whatever parent the prompt shows: its LR a little lower each call."""
    text = request.body["messages"][1]["content"]
    current = re.search(r"^LR = ([0-9.e-]+)", text, re.M).group(1)
    nudge_lr.calls = getattr(nudge_lr, "calls", 0) + 1
    new = f"{float(current) * 0.97 ** nudge_lr.calls:.6g}"
    return in_prose(proposal(f"LR {current} -> {new}", [("train.py", f"LR = {current}", f"LR = {new}")]))


def test_a_search_against_a_small_model_tells_the_truth_and_shows_the_call_in_flight(instant_project):
    rambling = "Let me think about this step by step, considering the learning rate schedule. " * 200
    script = [nudge_lr, Drop("mid"), Drop("before"), Drop("mid"),  # a server that goes away for a while
              "Sure! I would raise the learning rate a little.", rambling, nudge_lr]
    with SmallModel(script) as server:
        hold = server.slow()  # the first proposal's call takes until the test has seen it in `evo status`
        proc = subprocess.Popen([sys.executable, "-m", "evo.cli", "run", "s", "--profile", "tiny", "--budget", "1",
                                 "--trials", "6", "--strategy", "greedy", "--proposer", "openai-compatible",
                                 "--base-url", server.url, "--model", server.model, "--context-tokens", "8192",
                                 "--api-backoff", "0.2,1"], cwd=instant_project, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline, status = time.monotonic() + 180, ""
            while "proposing" not in status and time.monotonic() < deadline and proc.poll() is None:
                status = run_evo("status", "s", cwd=instant_project).stdout
            assert re.search(r"proposing mutate of #0 by openai-compatible \(small-instruct\): \d+s, waiting for the "
                             r"model \(prompt ~[\d,]+ tokens\)", status), status
            hold.set()
            out, err = proc.communicate(timeout=600)
        finally:
            hold.set()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    # One line per mode fallback; the outage and how long the failed call ran; the start-up fit.
    assert out.count("refused function calls (tools)") == 1 and out.count("refused JSON mode") == 1
    assert "openai-compatible (small-instruct): the prompt for #0 is ~" in out and "answers up to 2,048 tokens" in out
    assert re.search(r"waiting for the API \(.*\) after a call of \d+s: \S+ dropped the connection before answering "
                     r"\(IncompleteRead", out), out

    with Search.open("s", root=instant_project / "runs") as search:
        trials = search.trials()
    errors = " | ".join(t.error or "" for t in trials)
    invalid = [t for t in trials if t.status == "invalid_proposal"]
    assert "connection" not in errors and "dropped" not in errors  # a network fault is no trial's failure
    assert len(invalid) == 1 and "16000" not in errors
    assert invalid[0].error.startswith("the model gave no proposal after 1 repair turn(s): the answer was cut off at "
                                       "600 tokens (the server's own limit; max_tokens allowed 2048)")
    assert sum(1 for t in trials if t.spends_trial) == 6
    later = [json.dumps(r.body) for r in server.received[-2:]]
    assert not any("dropped" in text for text in later)  # not remembered as a failed idea either

    folder = instant_project / "runs" / "s" / "trials" / str(invalid[0].number)
    assert "Answer with one JSON object" in (folder / "prompt.md").read_text()
    assert "calling the `propose_change` tool" not in (folder / "prompt.md").read_text()
    answers = json.loads((folder / "response.json").read_text())["answers"]
    assert answers[0] == "Sure! I would raise the learning rate a little." and "cut off" not in answers[1]
    after = run_evo("status", "s", cwd=instant_project).stdout  # what the lost call cost is on record
    assert re.search(r"proposals lost to the API: 1 \(no trial: the server failed, not the idea; \d+s of calls", after)
    show = run_evo("show", "s", str(invalid[0].number), cwd=instant_project).stdout
    assert "branch:" not in show  # an invalid proposal has none
    assert f"proposer files: {folder / 'prompt.md'}, {folder / 'response.json'}" in show
    assert "the model's answer 2 of 2" in show and "[... " in show and "Let me think about this" in show


# -- the live view and the log while a call runs --------------------------------------------------

def test_the_live_view_and_the_log_show_a_proposal_in_flight_while_every_device_is_idle():
    import io

    from rich.console import Console

    from analysis.live import RunView, progress_line, render_live
    from evo.cli._progress import Reporter

    flight = {"operator": "mutate", "parents": [3], "proposer": "openai-compatible", "model": "small-instruct",
              "phase": "waiting for the model (prompt ~5,400 tokens)", "seconds": 72.0}
    view = RunView(name="night", strategy="greedy", proposer="openai-compatible", budget=300, target=12, started=1000.0)
    view.record("progress", {"slots": [{"slot": "cpu0", "trial": None}], "proposals": [flight]}, now=1100.0)
    console = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    console.print(render_live(view, now=1110.0, width=120))
    text = console.export_text()
    narrow = Console(width=80, record=True, file=io.StringIO(), color_system=None)
    narrow.print(render_live(view, now=1110.0, width=80))
    assert "proposing mutate of #3 by openai-compatible (small-instruct): 1m22s" in narrow.export_text()
    assert "cpu0" in text and "idle" in text
    assert ("proposing mutate of #3 by openai-compatible (small-instruct): 1m22s, waiting for the model (prompt "
            "~5,400 tokens)") in text  # 72 s when reported, 10 s ago
    assert "proposing mutate of #3" in progress_line(view, now=1110.0)

    class FakeSearch:  # what the plain reporter reads: the config and the lineage
        class config:
            name, metric, budget, target = "night", "val_bpb", 300.0, {}

        @staticmethod
        def lineage():
            return Lineage([])

    out = io.StringIO()
    reporter = Reporter(FakeSearch, RunOptions(limits=LimitSpec(trials=12)), out=out, clock=lambda: 1100.0, every=0.0)
    reporter("progress", {"slots": [{"slot": "cpu0", "trial": None}], "proposals": [flight]})
    reporter("proposer", {"line": "small-instruct refused function calls (tools): asking for JSON mode from now on"})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("progress: ") and "proposing mutate of #3 by openai-compatible" in lines[0]
    assert lines[1] == "proposer: small-instruct refused function calls (tools): asking for JSON mode from now on"


# -- fitting, piece by piece ------------------------------------------------------------------------

def test_a_crossover_keeps_what_it_is_about_whole_and_each_summarised_genome_still_compiles():
    from evo.proposers._fit import regions, summarised

    a = Genome(trial=1, commit="c1", files={"train.py": TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")},
               description="raise MATRIX_LR", score=2.85)
    changed = TRAIN.replace("    return F.rms_norm(x, (x.size(-1),))", "    return F.rms_norm(x, (x.size(-1),), eps=1e-6)")
    assert changed != TRAIN
    b = Genome(trial=2, commit="c2", files={"train.py": changed}, description="rms_norm eps", score=2.86)
    base = Genome(trial=-1, commit="c0", files={"train.py": TRAIN})
    fields = proposal("cross #1 x #2: both", [("train.py", "MATRIX_LR = 0.05", "MATRIX_LR = 0.045")])
    with SmallModel([in_prose(fields)]) as server:
        result = small(server, mode="text").crossover(a, b, base, context())
    assert result.ok, result.error
    user = server.received[0].body["messages"][1]["content"]
    starting = user[user.index("# The starting files"):]
    assert "eps=1e-6" in starting and "def norm(x):" in starting  # the region #2 changed is shown whole
    assert "lines not shown" in starting  # while others are summarised
    hidden = set(range(len(regions("train.py", TRAIN))))
    compile(summarised("train.py", TRAIN, hidden), "train.py", "exec")  # a summary is still Python
    assert summarised("train.py", TRAIN, set()) == TRAIN


def test_a_server_that_refuses_a_prompt_longer_than_its_context_says_what_to_give():
    from fake_llm import FakeServer, Reply

    refusal = Reply(400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, you "
                                               "requested 26000 tokens.", "type": "BadRequestError"}})
    with FakeServer([refusal]) as server:
        result = OpenAICompatibleProposer(base_url=server.url, model="small-instruct", mode="text").mutate(seed(), context())
    assert not result.ok and result.error.endswith(
        "maximum context length is 8192 tokens. However, you requested 26000 tokens.; give --context-tokens N (the "
        "model's context) so prompts are fitted to it")
