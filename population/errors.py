"""The errors evoresearch raises on purpose: one base, so a caller can catch any of them, and a kind each.

Every message is one line that says what is wrong and how to fix it, naming the library's own
parameters in backquotes (`trials`, `cache_dir`; min_gain, noise_runs, promote_top, max_vram_gb
and max_cost_usd also bare); the command line shows them as its flags (`--trials`, `--min-gain`:
evo.cli's PARAMETER_FLAGS).
Advice to run a whole command quotes it as typed (`evo run NAME --trials 10`). The classes
raised are the specific ones of each module (`SearchError`, `LadderError`, `ProposerError` ...);
those that were a `ValueError`, `RuntimeError` or `LookupError` before still are.

    >>> try:
    ...     evo.create_search("bad name!", project=".")          # doctest: +SKIP
    ... except EvoError as e:
    ...     print(e)
"""


class EvoError(Exception):
    """Base of every error evoresearch raises on purpose."""


class ConfigError(EvoError):
    """How something was asked for cannot work (a search, an option, a spec, a file to import)."""


class OptionError(ConfigError, ValueError):
    """A value given to a library call cannot work (an unknown name, a number out of range, a malformed
    price file); a ValueError too, as these always were."""


class StorageError(EvoError):
    """The search's study, database or git remote cannot be opened or reached."""


class ProposalError(EvoError):
    """A proposer could not make a child (now, or at all)."""
