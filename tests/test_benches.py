"""The benchmarks still run: each answers --help, and the engine's own benches run their smallest
setting, so a change of the library's interface cannot silently break one (two did once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))


def bench(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_answers_help(name):
    proc = bench(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "--" in proc.stdout


def test_engine_overhead_runs_a_small_search_and_prints_its_figures():
    proc = bench("engine_overhead.py", "--trials", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 trials in" in proc.stdout and "reached 4 trials" in proc.stdout
    assert "device idle between trials" in proc.stdout and "evo status on 4 trials" in proc.stdout


def test_engine_overhead_runs_on_top_of_a_pre_filled_history():
    """The figures at scale come from a search pre-filled with synthetic trials: the run resumes it, and
    its trials build on the pre-filled genomes (real commits, read back through Optuna)."""
    proc = bench("engine_overhead.py", "--trials", "40", "--run", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pre-filled 36 trials after the seed" in proc.stdout and "statuses: 40 ok" in proc.stdout
    assert "3 trials in" in proc.stdout and "reached 40 trials" in proc.stdout and "on top of 37 earlier" in proc.stdout
    assert "evo status on 40 trials" in proc.stdout


def test_workers_throughput_runs_one_worker_on_the_instant_genome(tiny_env):
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]'")
    proc = bench("workers_throughput.py", "--workers", "1", "--trials", "2", "--sleep", "0")
    if proc.returncode != 0 and "cannot start PostgreSQL" in proc.stderr:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = proc.stdout.splitlines()[-1].split()
    assert row[0] == "1" and float(row[1]) > 0   # one worker, some trials per minute


def test_strategy_landscape_runs_one_small_landscape():
    proc = bench("strategy_landscape.py", "--seeds", "1", "--trials", "12", "--strategies", "greedy,evolve",
                 "--jobs", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "greedy" in proc.stdout and "evolve" in proc.stdout


def test_memory_payoff_runs_one_small_landscape():
    proc = bench("memory_payoff.py", "--seeds", "1", "--trials", "12", "--jobs", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ratio with notebook / without" in proc.stdout and "ratio adaptive / fixed 50/50" in proc.stdout
