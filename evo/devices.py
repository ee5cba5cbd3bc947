"""Where trials run: GPU slots and shares of the CPU cores."""

from __future__ import annotations

import os
from dataclasses import dataclass

from population.search import SearchError


@dataclass(frozen=True)
class Slot:
    """One place a trial can run: a GPU, or a share of the CPU cores. Configuration only: the
    loop keeps what is running where."""

    name: str          # unique, also the worktree's folder name
    device: str        # what the trial sees: cpu, cuda:N
    threads: int | None = None


def parse_devices(spec: str | None, cuda_devices: int = 0) -> list[Slot]:
    """`cuda:0,cuda:1` -> two GPU slots; `cpu` -> one CPU slot; `cpu:2` -> two CPU slots sharing the cores.

    Default (None): every visible GPU (`cuda_devices` of them), else one CPU slot."""
    if not spec:
        spec = ",".join(f"cuda:{i}" for i in range(cuda_devices)) or "cpu"
    slots: list[Slot] = []
    cores = os.cpu_count() or 1
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "cpu" or part.startswith("cpu:"):
            count = part.split(":", 1)[1] if ":" in part else "1"
            if not count.isdigit() or int(count) < 1:
                raise SearchError(f"bad device {part!r}: write cpu or cpu:N with N >= 1 concurrent CPU trials")
            n = int(count)
            slots += [Slot(f"cpu{i}", "cpu", threads=max(1, cores // n)) for i in range(n)]
        elif part == "cuda" or (part.startswith("cuda:") and part[5:].isdigit()):
            slots.append(Slot(part.replace(":", ""), part if ":" in part else "cuda:0"))
        else:
            raise SearchError(f"bad device {part!r}: use cuda:N, cpu or cpu:N, separated by commas")
    if len({s.name for s in slots}) != len(slots):
        raise SearchError(f"device listed twice in {spec!r}")
    return slots


def default_slots(search) -> list[Slot]:
    """Every GPU this machine has, else one CPU slot (what `--devices` defaults to).

    A search with evoresearch's harness asks it (it sees what its torch sees); any other
    project is answered by nvidia-smi."""
    if not search.config.target:
        from evo.targets import describe_harness
        return parse_devices(None, describe_harness(search.paths.harness / "prepare.py", search.config.profile)["cuda_devices"])
    return parse_devices(None, _nvidia_gpus())


def _nvidia_gpus() -> int:
    import shutil
    import subprocess
    if shutil.which("nvidia-smi") is None:
        return 0
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU ")) if proc.returncode == 0 else 0
