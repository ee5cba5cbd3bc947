"""What a running search shows: the live view (rendered to a fixed-size rich Console), the plain
lines of a log (with a clock the test sets), `evo run` into a pipe, and `evo status --watch`
in an 80x24 terminal. Content is checked, never timing."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys

from rich.console import Console

import evo
from analysis.live import RunView, progress_line, render_live
from analysis.summary import render_status, summarize
from conftest import run_evo
from evo.cli._progress import LiveReporter, Reporter
from population.search import Search

RUN = ("--profile", "tiny", "--budget", "1")
ANSI = re.compile(r"\x1b\[")


def screen(renderable, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text().rstrip("\n").split("\n")


def busy_view() -> RunView:
    """Seven of twelve trials done in 70 s, two devices busy (one reporting, one not yet), a long description."""
    view = RunView(name="night", metric="val_bpb", strategy="evolve", proposer="offline:0.8,anthropic:0.2",
                   budget=300, target=12, started=1000.0)
    long = "raise MATRIX_LR 0.04 -> 0.05 and " + "also rebalance every learning rate of the model " * 6
    view.record("started", {"trial": 8, "slot": "cuda0", "description": long}, now=1040.0)
    view.record("started", {"trial": 9, "slot": "cuda1", "description": "DEPTH 8 -> 10"}, now=1060.0)
    view.record("progress", {"slots": [{"slot": "cuda0", "trial": 8, "fraction": 0.62, "loss": 3.0123, "seconds": 30},
                                       {"slot": "cuda1", "trial": 9, "fraction": None, "loss": None, "seconds": 10}]},
                now=1070.0)
    for n in range(7):
        view.record("finished", {"trial": n, "status": "crash" if n == 3 else "ok"}, now=1000.0 + 10 * n)
    view.done, view.best = 7, (2.8123, 5, "WARMDOWN_RATIO 0.5 -> 0.4")
    return view


def test_the_live_view_fits_80_columns_and_shows_each_device_the_trials_the_best_and_an_eta():
    lines = screen(render_live(busy_view(), now=1070.0))
    text = "\n".join(lines)
    assert all(len(line) <= 80 for line in lines) and len(lines) <= 10
    assert "trials 7/12 (1 failed)" in text and "best val_bpb 2.8123 (#5)" in text and "elapsed 1m10s" in text
    assert "eta 50s" in text  # 70 s for 7 trials, 5 to go
    cuda0 = next(line for line in lines if line.startswith("cuda0"))
    assert "#8" in cuda0 and "62%" in cuda0 and "3.012" in cuda0 and "30s" in cuda0 and "…" in cuda0
    cuda1 = next(line for line in lines if line.startswith("cuda1"))
    assert "#9" in cuda1 and "~3%" in cuda1 and "10s" in cuda1  # no progress line yet: 10 s of a 300 s budget
    harness = busy_view()
    harness.estimate = False  # a harness trial's budget starts after its start-up: no guess before its report
    cuda1 = next(line for line in screen(render_live(harness, now=1070.0)) if line.startswith("cuda1"))
    assert "#9" in cuda1 and "%" not in cuda1 and "10s" in cuda1


def test_after_ctrl_c_the_view_says_stopping_and_no_eta():
    view = busy_view()
    view.stopping = True
    text = "\n".join(screen(render_live(view, now=1070.0)))
    assert "eta" not in text and "stopping" in text
    assert "eta" not in progress_line(view, now=1070.0)


def test_a_wait_for_the_api_shows_in_the_view_and_the_line():
    view = busy_view()
    view.record("waiting", {"error": "the Anthropic API kept failing (529: Overloaded)", "seconds": 60,
                            "since": 1010.0, "tries": 2}, now=1070.0)
    lines = screen(render_live(view, now=1085.0))
    assert any(line.startswith("waiting for the API (retry in 45s; down 1m15s)") for line in lines)
    assert all(len(line) <= 80 for line in lines)
    assert "waiting for the API (retry in 45s" in progress_line(view, now=1085.0)
    assert "asking again now" in progress_line(view, now=1130.5)  # the wait is over: a probe is on its way
    view.record("resumed", {"seconds": 80}, now=1090.0)
    assert "waiting" not in "\n".join(screen(render_live(view, now=1090.0)))


def test_plain_mode_prints_starts_ends_and_a_progress_line_at_most_every_30_seconds(instant_project):
    search = evo.create_search("plain", root=instant_project / "runs", project=instant_project, profile="tiny", budget=1)
    clock = iter([0.0, 1.0, 5.0, 31.0, 40.0, 62.0, 70.0, 71.0, 72.0]).__next__
    out = io.StringIO()
    reporter = Reporter(search, evo.RunOptions(limits=evo.LimitSpec(trials=4)), out=out, clock=clock)
    reporter("started", {"trial": 0, "slot": "cpu0", "operator": "seed", "parents": [], "description": "seed genome"})
    for _ in range(4):  # at 5, 31, 40 and 62 s
        reporter("progress", {"slots": [{"slot": "cpu0", "trial": 0, "fraction": 0.5, "loss": 3.5, "seconds": 9}]})
    reporter.stopping = lambda: True  # Ctrl-C
    reporter("progress", {"slots": [{"slot": "cpu0", "trial": 0, "fraction": 0.9, "loss": 3.1, "seconds": 12}]})
    reporter("stopped", {"reason": "interrupted", "kind": "interrupted"})
    search.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("       #0    started on cpu0: seed")
    progress = [line for line in lines if line.startswith("progress:")]
    assert len(progress) == 2  # at 31 s and 62 s: never two within 30 s
    assert "trials 0/4" in progress[0] and "cpu0 #0 50% loss 3.500" in progress[0] and "elapsed 31s" in progress[0]
    assert lines[-1] == "stopped: interrupted; no successful trial"
    assert not any(ANSI.search(line) for line in lines)


def test_the_live_reporter_prints_finished_trials_above_the_view_through_a_real_run(instant_project):
    search = evo.create_search("live", root=instant_project / "runs", project=instant_project, profile="tiny", budget=1)
    console = Console(width=80, height=24, record=True, file=io.StringIO(), force_terminal=True, color_system=None)
    options = evo.RunOptions(limits=evo.LimitSpec(trials=3))
    reporter = LiveReporter(search, options, console=console, strategy="evolve", proposer="offline")
    with reporter:
        reason = evo.SearchLoop(search, evo.make_strategy("evolve"), evo.from_spec("offline"), evo.parse_devices("cpu"),
                                options, on_event=reporter).run()
    # As `evo run live --trials 6` would:
    resumed = Reporter(search, evo.RunOptions(limits=evo.LimitSpec(trials=6)), out=io.StringIO()).view
    search.close()
    assert reason.kind is evo.StopKind.TRIALS
    assert resumed.done == 3 and resumed.best is not None  # a resumed run starts from what the search has
    text = console.export_text()
    assert "[  3/3] #2" in text and "stopped: reached 3 trials; best val_bpb" in text
    assert "started on" not in text  # the view shows starts; the log above holds ends
    assert "cpu0" in text and "trials 3/3" in text


def test_evo_run_into_a_pipe_prints_plain_lines_with_progress_and_no_escape_codes(instant_project):
    proc = run_evo("run", "pipe", *RUN, "--trials", "3", cwd=instant_project,
                   env={"EVO_PROGRESS_SECONDS": "0", "EVO_TEST_STEP_SLEEP": "0.1", "TERM": "xterm-256color"})
    assert proc.returncode == 0, proc.stderr
    assert not ANSI.search(proc.stdout)
    assert "started on cpu0: seed" in proc.stdout and "[  3/3]" in proc.stdout
    assert re.search(r"^progress: trials \d/3 \| .* \| cpu0 #\d+ \d+% loss", proc.stdout, re.M), proc.stdout


def test_status_watch_fits_80x24_keeps_the_best_line_and_never_wraps(instant_project):
    assert run_evo("run", "watch", *RUN, "--trials", "25", cwd=instant_project).returncode == 0
    long = "a change described at length, " * 12 + "\nwith a second line"
    with Search.open("watch", root=instant_project / "runs") as search:
        best = search.lineage().best.trial
    # What an agent could have written (Optuna takes no new attributes on a finished trial: set it in the file).
    with sqlite3.connect(instant_project / "runs" / "watch" / "study.db") as db:
        db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'description' AND trial_id = "
                   "(SELECT trial_id FROM trials WHERE number = ?)", (json.dumps(long), best))
    env = {**os.environ, "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.run(f"{sys.executable} -m evo.cli status watch --watch 0.05 | head -c 20000", shell=True,
                          cwd=instant_project, env=env, capture_output=True, text=True, timeout=60)
    frame = proc.stdout.split("\x1b[2J\x1b[H")[1].rstrip("\n").split("\n")
    assert len(frame) <= 23 and all(len(line) <= 80 for line in frame), frame
    assert frame[0].startswith("search watch (stopped)")
    assert any(line.startswith("best: val_bpb") and f"trial #{best}: a change described" in line for line in frame)
    assert any(line.startswith("  24 ") for line in frame)  # the newest trials stay, the oldest give way


def test_status_of_a_running_search_shows_its_pace_and_no_eta_once_it_is_stopping(instant_project):
    assert run_evo("run", "pace", *RUN, "--trials", "2", cwd=instant_project).returncode == 0
    with Search.open("pace", root=instant_project / "runs") as search:
        s = summarize(search)
    s["running"] = True
    s["run"] = {"target": 10, "elapsed": 65.0, "eta": 260.0, "stopping": False, "waiting": None}
    text = render_status(s, width=80, height=24)
    assert "this run: 2/10 trials, elapsed 1m05s, eta 4m20s" in text
    s["run"].update(stopping=True, eta=None)
    text = render_status(s, width=80, height=24)
    assert "this run: 2/10 trials, elapsed 1m05s, stopping" in text and "eta" not in text


def test_the_library_text_an_event_carries_shows_the_command_lines_flags():
    """A wait's error, a proposer's remark and a stop's reason name library parameters (`timeout`); the
    lines and the view show evo run's flags, as before the library's messages named parameters."""
    class NoSearch:  # the reporter reads the search's numbers when it can; here it cannot
        config = type("Config", (), {"name": "s", "metric": "val_bpb", "budget": 1.0, "target": None})()

    out = io.StringIO()
    reporter = Reporter(NoSearch(), evo.RunOptions(), out=out, clock=lambda: 100.0)
    reporter("waiting", {"error": "no answer within 600s (raise `timeout` if the model needs longer)", "seconds": 60,
                         "since": 90.0, "tries": 1})
    reporter("proposer", {"line": "give `context_tokens` the size the server was started with"})
    reporter("stopped", {"reason": "reached 1 trials and none succeeded: run `evo run s --trials 2`", "kind": "error"})
    lines = out.getvalue().splitlines()
    assert "(raise --proposer-timeout if the model needs longer)" in lines[0], lines
    assert lines[1] == "proposer: give --context-tokens the size the server was started with"
    assert lines[2].startswith("stopped: reached 1 trials and none succeeded: run `evo run s --trials 2`;")
    assert "--proposer-timeout" in reporter.view.waiting["error"]  # the live view's wait line too
