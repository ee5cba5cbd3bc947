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
