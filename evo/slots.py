"""A slot: one place a trial runs. A leaf module: the targets need the type, `evo.devices`
(which asks a target's harness how many GPUs it sees) builds the slots, and neither imports
the other through it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """One place a trial can run: a GPU, or a share of the CPU cores. Configuration only: the
    loop keeps what is running where."""

    name: str          # unique, also the worktree's folder name
    device: str        # what the trial sees: cpu, cuda:N
    threads: int | None = None
