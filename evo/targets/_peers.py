"""An OpenEvolve or ShinkaEvolve project, taken as it is (`evo init --from-openevolve DIR`, `--from-shinka DIR`).

Such a project is a program whose `EVOLVE-BLOCK-START ... EVOLVE-BLOCK-END` regions evolve
and an evaluator that scores it:

- OpenEvolve: `initial_program.py`, `evaluator.py` with `evaluate(program_path)` returning a
  dict of metrics (or an object with `.metrics` and `.artifacts`), and `config.yaml`;
- ShinkaEvolve: `initial.py`, `evaluate.py` with `main(program_path, results_dir)` writing
  `metrics.json` and `correct.json` there, and optionally a `config.yaml`.

The program becomes the one mutable file, the rest of the folder the fixed harness, plus our
runner script (`_peer_runner.py`), which calls the evaluator inside the trial's sandbox and
hands its metrics, validity and text artifacts over. Settings that have a meaning here are
taken from config.yaml (see `PeerProject`); the others are listed, so the user knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from population.search import SearchError

RUNNER = "evo_peer_evaluate.py"  # our runner's name in the search's harness
LAYOUTS = {
    # kind: (program candidates, evaluator candidates)
    "openevolve": (("initial_program.py",), ("evaluator.py",)),
    "shinka": (("initial.py", "initial_program.py"), ("evaluate.py", "evaluator.py")),
}
FLAGS = {"openevolve": "--from-openevolve", "shinka": "--from-shinka"}
# config.yaml settings that have a counterpart here (the rest are reported as not mapped).
MAPPED = {"max_iterations", "num_generations", "llm", "llm_models", "prompt", "task_sys_msg",
          "evaluator", "database", "evo_config"}


@dataclass
class PeerProject:
    """What a peer project means to evoresearch (its config.yaml's settings where they map).

    trials: max_iterations / num_generations, plus the seed.
    program: the system message (prompt.system_message / task_sys_msg) as program.md.
    models: the LLM models and weights (llm.models / llm_models), for --proposer.
    islands, migration_rate: database.num_islands and database.migration_rate.
    quick, threshold: OpenEvolve's cascade (evaluate_stage1 and its first threshold).
    eval_limit: evaluator.timeout.
    unmapped: the settings found that have no counterpart here.
    """

    kind: str
    folder: Path
    program_file: str
    evaluator: str
    evaluate: str
    metric: str = "combined_score"
    direction: str = "maximize"
    trials: int | None = None
    program: str | None = None
    models: list[tuple[str, float]] = field(default_factory=list)
    api_base: str | None = None
    islands: int | None = None
    migration_rate: float | None = None
    quick: str | None = None
    threshold: float | None = None
    eval_limit: float | None = None
    unmapped: list[str] = field(default_factory=list)

    def runner_files(self) -> dict[str, bytes]:
        """Our runner script, added to the fixed harness."""
        return {RUNNER: (Path(__file__).parent / "_peer_runner.py").read_bytes()}

    def proposer_hint(self) -> str:
        """The --proposer flags that use the configured models, or "" when none are configured."""
        if not self.models:
            return ""
        name = self.models[0][0]
        if "claude" in name:
            return f"--proposer anthropic --model {name}"
        base = f" --base-url {self.api_base}" if self.api_base else ""
        return f"--proposer openai-compatible --model {name}{base}"


def _first(folder: Path, names: tuple[str, ...], what: str, flag: str) -> str:
    for name in names:
        if (folder / name).is_file():
            return name
    raise SearchError(f"{flag} {folder}: no {what} ({' or '.join(names)}) there; point it at the project's folder")


def read_peer(kind: str, folder: str | Path) -> PeerProject:
    """The peer project in `folder`; SearchError (one line) when it is not one of `kind`."""
    flag = FLAGS[kind]
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise SearchError(f"{flag} {folder}: no such folder")
    programs, evaluators = LAYOUTS[kind]
    program = _first(folder, programs, "initial program", flag)
    evaluator = _first(folder, evaluators, "evaluator", flag)
    evaluate = f"{{python}} {RUNNER} {kind} {evaluator} {{program}}"
    peer = PeerProject(kind, folder, program, evaluator, evaluate)
    config = _config(folder / "config.yaml", flag)
    settings = config
    if kind == "openevolve":
        _openevolve_settings(peer, config)
    else:  # ShinkaEvolve's settings sit under evo_config in its Hydra-style files
        settings = config.get("evo_config") if isinstance(config.get("evo_config"), dict) else config
        _shinka_settings(peer, settings)
    peer.unmapped = sorted({k for k in (*config, *settings) if k not in MAPPED})
    return peer


def _config(path: Path, flag: str) -> dict:
    if not path.is_file():
        return {}
    import yaml  # here: only a peer project needs it (optuna depends on it)

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SearchError(f"{flag}: {path} is not valid YAML ({str(e).splitlines()[0]}); fix it or move it away") from None
    return data if isinstance(data, dict) else {}


def _openevolve_settings(peer: PeerProject, config: dict) -> None:
    if isinstance(config.get("max_iterations"), int):
        peer.trials = config["max_iterations"] + 1  # the seed is a trial here
    prompt = config.get("prompt") if isinstance(config.get("prompt"), dict) else {}
    if isinstance(prompt.get("system_message"), str) and prompt["system_message"].strip():
        peer.program = _program_md(peer, prompt["system_message"])
    llm = config.get("llm") if isinstance(config.get("llm"), dict) else {}
    models = llm.get("models") or [{"name": llm[k], "weight": 1.0} for k in ("primary_model",) if llm.get(k)]
    peer.models = [(str(m["name"]), float(m.get("weight", 1.0))) for m in models if isinstance(m, dict) and m.get("name")]
    peer.api_base = llm.get("api_base")
    database = config.get("database") if isinstance(config.get("database"), dict) else {}
    if isinstance(database.get("num_islands"), int) and database["num_islands"] >= 1:
        peer.islands = database["num_islands"]
    if isinstance(database.get("migration_rate"), (int, float)):
        peer.migration_rate = float(database["migration_rate"])
    evaluator = config.get("evaluator") if isinstance(config.get("evaluator"), dict) else {}
    if isinstance(evaluator.get("timeout"), (int, float)) and evaluator["timeout"] > 0:
        peer.eval_limit = float(evaluator["timeout"])
    thresholds = evaluator.get("cascade_thresholds") or []
    source = (peer.folder / peer.evaluator).read_text(errors="replace")
    if evaluator.get("cascade_evaluation") and thresholds and "def evaluate_stage1" in source:
        peer.quick = f"{{python}} {RUNNER} openevolve {peer.evaluator} {{program}} --stage 1"
        peer.threshold = float(thresholds[0])


def _shinka_settings(peer: PeerProject, config: dict) -> None:
    if isinstance(config.get("num_generations"), int):
        peer.trials = config["num_generations"] + 1
    if isinstance(config.get("task_sys_msg"), str) and config["task_sys_msg"].strip():
        peer.program = _program_md(peer, config["task_sys_msg"])
    models = config.get("llm_models") or []
    peer.models = [(str(m), 1.0) for m in models if isinstance(m, str)]


def _program_md(peer: PeerProject, message: str) -> str:
    return (f"# Research program\n\n{message.strip()}\n\n## How this search runs\n\nOnly the EVOLVE-BLOCK regions of "
            f"`{peer.program_file}` may change; `{peer.evaluator}` scores each version and its "
            f"`{peer.metric}` is maximized.\n")
