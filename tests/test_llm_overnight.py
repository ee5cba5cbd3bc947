"""An LLM proposer overnight, from the outside: the real `evo run` in a subprocess, the real
Anthropic client, and a fake Messages API on 127.0.0.1 (tests/fake_llm.py) that hangs, answers
with garbage or a 30 MB rationale, or goes away for a while.

The searches run the instant genome (tests/data/instant_genome.py), so each test measures the
engine's handling of the API, not training."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fake_llm import FakeServer, Reply, anthropic_error, anthropic_reply, proposal
from population.search import Search

RUN = ("--profile", "tiny", "--budget", "1")
KEY = f"sk-ant-test-{uuid.uuid4().hex}"
PRICE_IN, PRICE_OUT = 2 / 1e6, 10 / 1e6   # the default model's built-in prices, USD per token


def llm_env(server: FakeServer, **extra: str) -> dict:
    return {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url, **extra}


def start_evo(*args: str, cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "evo.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_evo_with(server: FakeServer, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo.cli", *args], cwd=cwd, env=llm_env(server, **extra),
                          capture_output=True, text=True, timeout=600)


def eventually(condition, what: str, limit: float = 120.0):
    """Poll `condition` until it holds (a bound against hanging, not a measurement)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def trials_of(project: Path, name: str) -> list:
    with Search.open(name, root=project / "runs") as search:
        return search.trials()


def nudge_lr(request, factor: float = 1.1) -> Reply:
    """A fresh proposal for whatever parent the prompt shows: its LR times `factor` per call."""
    text = json.dumps(request.body)
    current = re.search(r"LR = ([0-9.e-]+)", text).group(1)
    nudge_lr.calls = getattr(nudge_lr, "calls", 0) + 1
    new = f"{float(current) * factor ** nudge_lr.calls:.6g}"
    return anthropic_reply(proposal(f"LR {current} -> {new}", [("train.py", f"LR = {current}", f"LR = {new}")]))


# -- Ctrl-C while a call hangs --------------------------------------------------------------------

def test_ctrl_c_ends_a_run_at_once_while_an_llm_call_hangs_and_keeps_what_it_sent(instant_project):
    hanging = Reply(200, {}, delay=300.0)
    with FakeServer([hanging]) as server:
        proc = start_evo("run", "hang", *RUN, "--trials", "5", "--proposer", "anthropic", cwd=instant_project,
                         env=llm_env(server))
        eventually(lambda: server.received, "the first proposal's call reached the API")
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)  # not the 300 s answer, nor the SDK's retries of it
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("evo run was still running 15 s after Ctrl-C")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    trials = trials_of(instant_project, "hang")
    assert [t.operator for t in trials] == ["seed", "mutate"]
    aborted = trials[1]
    assert aborted.status == "invalid_proposal" and "abandoned" in aborted.error
    assert aborted.attrs["usage"]["aborted_calls"] == 1 and aborted.attrs["usage"]["calls"] == 0
    folder = instant_project / "runs" / "hang" / "trials" / str(aborted.number)
    assert "program" in (folder / "prompt.md").read_text().lower()  # the prompt that was sent is kept
    assert "abandoned" in json.loads((folder / "response.json").read_text())["errors"][0]
    assert KEY not in (folder / "prompt.md").read_text() + (folder / "response.json").read_text()


def test_a_second_ctrl_c_quits_at_once_and_the_next_run_trains_the_trial_again(instant_project):
    slow = {"EVO_TEST_SLEEP": "600"}  # the seed's trial runs for ten minutes unless killed
    proc = start_evo("run", "twice", *RUN, "--trials", "2", cwd=instant_project, env={**os.environ, **slow})
    eventually(lambda: (instant_project / "runs" / "twice" / "trials" / "0" / "run.log").exists(),
               "the seed's trial started")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err
    again = subprocess.run([sys.executable, "-m", "evo.cli", "run", "twice", "--trials", "2"], cwd=instant_project,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = trials_of(instant_project, "twice")
    assert [t.status for t in trials if t.operator == "seed"][-1] == "ok"
    assert sum(1 for t in trials if t.counts) == 2


# -- answers that are not what they should be -------------------------------------------------------

def test_a_malformed_answer_keeps_its_cost_and_text_and_a_30mb_rationale_is_capped(instant_project):
    good = anthropic_reply(proposal("LR 0.04 -> 0.05", [("train.py", "LR = 0.04", "LR = 0.05")]),
                           input_tokens=1234, output_tokens=99)
    malformed = json.dumps(good.body).replace('"role": "assistant"', '"role": assistant')  # a 200 that is not JSON
    huge = "because " * (30_000_000 // 8)
    bloated = anthropic_reply(proposal("LR 0.04 -> 0.03", [("train.py", "LR = 0.04", "LR = 0.03")], rationale=huge),
                              input_tokens=1000, output_tokens=7_500_000)
    script = [Reply(200, None, raw=malformed.encode()), bloated, nudge_lr]
    with FakeServer(script) as server:
        proc = run_evo_with(server, "run", "odd", *RUN, "--trials", "4", "--proposer", "anthropic",
                            "--strategy", "greedy", cwd=instant_project)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    trials = trials_of(instant_project, "odd")
    bad, big = trials[1], trials[2]
    assert bad.status == "invalid_proposal" and "not a Messages response" in bad.error
    assert (bad.attrs["usage"]["input_tokens"], bad.attrs["usage"]["output_tokens"]) == (1234, 99)
    assert bad.attrs["usage"]["cost_usd"] == pytest.approx(1234 * PRICE_IN + 99 * PRICE_OUT)
    saved = json.loads((instant_project / "runs" / "odd" / "trials" / str(bad.number) / "response.json").read_text())
    assert saved["responses"][0]["unparsed"] == malformed

    assert big.status == "ok" and len(big.attrs["rationale"]) <= 4000
    assert big.attrs["rationale"].endswith(f"[truncated at 4,000 of {len(huge.strip()):,} chars]")
    assert big.attrs["capped"]["rationale"] == {"length": len(huge.strip()), "cap": 4000}
    with Search.open("odd", root=instant_project / "runs") as search:
        message = search.repo.message(big.commit)
        spend = search.store.ledger.spend_usd
    expected = (1234 * PRICE_IN + 99 * PRICE_OUT) + (1000 * PRICE_IN + 7_500_000 * PRICE_OUT)
    paid = sum(t.attrs.get("usage", {}).get("cost_usd", 0.0) for t in trials)
    assert spend == pytest.approx(paid) and paid >= expected - 1e-9  # both odd answers were paid for and counted
    assert len(message) < 5000 and "truncated at" in message
    show = subprocess.run([sys.executable, "-m", "evo.cli", "show", "odd", str(big.number)], cwd=instant_project,
                          capture_output=True, text=True, timeout=120)
    assert show.returncode == 0 and len(show.stdout) < 50_000


# -- an outage in the middle --------------------------------------------------------------------------

def test_an_api_outage_in_the_middle_waits_keeps_devices_busy_and_the_search_finishes(instant_project):
    state = {"calls": 0}
    overloaded = anthropic_error(529, "overloaded_error", "Overloaded", {"retry-after-ms": "1"})

    def api(request):
        state["calls"] += 1
        if 3 <= state["calls"] <= 14:  # down for a dozen requests: several proposals, SDK retries included
            return overloaded
        return nudge_lr(request, 0.9)

    with FakeServer([api]) as server:
        proc = run_evo_with(server, "run", "outage", *RUN, "--trials", "10", "--proposer", "anthropic",
                            "--strategy", "greedy", "--api-backoff", "0.2,1", cwd=instant_project)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "waiting for the API (retry in" in proc.stdout and "the API answers again" in proc.stdout
    assert "stopped: reached 10 trials" in proc.stdout
    trials = trials_of(instant_project, "outage")
    assert not any("kept failing" in (t.error or "") for t in trials)  # an outage is no trial's failure
    waiting = [t for t in trials if t.operator == "reeval" and t.counts]
    assert waiting and all(t.while_waiting for t in waiting)  # the device re-evaluated while the API was down,
    assert sum(1 for t in trials if t.spends_trial) == 10  # and that did not use up the search's --trials
    assert sum(1 for t in trials if t.counts) == 10 + len(waiting)
    status = subprocess.run([sys.executable, "-m", "evo.cli", "status", "outage"], cwd=instant_project,
                            capture_output=True, text=True, timeout=120).stdout
    assert f"trials: 10 finished" in status and f"; {len(waiting)} re-evaluations while the API was down (not " \
        "counted towards --trials)" in status
    assert sum(1 for t in trials if t.operator == "mutate" and t.status == "ok") >= 3  # and mutated once it was back


def test_a_mix_keeps_proposing_offline_while_its_api_cannot_be_reached(instant_project):
    import socket
    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"}
    proc = subprocess.run([sys.executable, "-m", "evo.cli", "run", "mix", *RUN, "--trials", "8", "--proposer",
                           "offline:0.5,anthropic:0.5", "--api-backoff", "0.2,1"], cwd=instant_project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "waiting for the API (retry in" in proc.stdout and "connection error" in proc.stdout
    trials = trials_of(instant_project, "mix")
    assert sum(1 for t in trials if t.counts) == 8
    assert {t.proposer for t in trials if t.operator != "seed"} == {"offline"}  # the offline half did all the work
    assert not any(t.status == "invalid_proposal" for t in trials)
