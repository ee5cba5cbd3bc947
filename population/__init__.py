"""The data layer: genomes in git, trials in Optuna, lineage derived from both."""

from population.genomes import GenomeRepo, genome_hash, merge_texts
from population.lineage import Individual, Lineage
from population.store import TrialRecord, TrialStore

__all__ = ["GenomeRepo", "genome_hash", "merge_texts", "Individual", "Lineage", "TrialRecord", "TrialStore"]
