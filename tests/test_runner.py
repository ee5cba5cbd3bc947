"""The trial runner classifies what a child did, kills what it leaves behind, and leaks no secret."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evo.runner import BwrapExecutor, View, allowed_environment, bwrap_works, run_trial, trial_environment

SUMMARY = textwrap.dedent("""
    print("---")
    for key, value in [("val_bpb", 1.234567), ("training_seconds", 1.0), ("total_seconds", 2.0),
                       ("peak_vram_mb", 10.0), ("mfu_percent", 0.0), ("total_tokens_M", 0.1),
                       ("num_steps", 5), ("num_params_M", 0.1), ("depth", 2)]:
        print(f"{key}: {value}", flush=True)
""")


def child(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "genome"
    folder.mkdir(exist_ok=True)
    (folder / "train.py").write_text("import os, sys, time, subprocess\n" + textwrap.dedent(body))
    return folder


def run(folder: Path, *, timeout=30.0, env=None, **kw):
    return run_trial(folder, log_path=folder / "run.log", env=env or {**os.environ, "PYTHONUNBUFFERED": "1"},
                     timeout=timeout, **kw)


def test_healthy_child_is_ok_with_every_summary_metric(tmp_path):
    result = run(child(tmp_path, "print('step 00001 | 50.0% | loss 3.5 | lrm 1.00')\n" + SUMMARY))
    assert result.status == "ok" and result.error == ""
    assert result.val_bpb == pytest.approx(1.234567)
    assert result.metrics["depth"] == 2 and result.metrics["num_steps"] == 5
    assert "val_bpb" in (tmp_path / "genome" / "run.log").read_text()


def test_crashing_child_is_crash_with_the_error_line(tmp_path):
    result = run(child(tmp_path, "print('starting'); raise ValueError('shapes do not match: 3 vs 4')"))
    assert result.status == "crash"
    assert "ValueError: shapes do not match" in result.error
    assert "Traceback" in result.log_tail


def test_hanging_child_is_killed_at_the_timeout(tmp_path):
    result = run(child(tmp_path, "print('compiling', flush=True); time.sleep(600)"), timeout=2)
    assert result.status == "timeout"
    assert result.wall_seconds < 60


def test_diverging_child_is_diverged_whether_it_says_fail_or_prints_nan(tmp_path):
    fail = run(child(tmp_path, "print('step 00003 | 10.0% | loss 4.2'); print('FAIL: training loss is nan at step 3'); sys.exit(1)"))
    assert fail.status == "diverged" and fail.error.startswith("FAIL")
    nan = run(child(tmp_path, "print('step 00003 | 10.0% | loss nan', flush=True); time.sleep(600)"), timeout=3)
    assert nan.status == "diverged"


def test_child_without_summary_is_no_metric(tmp_path):
    assert run(child(tmp_path, "print('trained, forgot to report')")).status == "no_metric"


def test_child_that_spawned_grandchildren_has_the_whole_group_killed(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    folder = child(tmp_path, f"""
        p = subprocess.Popen(["sleep", "600"])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        print("spawned", flush=True)
        time.sleep(600)
    """)
    result = run(folder, timeout=3)
    assert result.status == "timeout"
    pid = int(pidfile.read_text())
    for _ in range(50):  # the kill is delivered; wait for the kernel to reap it
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_summary_frees_the_device_without_waiting_for_a_slow_exit(tmp_path):
    # A child whose interpreter takes a minute to tear down after reporting is stopped early.
    result = run(child(tmp_path, SUMMARY + "\ntime.sleep(600)\n"), timeout=120)
    assert result.status == "ok"
    assert result.wall_seconds < 60


def test_progress_callback_sees_fractions_and_losses_and_can_prune(tmp_path):
    lines = "".join(f"print('step {i:05d} | {10 * i:.1f}% | loss {5 - 0.1 * i:.4f} | lrm 1.00', flush=True); time.sleep(0.05)\n"
                    for i in range(1, 8))
    seen = []

    def on_progress(fraction, loss):
        seen.append((fraction, loss))
        return fraction >= 0.5

    result = run(child(tmp_path, lines + "time.sleep(600)\n"), on_progress=on_progress)
    assert result.status == "pruned"
    assert seen[0] == pytest.approx((0.1, 4.9))
    assert seen[-1][0] == pytest.approx(0.5)


def test_child_environment_has_no_secrets_but_has_its_settings(tmp_path, monkeypatch):
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-xyz", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "GITHUB_TOKEN": "ghp",
               "DB_PASSWORD": "hunter2", "aws_secret_access_key": "aws", "MY_API_KEY": "k"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_SETTING", "not for trials")
    env = trial_environment(profile="tiny", budget=3, seed=7, device="cuda:1", threads=1)
    out = tmp_path / "env.json"
    result = run(child(tmp_path, f"import json; json.dump(dict(os.environ), open({str(out)!r}, 'w'))\n" + SUMMARY), env=env)
    assert result.status == "ok"
    seen = json.loads(out.read_text())
    assert not set(secrets) & set(seen)
    assert not any(v in json.dumps(seen) for v in ("sk-ant-xyz", "hunter2", "ghp"))
    assert seen["EVO_PROFILE"] == "tiny" and seen["EVO_SEED"] == "7" and seen["EVO_TIME_BUDGET"] == "3"
    assert seen["CUDA_VISIBLE_DEVICES"] == "1" and seen["EVO_DEVICE"] == "cuda"
    # Each run compiles into a private copy of the cache: no trial sees what another wrote there.
    assert seen["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "genome" / ".evo" / "inductor-cache")
    assert seen["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    assert seen["OMP_NUM_THREADS"] == "1"
    assert "SOME_SETTING" not in seen  # an allow-list, not a deny-list


def test_only_allowed_variables_reach_a_trial():
    env = allowed_environment({"PATH": "/bin", "HOME": "/root", "LANG": "C.UTF-8", "OPENAI_API_KEY": "x",
                               "ANTHROPIC_MODEL": "m", "Session_Token": "t", "DATABASE_URL": "postgresql://u:p@h/db",
                               "EVO_MY_SETTING": "3", "EVO_API_KEY": "k"})
    assert env == {"PATH": "/bin", "LANG": "C.UTF-8", "EVO_MY_SETTING": "3"}


def test_stop_event_interrupts_a_running_child(tmp_path):
    import threading
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    result = run(child(tmp_path, "print('training', flush=True); time.sleep(600)"), stop=stop, timeout=120)
    assert result.status == "interrupted"


def test_harness_files_are_copied_over_whatever_the_genome_has(tmp_path):
    harness = tmp_path / "harness"
    harness.mkdir()
    (harness / "prepare.py").write_text("VALUE = 'fixed'\n")
    folder = child(tmp_path, "import prepare; print('harness', prepare.VALUE)\n" + SUMMARY)
    (folder / "prepare.py").write_text("VALUE = 'tampered'\n")
    result = run(folder, harness=[harness / "prepare.py"])
    assert result.status == "ok"
    assert "harness fixed" in (folder / "run.log").read_text()


def test_a_stop_after_the_summary_keeps_the_result(tmp_path):
    # Ctrl-C during the few seconds a finished child gets to exit must not throw its result away.
    import threading
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    result = run(child(tmp_path, SUMMARY + "\ntime.sleep(600)\n"), stop=stop, timeout=120)
    assert result.status == "ok" and result.val_bpb == pytest.approx(1.234567)


@pytest.mark.skipif(bool(bwrap_works()), reason=f"the sandbox cannot run here: {bwrap_works()}")
def test_a_data_source_is_masked_wherever_the_sandbox_would_show_it(tmp_path):
    shared = tmp_path / "shared"  # a --read folder that holds a folder corpus and the data cache
    (shared / "corpus").mkdir(parents=True)
    (shared / "corpus" / "plays-val.txt").write_text("the validation text")
    (shared / "cache" / "tokens").mkdir(parents=True)
    for name in ("train.npy", "val.npy"):
        (shared / "cache" / "tokens" / name).write_text(name)
    work = tmp_path / "work"
    work.mkdir()
    probe = textwrap.dedent(f"""
        import os
        print("corpus:", sorted(os.listdir({str(shared / 'corpus')!r})))
        print("cache:", [os.path.join(d, n) for d, _, ns in os.walk({str(shared / 'cache')!r}) for n in ns])
        print("train:", open({str(shared / 'cache' / 'tokens' / 'train.npy')!r}).read())
        try:
            open({str(shared / 'corpus' / 'planted.txt')!r}, "w")
        except OSError as e:
            print("planting:", e.strerror)
    """)
    view = View(write=(work,), read=(shared, shared / "cache" / "tokens" / "train.npy"),
                masked=(shared / "corpus", shared / "cache"))
    proc = BwrapExecutor().start([sys.executable, "-c", probe], cwd=work, env=allowed_environment(dict(os.environ)),
                                 view=view)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    assert "corpus: []" in out and f"cache: ['{shared}/cache/tokens/train.npy']" in out, out
    assert "train: train.npy" in out and "planting: Read-only file system" in out, out
