"""A search as other tools see it: Optuna's own API (what optuna-dashboard reads), a fork's wider
results.tsv, and the report's one sign for "better"."""

from __future__ import annotations

import warnings

import optuna
import pytest

from analysis.walk import best_lineage, render_walk
from conftest import run_evo
from population.lineage import MAXIMIZE, MINIMIZE, Lineage
from population.params import as_params, distribution_for
from population.search import Search
from population.store import TrialRecord

RUN = ("--profile", "tiny", "--budget", "1")


def study_of(project, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'runs' / name / 'study.db'}")


def test_optuna_sees_the_hyperparameters_as_params_with_one_distribution_each_and_the_metric_by_name(instant_project):
    proc = run_evo("run", "eco", *RUN, "--trials", "12", cwd=instant_project)
    assert proc.returncode == 0, proc.stderr
    study = study_of(instant_project, "eco")
    assert study.metric_names == ["val_bpb"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 8
    assert set(complete[0].params) == {"LR", "DEPTH", "WARMDOWN_RATIO", "BATCH"}
    assert complete[0].params == {"LR": 0.04, "DEPTH": 4, "WARMDOWN_RATIO": 0.5, "BATCH": 64}  # the seed's
    for name in ("LR", "DEPTH", "WARMDOWN_RATIO", "BATCH"):  # what importance plots need: one search space
        assert len({repr(t.distributions[name]) for t in complete if name in t.distributions}) == 1
    assert len({t.params["LR"] for t in complete}) > 1  # the offline proposer moved it
    space = optuna.search_space.intersection_search_space(complete)
    assert {"LR", "DEPTH", "WARMDOWN_RATIO", "BATCH"} <= set(space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    assert set(importances) <= {"LR", "DEPTH", "WARMDOWN_RATIO", "BATCH"} and importances
    # Metrics are numbers of their own, not one JSON string.
    frame = study.trials_dataframe()
    assert frame["user_attrs_metrics.val_bpb"].dropna().dtype.kind == "f"
    assert "user_attrs_metrics" not in frame.columns
    with Search.open("eco", root=instant_project / "runs") as search:
        seed = search.trials()[0]
    assert seed.metrics["val_bpb"] == pytest.approx(seed.value) and "peak_vram_mb" in seed.metrics


def test_a_params_space_is_fixed_by_a_names_first_value_and_values_outside_it_are_left_out():
    params, dists, new = as_params({"LR": 0.04, "DEPTH": 4, "USE_X": True, "NAME": "adam", "BETAS": (0.9, 0.95),
                                    "WD": 0.0}, {})
    assert params == {"LR": 0.04, "DEPTH": 4, "USE_X": True, "BETAS_0": 0.9, "BETAS_1": 0.95, "WD": 0.0}
    assert dists["LR"].log and dists["LR"].low == pytest.approx(4e-6) and dists["LR"].high == pytest.approx(400)
    assert dists["DEPTH"].log and (dists["DEPTH"].low, dists["DEPTH"].high) == (1, 4096)
    assert not dists["WD"].log and (dists["WD"].low, dists["WD"].high) == (-1.0, 1.0)
    # Later trials use the recorded space: a value inside it is kept, one outside or of another kind left out.
    later, later_dists, more = as_params({"LR": 4e-7, "DEPTH": 6, "USE_X": 1, "WD": 0.1}, new)
    assert later == {"DEPTH": 6, "WD": 0.1} and more == {}
    assert repr(later_dists["DEPTH"]) == repr(distribution_for(4))


def test_metrics_written_as_one_json_dict_by_older_versions_still_read():
    old = TrialRecord(0, "COMPLETE", 1.5, attrs={"metrics": {"val_bpb": 1.5, "peak_vram_mb": 10.0}})
    new = TrialRecord(1, "COMPLETE", 1.5, attrs={"metrics.val_bpb": 1.5, "metrics.peak_vram_mb": 10.0})
    assert old.metrics == new.metrics == {"val_bpb": 1.5, "peak_vram_mb": 10.0}


def _walk(direction: str, values: list[float]) -> list:
    trials = [TrialRecord(i, "COMPLETE", v, attrs={"operator": "seed" if i == 0 else "mutate",
                                                   "parents": [] if i == 0 else [i - 1], "status": "ok",
                                                   "tree": f"t{i}", "commit": f"c{i}", "description": f"step {i}"})
              for i, v in enumerate(values)]
    return best_lineage(Lineage(trials, direction=direction))


@pytest.mark.parametrize("direction,values", [(MINIMIZE, [2.0, 1.9, 1.88]), (MAXIMIZE, [100.0, 110.0, 112.0])])
def test_the_best_lineage_shows_gains_positive_when_better_in_either_direction(direction, values):
    steps = _walk(direction, values)
    assert [s.trial for s in steps] == [0, 1, 2]
    assert all(s.gain > 0 for s in steps[1:])  # every step on the way to the best got better
    text = render_walk(steps)
    assert text.splitlines()[0].split()[:4] == ["trial", "operator", "score", "gain"]
    assert all("+" in line for line in text.splitlines()[2:])


def test_a_forks_wider_results_tsv_imports_by_column_name(tmp_path, instant_project):
    wide = tmp_path / "results.tsv"
    wide.write_text("commit\tval_bpb\tval_loss\tmemory_gb\tnum_params_M\tstatus\tdescription\n"
                    "a1b2c3d\t0.997900\t2.31\t44.0\t50.3\tkeep\tbaseline\n"
                    "b2c3d4e\t0.000000\t0\t0.0\t50.3\tcrash\tdouble the width (OOM)\n"
                    "c3d4e5f\t0.993200\t2.29\t44.2\t50.3\tkeep\tlr 0.04 -> 0.05\twith a tab\n")
    proc = run_evo("import", str(wide), "fork", cwd=instant_project)
    assert proc.returncode == 0, proc.stderr
    with Search.open("fork", root=instant_project / "runs") as search:
        trials = search.trials()
    assert [t.status for t in trials] == ["ok", "crash", "ok"]
    assert trials[2].value == pytest.approx(0.9932) and trials[2].description == "lr 0.04 -> 0.05\twith a tab"
    assert trials[0].metrics["val_loss"] == pytest.approx(2.31) and trials[0].metrics["num_params_M"] == pytest.approx(50.3)
    assert trials[0].metrics["peak_vram_mb"] == pytest.approx(44.0 * 1024)

    missing = tmp_path / "missing.tsv"
    missing.write_text("commit\tloss\tmemory_gb\tstatus\tdescription\na1b2c3d\t0.99\t44.0\tkeep\tbaseline\n")
    proc = run_evo("import", str(missing), "nope", cwd=instant_project)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "the header has no val_bpb column (its columns: commit, loss, memory_gb, status, description)" in proc.stderr
