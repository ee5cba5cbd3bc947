"""Where trials run: GPU slots and shares of the CPU cores."""

from __future__ import annotations

import os

from evo.slots import Slot
from evo.targets import describe_harness
from population.search import SearchError

OVERSUBSCRIBE = 4  # CPU slots per core beyond which --devices is refused

__all__ = ["OVERSUBSCRIBE", "Slot", "check_slots", "default_slots", "nvidia_gpus", "parse_devices", "visible_gpus"]


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
            if n > OVERSUBSCRIBE * cores:
                raise SearchError(f"{part} asks for {n} concurrent CPU trials on {cores} cores: each would get a sliver "
                                  f"of a core and its own memory; use at most cpu:{cores} (cpu:{OVERSUBSCRIBE * cores} "
                                  "at the very most)")
            slots += [Slot(f"cpu{i}", "cpu", threads=max(1, cores // n)) for i in range(n)]
        elif part == "cuda" or (part.startswith("cuda:") and part[5:].isdigit()):
            slots.append(Slot(part.replace(":", ""), part if ":" in part else "cuda:0"))
        else:
            raise SearchError(f"bad device {part!r}: use cuda:N, cpu or cpu:N, separated by commas")
    if len({s.name for s in slots}) != len(slots):
        raise SearchError(f"device listed twice in {spec!r}")
    return slots


def check_slots(slots: list[Slot], cuda_devices: int) -> list[str]:
    """Check slots against the machine before anything runs on them: a GPU the harness does not
    see is a SearchError (its trials would all crash); more CPU slots than cores is a warning
    (allowed: trials share the cores and take longer, but their CPU clock stays fair).

    Args:
        slots: from `parse_devices`.
        cuda_devices: how many GPUs the harness sees here (`describe_harness(...)["cuda_devices"]`).

    Returns the warnings, one line each."""
    for s in slots:
        if s.device.startswith("cuda"):
            index = int(s.device.split(":", 1)[1])
            if index >= cuda_devices:
                seen = (f"sees {cuda_devices} GPU(s) here: pick from cuda:0 to cuda:{cuda_devices - 1}" if cuda_devices
                        else "sees no GPU here: use `devices` cpu")
                raise SearchError(f"`devices` {s.device}: the harness {seen}")
    cores = os.cpu_count() or 1
    cpu = [s for s in slots if s.device == "cpu"]
    if len(cpu) > cores:
        return [f"{len(cpu)} CPU slots on {cores} cores: trials share the cores and each takes longer (their CPU "
                f"clock stays fair); cpu:{cores} runs as many trials per hour with less memory"]
    return []


def default_slots(search) -> list[Slot]:
    """Every GPU this machine has, else one CPU slot (what `--devices` defaults to).

    A search with evoresearch's harness asks it (it sees what its torch sees); any other
    project is answered by nvidia-smi."""
    return parse_devices(None, visible_gpus(search))


def visible_gpus(search) -> int:
    """How many GPUs a search's trials can use here: what its harness's torch sees, or for any
    other project what nvidia-smi lists."""
    if not search.config.target:
        return int(describe_harness(search.paths.harness / "prepare.py", search.config.profile).get("cuda_devices", 0))
    return nvidia_gpus()


def nvidia_gpus() -> int:
    """The GPUs nvidia-smi lists (0 without it)."""
    import shutil
    import subprocess
    if shutil.which("nvidia-smi") is None:
        return 0
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU ")) if proc.returncode == 0 else 0
