"""The data layer: genomes in git, trials in Optuna, lineage derived from both, the search folder.

Nothing here runs a genome or draws a figure: the engine (`evo`) writes through these
classes and the read-only views (`analysis`) read through them.
"""

from population.errors import ConfigError, EvoError, OptionError, ProposalError, StorageError
from population.folder import SearchFolder, TrialFolder
from population.genomes import Genome, GenomeRepo, RemoteError, genome_hash, merge_texts
from population.importer import import_results_tsv, is_imported
from population.lineage import Individual, Lineage, Result, finish_order, is_improvement, strategy_of
from population.results_tsv import TsvError, parse_results_tsv, results_tsv
from population.search import Search, SearchConfig, SearchError
from population.store import StoreUnreachable, TrialRecord, TrialStatus, TrialStore, is_transient

__all__ = ["ConfigError", "EvoError", "OptionError", "ProposalError", "StorageError", "SearchFolder", "TrialFolder", "Genome", "GenomeRepo", "RemoteError", "genome_hash", "merge_texts",
           "import_results_tsv", "is_imported", "Individual", "Lineage", "Result", "finish_order", "is_improvement",
           "strategy_of", "TsvError", "parse_results_tsv", "results_tsv", "Search", "SearchConfig", "SearchError",
           "StoreUnreachable", "TrialRecord", "TrialStatus", "TrialStore", "is_transient"]
