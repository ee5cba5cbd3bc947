"""LLM and agent proposers: the real clients against scripted servers on 127.0.0.1, and the real `evo` CLI.

No network: the Anthropic SDK and the OpenAI-compatible client talk HTTP to a fake API in
a thread of this process (tests/fake_llm.py); the command proposer runs a small script.
End-to-end tests run `evo run` as a user would and read the search folder it leaves.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest

from conftest import ROOT, run_evo
from evo.cli import main as evo_main
from evo.proposers import (AnthropicProposer, CommandProposer, Genome, MixedProposer, OfflineProposer,
                           OpenAICompatibleProposer, ProposalContext, ProposerError, ProposerUnavailable)
from population.search import Search
from fake_llm import (FakeServer, Reply, anthropic_error, anthropic_reply, chat_text, chat_tool_call, proposal)
from population.genomes import genome_hash
from population.lineage import Lineage
from population.store import TrialRecord

TRAIN = (ROOT / "train.py").read_text()
PROGRAM = (ROOT / "program.md").read_text()
KEY = f"sk-ant-test-{uuid.uuid4().hex}"

RAISE_MATRIX_LR = ("train.py", "MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
LOWER_EMBEDDING_LR = ("train.py", "EMBEDDING_LR = 0.6", "EMBEDDING_LR = 0.5")
# Makes the child print its whole environment into run.log: the trial's view of secrets.
DUMP_ENV = ("train.py", "def main():\n", "def main():\n    print('EVO_ENV', dict(os.environ), flush=True)\n")


def record(number: int, operator: str, parents: list[int], status: str, value: float | None = None,
           description: str = "", error: str = "", **attrs) -> TrialRecord:
    state = "COMPLETE" if value is not None else "FAIL"
    return TrialRecord(number, state, value, attrs={"operator": operator, "parents": parents, "status": status,
                                                    "description": description, "error": error,
                                                    "tree": f"tree{number}", "commit": f"c{number}", **attrs})


def context(trials: list[TrialRecord] = (), *, seed: int = 0, known: set[str] = frozenset()) -> ProposalContext:
    return ProposalContext(program=PROGRAM, mutable=["train.py"], settings={"profile": "tiny", "budget": 2, "seq_len": 128},
                           lineage=Lineage(list(trials)), rng=random.Random(seed),
                           is_known=lambda files: genome_hash(files) in known)


def seed_genome(files: dict | None = None, trial: int = 0, score: float = 2.9) -> Genome:
    return Genome(trial=trial, commit=f"c{trial}", files=files or {"train.py": TRAIN}, description="seed genome", score=score)


def anthropic_at(server: FakeServer, **options) -> AnthropicProposer:
    return AnthropicProposer(api_key=KEY, base_url=server.url, **options)


def user_text(request) -> str:
    return "\n".join(b["text"] for m in request.body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
                     for b in m["content"] if b.get("type") == "text")


# -- Anthropic: one proposal ------------------------------------------------------------------

def test_mutation_prompt_holds_program_parent_and_memory_with_cache_control_on_the_large_blocks():
    trials = [record(0, "seed", [], "ok", 2.90, "seed genome"),
              record(1, "mutate", [0], "ok", 2.85, "raise MATRIX_LR 0.04 -> 0.05", kept=True),
              record(2, "mutate", [1], "crash", None, "swap ReLU² for SwiGLU",
                     error="Traceback (most recent call last):\nRuntimeError: mat1 and mat2 shapes cannot be multiplied"),
              record(3, "mutate", [1], "ok", 2.95, "double DEPTH 2 -> 4"),
              record(4, "mutate", [1], "invalid_proposal", None, "tie embeddings", error="edit 1 was not found")]
    parent = seed_genome({"train.py": TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")}, trial=1, score=2.85)
    with FakeServer([anthropic_reply(proposal("lower EMBEDDING_LR 0.6 -> 0.5", [LOWER_EMBEDDING_LR]))]) as server:
        result = anthropic_at(server).mutate(parent, context(trials))
    assert result.ok, result.error
    body = server.received[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "propose_change"}
    program_block = next(b for b in body["system"] if "Research program" in b["text"])
    assert PROGRAM.strip()[:200] in program_block["text"] and program_block["cache_control"] == {"type": "ephemeral"}
    files_block, memory_block = body["messages"][0]["content"]
    assert "MATRIX_LR = 0.05" in files_block["text"] and files_block["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in memory_block  # it changes every call: caching it would only cost
    memory = memory_block["text"]
    assert "#1 mutate: raise MATRIX_LR 0.04 -> 0.05 | val_bpb 2.8500 (-0.0500)" in memory  # the parent's ancestry
    assert "swap ReLU² for SwiGLU | crash: RuntimeError: mat1 and mat2 shapes cannot be multiplied" in memory
    assert "double DEPTH 2 -> 4 | worse: val_bpb 2.9500 (+0.1000 vs parent)" in memory
    assert "tie embeddings | invalid proposal: edit 1 was not found" in memory
    assert "Best so far: #1, val_bpb 2.8500" in memory
    assert "`tiny=` value" in memory  # which per_profile value counts


def test_memory_still_names_failed_ideas_older_than_the_recent_window():
    from evo.proposers._memory import search_memory
    trials = [record(0, "seed", [], "ok", 2.90, "seed genome"),
              record(1, "mutate", [0], "diverged", None, "MATRIX_LR 0.04 -> 0.4", error="FAIL: training loss is nan"),
              record(2, "mutate", [0], "ok", 2.95, "DEPTH 2 -> 4"),
              record(3, "mutate", [0], "ok", 2.85, "WARMDOWN_RATIO 0.5 -> 0.7", kept=True),
              record(4, "mutate", [3], "ok", 2.84, "ADAM_BETAS (0.8, 0.95) -> (0.9, 0.95)", kept=True)]
    memory = search_memory([4], Lineage(trials), recent=2)
    recent = memory[memory.index("## Recent ideas"): memory.index("## Earlier ideas")]
    earlier = memory[memory.index("## Earlier ideas"): memory.index("## Current best")]
    assert "WARMDOWN_RATIO" in recent and "ADAM_BETAS" in recent and "DEPTH" not in recent
    assert "#1: MATRIX_LR 0.04 -> 0.4 | diverged: FAIL: training loss is nan" in earlier
    assert "#2: DEPTH 2 -> 4 | worse" in earlier


def test_a_529_is_retried_by_the_sdk_and_then_our_backoff_until_success():
    overloaded = anthropic_error(529, "overloaded_error", "Overloaded", {"retry-after-ms": "1"})
    good = anthropic_reply(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))
    with FakeServer([overloaded, good]) as server:
        result = anthropic_at(server).mutate(seed_genome(), context())
    assert result.ok and len(server.received) == 2  # one SDK retry

    # The SDK gives up after max_retries; our own backoff round asks again.
    with FakeServer([overloaded, overloaded, good]) as server:
        result = anthropic_at(server, max_retries=1, backoff=(0.01,)).mutate(seed_genome(), context())
    assert result.ok and len(server.received) == 3
    assert result.usage["calls"] == 1  # failed attempts are not answers and cost nothing

    # Still failing: the API is unavailable for now (the search waits and asks again), not a reason to stop.
    with FakeServer([overloaded]) as server, pytest.raises(ProposerUnavailable, match="kept failing .*529"):
        anthropic_at(server, max_retries=1, backoff=(0.01,)).mutate(seed_genome(), context())


def test_an_edit_that_does_not_apply_gets_one_repair_turn_with_the_precise_error():
    wrong = anthropic_reply(proposal("raise MATRIX_LR", [("train.py", "MATRIX_LR = 0.4", "MATRIX_LR = 0.05")]),
                            input_tokens=3000, output_tokens=100, cache_write=5000)
    fixed = anthropic_reply(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]),
                            input_tokens=400, output_tokens=120, cache_read=5000)
    with FakeServer([wrong, fixed]) as server:
        result = anthropic_at(server, model="claude-sonnet-5-5").mutate(seed_genome(), context())
    assert result.ok and "MATRIX_LR = 0.05" in result.files["train.py"]
    repair = server.received[1].body["messages"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    tool_result = repair[2]["content"][0]
    assert tool_result["type"] == "tool_result" and tool_result["is_error"] is True
    assert "edit 1 on train.py: the search text was not found" in tool_result["content"]
    assert "closest line is line" in tool_result["content"] and "MATRIX_LR = 0.04" in tool_result["content"]
    # Both calls count, each at its own rates (claude-sonnet-5-5: $2 in, $10 out, $2.5 cache write, $0.2 read).
    u = result.usage
    assert (u["calls"], u["input_tokens"], u["output_tokens"], u["cache_write_tokens"], u["cache_read_tokens"]) == \
        (2, 3400, 220, 5000, 5000)
    expected = (3400 * 2 + 220 * 10 + 5000 * 2.5 + 5000 * 0.2) / 1e6
    assert u["cost_usd"] == pytest.approx(expected)
    saved = json.loads(result.artifacts["response.json"])
    assert len(saved["responses"]) == 2 and "was not found" in saved["errors"][0]
    assert "repair turn 1" in result.artifacts["prompt.md"]


def test_an_edit_that_breaks_the_syntax_is_repaired_before_any_trial_is_spent():
    broken = anthropic_reply(proposal("raise MATRIX_LR", [("train.py", "MATRIX_LR = 0.04", "MATRIX_LR = = 0.05")]))
    with FakeServer([broken]) as server:
        result = anthropic_at(server).mutate(seed_genome(), context())
    assert not result.ok and len(server.received) == 2
    assert "does not compile" in server.received[1].body["messages"][2]["content"][0]["content"]


def test_models_that_refuse_a_forced_tool_are_asked_with_auto_from_then_on():
    def server_side(request):
        if request.body["tool_choice"]["type"] == "tool":
            return anthropic_error(400, "invalid_request_error", "tool_choice forcing a tool is not supported with this model")
        return anthropic_reply(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))
    with FakeServer([server_side]) as server:
        proposer = anthropic_at(server)
        assert proposer.mutate(seed_genome(), context()).ok
        assert proposer.mutate(seed_genome(), context()).ok
    assert [r.body["tool_choice"]["type"] for r in server.received] == ["tool", "auto", "auto"]


def test_a_rejected_key_stops_the_search_and_a_missing_one_fails_at_once(monkeypatch):
    with FakeServer([anthropic_error(401, "authentication_error", "invalid x-api-key")]) as server, \
            pytest.raises(ProposerError, match="rejected the key.*401") as caught:
        anthropic_at(server).mutate(seed_genome(), context())
    assert KEY not in str(caught.value)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ProposerError, match="ANTHROPIC_API_KEY is not set"):
        AnthropicProposer()


def test_a_call_past_the_timeout_counts_as_the_api_being_unavailable():
    slow = Reply(200, {}, delay=5.0)
    with FakeServer([slow]) as server, pytest.raises(ProposerUnavailable, match="no answer .* within 0.3s"):
        anthropic_at(server, timeout=0.3, max_retries=0, backoff=()).mutate(seed_genome(), context())
    assert len(server.received) == 1  # and it did not wait for the 5 s answer: the server saw one request


def test_close_abandons_a_call_in_flight_and_the_proposal_keeps_its_prompt():
    hanging = Reply(200, {}, delay=30.0)
    with FakeServer([hanging]) as server:
        proposer = anthropic_at(server, max_retries=0)
        closing = threading.Timer(0.5, proposer.close)
        closing.start()
        result = proposer.mutate(seed_genome(), context())
        closing.join()
    assert not result.ok and "abandoned" in result.error
    assert result.usage["aborted_calls"] == 1 and result.usage["calls"] == 0
    assert "MATRIX_LR" in result.artifacts["prompt.md"]
    assert "abandoned" in json.loads(result.artifacts["response.json"])["errors"][0]


def test_a_malformed_200_answer_keeps_its_tokens_cost_and_text():
    good = anthropic_reply(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]), input_tokens=1234,
                           output_tokens=99)
    text = json.dumps(good.body).replace('"role": "assistant"', '"role": assistant')  # not JSON, usage still there
    with FakeServer([Reply(200, None, raw=text.encode())]) as server:
        result = anthropic_at(server, model="claude-sonnet-5-5").mutate(seed_genome(), context())
    assert not result.ok and "not a Messages response" in result.error and "JSONDecodeError" in result.error
    u = result.usage
    assert (u["calls"], u["input_tokens"], u["output_tokens"]) == (1, 1234, 99)
    assert u["cost_usd"] == pytest.approx((1234 * 2 + 99 * 10) / 1e6)
    saved = json.loads(result.artifacts["response.json"])
    assert saved["responses"][0]["unparsed"] == text
    # Cut short before its usage: the call still counts, with what is known (nothing).
    with FakeServer([Reply(200, None, raw=json.dumps(good.body)[:300].encode())]) as server:
        result = anthropic_at(server, model="claude-sonnet-5-5").mutate(seed_genome(), context())
    assert not result.ok and result.usage["calls"] == 1 and result.usage["cost_usd"] == 0


def test_crossover_shows_each_parents_changes_and_the_conflicts_to_resolve():
    a = seed_genome({"train.py": TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")}, trial=1, score=2.85)
    b = seed_genome({"train.py": TRAIN.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.03")
                     .replace("EMBEDDING_LR = 0.6", "EMBEDDING_LR = 0.5")}, trial=2, score=2.86)
    base = seed_genome(trial=-1)

    def resolve(request):
        text = user_text(request)
        start = text.index("\n<<<<<<< #1\n") + 1
        conflict = text[start: text.index("\n>>>>>>> #2\n", start) + len("\n>>>>>>> #2\n")]
        return anthropic_reply(proposal("MATRIX_LR of one, EMBEDDING_LR of the other",
                                        [("train.py", conflict, conflict.splitlines()[1] + "\n")]))
    with FakeServer([resolve]) as server:
        result = anthropic_at(server).crossover(a, b, base, context())
    assert result.ok, result.error
    text = user_text(server.received[0])
    assert "What #1 changed relative to their merge base" in text and "+MATRIX_LR = 0.05" in text
    assert "What #2 changed relative to their merge base" in text and "+EMBEDDING_LR = 0.5" in text
    child = result.files["train.py"]
    assert "MATRIX_LR = 0.05" in child and "EMBEDDING_LR = 0.5" in child and "<<<<<<<" not in child
    assert result.description == "cross #1 x #2: MATRIX_LR of one, EMBEDDING_LR of the other"


# -- Anthropic: whole searches through the CLI -------------------------------------------------

def _files_of(folder: Path):
    """Every file's bytes in a search folder, git's compressed loose objects decompressed."""
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if "objects" in path.parts and len(path.parent.name) == 2:
            try:
                data = zlib.decompress(data)
            except zlib.error:
                pass
        yield path, data


def test_anthropic_search_trains_children_and_the_key_reaches_neither_trials_nor_disk(project):
    script = [anthropic_reply(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR, DUMP_ENV])),
              anthropic_reply(proposal("lower EMBEDDING_LR 0.6 -> 0.5", [LOWER_EMBEDDING_LR]))]
    with FakeServer(script) as server:
        proc = run_evo("run", "s", "--proposer", "anthropic", "--model", "claude-sonnet-5-5", "--profile", "tiny",
                       "--budget", "2", "--trials", "3", "--strategy", "greedy", cwd=project,
                       env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url})
        status = run_evo("status", "s", cwd=project)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert len(server.received) == 2 and server.received[0].headers.get("authorization") == f"Bearer {KEY}"

    search = Search.open("s", root=project / "runs")
    try:
        trials = search.trials()
        spend = search.store.ledger.spend_usd
    finally:
        search.close()
    children = [t for t in trials if t.operator == "mutate"]
    assert [t.status for t in trials] == ["ok", "ok", "ok"]
    assert [t.proposer for t in children] == ["anthropic", "anthropic"]
    assert [t.description for t in children] == ["raise MATRIX_LR 0.04 -> 0.05", "lower EMBEDDING_LR 0.6 -> 0.5"]
    assert children[0].attrs["usage"]["input_tokens"] == 1000 and children[0].cost_usd == pytest.approx(0.004)
    assert spend == pytest.approx(0.008)
    assert "LLM spend: $0.01" in status.stdout

    # The second proposal's memory knows how the first child did (greedy plans after each result).
    assert "raise MATRIX_LR 0.04 -> 0.05 | " in user_text(server.received[1])
    folder = project / "runs" / "s" / "trials" / str(children[0].number)
    assert "MATRIX_LR = 0.04" in (folder / "prompt.md").read_text()
    assert json.loads((folder / "response.json").read_text())["responses"][0]["content"][1]["name"] == "propose_change"

    log = (folder / "run.log").read_text()
    assert "EVO_ENV" in log  # the dump ran: the check below looked at the trial's real environment
    assert KEY not in log and "ANTHROPIC_" not in log
    leaks = [str(p) for p, data in _files_of(project / "runs" / "s") if KEY.encode() in data]
    assert leaks == []


def test_edits_to_prepare_py_are_rejected_and_recorded_as_an_invalid_proposal(project):
    harness = ("prepare.py", "import os", "import os  # tampered")
    with FakeServer([anthropic_reply(proposal("shorten the evaluation", [harness]))]) as server:
        proc = run_evo("run", "s", "--proposer", "anthropic", "--profile", "tiny", "--budget", "2", "--trials", "2",
                       "--strategy", "greedy", cwd=project, env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert len(server.received) == 2  # the answer, then the one repair turn
    assert "prepare.py, which is not a mutable file" in server.received[1].body["messages"][2]["content"][0]["content"]
    search = Search.open("s", root=project / "runs")
    try:
        child = search.trials()[1]
    finally:
        search.close()
    assert child.status == "invalid_proposal" and "prepare.py, which is not a mutable file" in child.error
    assert child.attrs["usage"]["calls"] == 2
    folder = project / "runs" / "s" / "trials" / "1"
    assert len(json.loads((folder / "response.json").read_text())["responses"]) == 2
    assert "repair turn 1" in (folder / "prompt.md").read_text()


def test_max_cost_usd_stops_planning_once_the_priced_usage_reaches_it(project, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"claude-test": {"input": 20, "output": 0}}))  # $0.02 per 1000-token call
    script = [anthropic_reply(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR])),
              anthropic_reply(proposal("lower EMBEDDING_LR 0.6 -> 0.5", [LOWER_EMBEDDING_LR]))]
    with FakeServer(script) as server:
        proc = run_evo("run", "s", "--proposer", "anthropic", "--model", "claude-test", "--prices", str(prices),
                       "--max-cost-usd", "0.015", "--profile", "tiny", "--budget", "2", "--trials", "10",
                       "--strategy", "greedy", cwd=project,
                       env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "LLM spend reached the $0.015 cap" in proc.stdout
    search = Search.open("s", root=project / "runs")
    try:
        trials, spend = search.trials(), search.store.ledger.spend_usd
    finally:
        search.close()
    # The one child that was paid for still trains; nothing is planned after it.
    assert [t.status for t in trials] == ["ok", "ok"] and len(server.received) == 1
    assert trials[1].cost_usd == pytest.approx(0.02) and spend == pytest.approx(0.02)


def test_a_missing_key_or_a_bad_spec_exits_2_with_one_line_before_creating_anything(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    cases = {("--proposer", "anthropic"): "ANTHROPIC_API_KEY is not set",
             ("--proposer", "gpt"): "unknown proposer 'gpt'",
             ("--proposer", "offline:0.8,anthropic:x"): "bad weight 'x' for anthropic",
             ("--proposer", "offline,offline"): "offline is listed twice",
             ("--proposer", "command"): "needs --agent-command",
             ("--proposer", "openai-compatible", "--model", "m"): "needs --base-url",
             ("--proposer", "anthropic", "--prices", "missing.json"): "cannot read the price file"}
    for flags, message in cases.items():
        if "--prices" in flags:
            monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        assert evo_main(["run", "s", "--profile", "tiny", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
    assert not (project / "runs").exists()


# -- mixing ------------------------------------------------------------------------------------

def test_a_mix_draws_each_childs_proposer_from_the_seeded_rng_and_records_it():
    reply = anthropic_reply(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))
    with FakeServer([reply]) as server:
        mix = MixedProposer([(OfflineProposer(), 0.5), (anthropic_at(server), 0.5)])
        first = [mix.mutate(seed_genome(), context(seed=s)).proposer for s in range(8)]
        again = [mix.mutate(seed_genome(), context(seed=s)).proposer for s in range(8)]
    assert first == again and set(first) == {"offline", "anthropic"}
    assert len(server.received) == first.count("anthropic") * 2
    assert mix.name == "offline:0.5,anthropic:0.5"


# -- OpenAI-compatible endpoints ------------------------------------------------------------------

def test_openai_compatible_proposes_with_a_function_call():
    reply = chat_tool_call(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]),
                           usage={"prompt_tokens": 900, "completion_tokens": 150, "prompt_tokens_details": {"cached_tokens": 600}})
    with FakeServer([reply]) as server:
        proposer = OpenAICompatibleProposer(base_url=server.url, model="local-test", api_key="")
        result = proposer.mutate(seed_genome(), context())
    assert result.ok and "MATRIX_LR = 0.05" in result.files["train.py"]
    request = server.received[0]
    assert request.path == "/v1/chat/completions" and "authorization" not in request.headers
    assert request.body["tool_choice"] == {"type": "function", "function": {"name": "propose_change"}}
    assert request.body["tools"][0]["function"]["parameters"]["required"] == ["description", "rationale", "edits"]
    assert PROGRAM.strip()[:200] in request.body["messages"][0]["content"]
    assert (result.usage["input_tokens"], result.usage["cache_read_tokens"], result.usage["output_tokens"]) == (300, 600, 150)
    assert result.usage["cost_usd"] == 0 and result.usage["priced"] is False


def test_openai_compatible_falls_back_to_json_mode_when_the_server_refuses_tools():
    fields = proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR])

    def server_side(request):
        if "tools" in request.body:
            return Reply(400, {"error": {"message": "this model does not support tools", "type": "BadRequestError"}})
        return chat_text(json.dumps(fields))
    with FakeServer([server_side]) as server:
        proposer = OpenAICompatibleProposer(base_url=server.url, model="local-test")
        assert proposer.mutate(seed_genome(), context()).ok
        assert proposer.mutate(seed_genome(), context()).ok  # straight to JSON mode now
    assert ["tools" in r.body for r in server.received] == [True, False, False]
    second = server.received[1].body
    assert second["response_format"] == {"type": "json_object"}
    assert "Answer with one JSON object" in second["messages"][1]["content"]
    assert "calling the `propose_change` tool" not in second["messages"][1]["content"]


def test_openai_compatible_reads_json_written_into_the_text_and_repairs_through_the_tool_turn():
    thinking = "<think>maybe {lr} matters</think>\n```json\n" + json.dumps(
        proposal("raise MATRIX_LR", [("train.py", "MATRIX_LR = 9", "MATRIX_LR = 0.05")])) + "\n```"
    fixed = chat_tool_call(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))
    with FakeServer([chat_text(thinking), fixed]) as server:
        result = OpenAICompatibleProposer(base_url=server.url + "/v1", model="local-test").mutate(seed_genome(), context())
    assert result.ok and result.usage["calls"] == 2
    repair = server.received[1].body["messages"]
    assert repair[-1]["role"] == "user" and "the search text was not found" in repair[-1]["content"]


def test_openai_compatible_search_trains_a_child_through_the_cli(project):
    with FakeServer([chat_tool_call(proposal("raise MATRIX_LR 0.04 -> 0.05", [RAISE_MATRIX_LR]))]) as server:
        proc = run_evo("run", "s", "--proposer", "openai-compatible", "--base-url", server.url + "/v1", "--model",
                       "local-test", "--profile", "tiny", "--budget", "2", "--trials", "2", "--strategy", "greedy",
                       cwd=project)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    search = Search.open("s", root=project / "runs")
    try:
        child = search.trials()[1]
    finally:
        search.close()
    assert (child.status, child.proposer, child.description) == ("ok", "openai-compatible", "raise MATRIX_LR 0.04 -> 0.05")
    assert server.received[0].body["model"] == "local-test"


# -- a command-line agent -------------------------------------------------------------------------

AGENT = """
import os, sys
task = sys.stdin.read()
assert "Research program" in task and "What the search has learned" in task, "no task on stdin"
assert open(os.environ["EVO_TASK"]).read() == task
text = open("train.py").read()
open("train.py", "w").write(text.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"))
open("notes.txt", "w").write("scratch notes: ignored")
if len(sys.argv) < 2:
    open(os.environ["EVO_DESCRIPTION"], "w").write("raise MATRIX_LR to 0.05\\nMuon likes a larger step early on.\\n")
"""


def test_command_agent_edits_a_scratch_copy_and_its_change_trains(project, tmp_path):
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    proc = run_evo("run", "s", "--proposer", "command", "--agent-command", f"{sys.executable} {agent}",
                   "--profile", "tiny", "--budget", "2", "--trials", "2", "--strategy", "greedy", cwd=project)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    search = Search.open("s", root=project / "runs")
    try:
        child = search.trials()[1]
        files = search.repo.files(child.commit)
    finally:
        search.close()
    assert (child.status, child.proposer, child.description) == ("ok", "command", "raise MATRIX_LR to 0.05")
    assert child.rationale == "Muon likes a larger step early on."
    assert set(files) == {"train.py"} and "MATRIX_LR = 0.05" in files["train.py"]
    folder = project / "runs" / "s" / "trials" / "1"
    assert "Research program" in (folder / "prompt.md").read_text()
    assert "# exit code 0" in (folder / "agent.log").read_text()
    assert not list((project / "runs" / "s" / "scratch").glob("*"))  # nothing left behind


def test_command_agent_without_a_description_gets_one_from_its_change(tmp_path):
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    ctx = context()
    ctx.scratch = tmp_path / "scratch"
    result = CommandProposer(f"{sys.executable} {agent} quiet").mutate(seed_genome(), ctx)
    assert result.ok and result.description == "MATRIX_LR 0.04 -> 0.05"


def test_command_agent_past_its_timeout_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "pid"
    ctx = context()
    ctx.scratch = tmp_path / "scratch"
    t0 = time.monotonic()
    result = CommandProposer(f"sleep 60 & echo $! > {pid_file}; wait", timeout=0.5).mutate(seed_genome(), ctx)
    # Under 60 s: it did not wait for the agent's sleep (however busy the machine, the kill is what ends it).
    assert not result.ok and "ran past 0.5s" in result.error and time.monotonic() - t0 < 60
    pid = int(pid_file.read_text())
    for _ in range(50):  # the kill is sent; give the kernel a moment
        if not _alive(pid):
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the agent's background child {pid} survived")


def _alive(pid: int) -> bool:
    """Whether a process runs: a zombie waiting for init to reap it is dead already."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_key_leaves_the_engines_environment_once_a_client_holds_it(monkeypatch):
    from evo.proposers import AnthropicProposer, _keys
    monkeypatch.setattr(_keys, "_held", {})
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-held-in-memory")
    first = AnthropicProposer(base_url="http://127.0.0.1:9")
    assert "ANTHROPIC_API_KEY" not in os.environ  # an unsandboxed trial reading /proc/<engine>/environ finds nothing
    second = AnthropicProposer(base_url="http://127.0.0.1:9")  # e.g. the next member of an evo compare
    assert first.client.api_key == second.client.api_key == "sk-ant-held-in-memory"
    assert _keys.redact("log: sk-ant-held-in-memory") == "log: [redacted]"
    first.close()
    second.close()
