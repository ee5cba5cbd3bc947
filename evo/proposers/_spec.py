"""Building proposers by name: what `evo run --proposer SPEC` builds, for a notebook too.

>>> proposer = from_spec("offline:0.8,anthropic:0.2", model="claude-sonnet-5-5")   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable

from evo.proposers._adaptive import AdaptiveProposer
from evo.proposers._anthropic import DEFAULT_MODEL, AnthropicProposer
from evo.proposers._base import Proposer, ProposerError
from evo.proposers._command import CommandProposer
from evo.proposers._mixed import MixedProposer
from evo.proposers._offline import OfflineProposer
from evo.proposers._openai_compat import OpenAICompatibleProposer
from evo.proposers._sampler import SAMPLERS, SamplerProposer
from evo.proposers._pricing import Price, load_prices, price_for
from population.errors import ConfigError

PROPOSERS = ("offline", "anthropic", "openai-compatible", "command", *SAMPLERS)
ADAPTIVE = "adaptive:"   # a mix whose weights learn: `adaptive:offline,anthropic` (see evo.proposers._adaptive)


class SpecError(ConfigError, ValueError):
    """A proposer that cannot be built as asked; the message is one line saying what to change."""


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """`offline:0.8,anthropic:0.2` -> [("offline", 0.8), ("anthropic", 0.2)]; a bare name weighs 1.
    An adaptive mix (`adaptive:offline,anthropic`) gives its members the same way (weights are priors)."""
    spec = spec.strip()
    spec = spec[len(ADAPTIVE):] if spec.startswith(ADAPTIVE) else spec
    mix, hint = [], f"use {', '.join(PROPOSERS)} or a weighted mix such as offline:0.8,anthropic:0.2"
    for part in (p.strip() for p in spec.split(",")):
        name, sep, weight = part.partition(":")
        name = name.strip()
        if name not in PROPOSERS:
            raise SpecError(f"unknown proposer {name!r} in `proposer` {spec!r}: {hint}")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise SpecError(f"bad weight {weight!r} for {name} in `proposer` {spec!r}: use a positive number, e.g. {name}:0.2")
        if name in (n for n, _ in mix):
            raise SpecError(f"{name} is listed twice in `proposer` {spec!r}")
        mix.append((name, value))
    return mix


def from_spec(spec: str = "offline", *, model: str | None = None, base_url: str | None = None,
              openai_model: str | None = None, openai_mode: str = "auto", agent_command: str | None = None,
              prices: str | Path | dict[str, Price] | None = None, timeout: float | None = None,
              max_cost_usd: float | None = None, warn: Callable[[str], None] | None = None,
              context_tokens: int | None = None, max_tokens: int | None = None) -> Proposer:
    """The proposer (or weighted mix) that `spec` names, configured as the `evo run` flags would.

    Args:
        spec: a proposer name or a weighted mix, e.g. "offline:0.8,anthropic:0.2"; "adaptive:" before a mix
            makes its weights learn from which member's children make new bests (`AdaptiveProposer`).
        model: the anthropic model (default DEFAULT_MODEL), or the openai-compatible one when
            anthropic is not in the mix.
        base_url: the openai-compatible endpoint (default $OPENAI_BASE_URL).
        openai_model: the openai-compatible model when `model` names the anthropic one.
        openai_mode: how the openai-compatible model answers (auto, tools, json, text).
        agent_command: the command proposer's shell command.
        prices: a price file, a ready table, or None for the built-in table (plus $EVO_PRICES).
        timeout: seconds one LLM call (or one agent run) may take.
        max_cost_usd: the search's spend cap; a model without a known price cannot honour it.
        warn: where a warning goes (default: stderr).
        context_tokens: the LLM's context in tokens (default: anthropic's 200,000; unknown for openai-compatible).
        max_tokens: the most tokens an LLM answer may have (default: 16000, or a quarter of a given context
            for openai-compatible).

    Raises:
        SpecError: a bad spec, a missing flag or key, or a bad price file; nothing is left open.
    """
    mix = parse_spec(spec)
    try:
        table = prices if isinstance(prices, dict) else load_prices(prices)
    except ValueError as e:
        raise SpecError(str(e)) from None
    options = dict(model=model, base_url=base_url, openai_model=openai_model, openai_mode=openai_mode,
                   agent_command=agent_command, prices=table, timeout=timeout, max_cost_usd=max_cost_usd,
                   warn=warn or (lambda text: print(f"warning: {text}", file=sys.stderr)),
                   names=[n for n, _ in mix], context_tokens=context_tokens, max_tokens=max_tokens)
    built: list[tuple[Proposer, float]] = []
    try:
        for name, weight in mix:
            built.append((_one(name, **options), weight))
    except (ProposerError, SpecError) as e:  # e.g. a missing key: say so before anything is created
        for proposer, _ in built:
            proposer.close()
        raise SpecError(str(e)) from None
    if spec.strip().startswith(ADAPTIVE):
        return AdaptiveProposer(built)
    return built[0][0] if len(built) == 1 else MixedProposer(built)


def _one(name: str, *, model, base_url, openai_model, openai_mode, agent_command, prices, timeout, max_cost_usd,
         warn, names, context_tokens, max_tokens) -> Proposer:
    limit = {"timeout": timeout} if timeout else {}
    tokens = {"context_tokens": context_tokens, "max_tokens": max_tokens}
    if context_tokens and max_tokens and max_tokens >= context_tokens // 2:
        raise SpecError(f"`max_tokens` {max_tokens} leaves too little of `context_tokens` {context_tokens} for the "
                        f"prompt: give the answer at most a half (e.g. `max_tokens` {context_tokens // 4})")
    if name == "offline":
        return OfflineProposer()
    if name in SAMPLERS:
        return SamplerProposer(name)
    if name == "anthropic":
        model = model or DEFAULT_MODEL
        if price_for(model, prices) is None:
            if max_cost_usd:
                raise SpecError(f"no price known for model {model!r}, so max_cost_usd cannot be enforced: "
                                "add it to a `prices` file")
            warn(f"no price known for model {model!r}: its calls count as $0 (add it with `prices` FILE)")
        return AnthropicProposer(model=model, prices=prices, **limit, **tokens)
    if name == "openai-compatible":
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise SpecError("`proposer` openai-compatible needs `base_url`, e.g. http://localhost:8000/v1")
        model = openai_model or (model if "anthropic" not in names else None)
        if not model:
            raise SpecError("`proposer` openai-compatible needs the model the server serves: `model` NAME "
                            "(`openai_model` NAME when mixed with anthropic)")
        return OpenAICompatibleProposer(base_url=base_url, model=model, prices=prices, mode=openai_mode or "auto",
                                        **limit, **tokens)
    if not agent_command:
        raise SpecError("`proposer` command needs `agent_command` \"...\": the agent to run in a copy of the parent")
    return CommandProposer(agent_command, **limit)
