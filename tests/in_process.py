"""A runner that runs the instant genome (tests/data/instant_genome.py) in the test's own process.

For tests of the engine's and the loop's decisions (what runs next, what is kept, when a search
stops): they need each trial's result, not a trial process. The genome's own `main` is called,
with the trial's environment (its seed, its budget, the EVO_TEST_* switches), so the scores are
the ones a real run prints. Progress is not reported while it runs (nothing is pruned). The sandbox,
the budget clock, progress and the process itself are what the tests of the runner (test_runner,
test_trust) and the end-to-end searches (test_search) check.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path
from unittest import mock

from evo.runner import TrialResult, TrialRunner
from population.store import TrialStatus

# os.environ and sys.stdout belong to the whole process: one genome at a time uses them.
_ONE_AT_A_TIME = threading.Lock()


class InstantRunner(TrialRunner):
    """Calls the genome's `main()` here and reads its summary block; `runs` lists the trials run, by number."""

    def __init__(self):
        super().__init__()
        self.runs: list[int] = []

    def run(self, workdir, *, log_path, env, timeout, on_progress=None, stop=None, on_start=None, **_) -> TrialResult:
        path = Path(workdir) / "train.py"
        namespace = {"__name__": "instant_genome"}  # not "__main__": defines main() without calling it
        output = io.StringIO()
        error = ""
        with _ONE_AT_A_TIME, mock.patch.dict(os.environ, env), contextlib.redirect_stdout(output):
            try:
                exec(compile(path.read_text(), str(path), "exec"), namespace)
                namespace["main"]()
            except Exception as e:  # what the genome raised is its crash, as a real run reports it
                error = f"{type(e).__name__}: {e}"
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(output.getvalue())
        self.runs.append(int(log_path.parent.name))  # the trial's folder is named by its number
        if error:
            return TrialResult(TrialStatus.CRASH, error=error, log_tail=output.getvalue()[-2000:])
        summary = output.getvalue().split("\n---\n", 1)[1]
        metrics = {key: float(value) for key, value in (line.split(": ", 1) for line in summary.splitlines())}
        return TrialResult(TrialStatus.OK, metrics=metrics, log_tail=output.getvalue()[-2000:])
