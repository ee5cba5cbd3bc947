"""Targets: what a search evolves (evoresearch's own harness, or any project and command)."""

from evo.targets._base import SANDBOXES, Target, read_paths, resolve_sandbox
from evo.targets._command import CommandTarget
from evo.targets._harness import HARNESS, HARNESS_GENOME, HarnessTarget, data_cache_root, describe_harness
from evo.targets._peers import PeerProject, read_peer
from population.search import SearchConfig

TARGETS = {"harness": HarnessTarget, "command": CommandTarget}


def target_of(config: SearchConfig) -> Target:
    """The target a search's configuration names (a search made before targets existed: the harness)."""
    return TARGETS[config.target.get("kind", "harness")](config)


__all__ = ["SANDBOXES", "TARGETS", "CommandTarget", "HARNESS", "HARNESS_GENOME", "HarnessTarget", "Target", "data_cache_root",
           "describe_harness", "PeerProject", "read_paths", "read_peer", "resolve_sandbox", "target_of"]
