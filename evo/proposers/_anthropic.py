"""A proposer backed by Anthropic's Messages API (the `anthropic` SDK, 2.x).

The model answers with a forced tool call (`propose_change`): a description, a rationale and
exact search/replace edits. program.md and the parent's files carry `cache_control`, so
every call after the first reads them from the prompt cache. Newer models that refuse a
forced tool choice (HTTP 400 naming tool_choice) are asked again with `auto` and told to
answer with the tool; the proposer remembers that for the rest of the search.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from evo.proposers import _keys as keys
from evo.proposers._base import ProposerError, ProposerUnavailable
from evo.proposers._llm import CallAborted, CallFailed, ChatProposer, Reply, cut_off, first_words
from evo.proposers._pricing import DEFAULT_PRICES, Price, price_for
from evo.proposers._prompts import ANSWER_WITH_TOOL, TOOL_DESCRIPTION, TOOL_NAME, TOOL_SCHEMA, Block, Prompt

KEY_ENV = "ANTHROPIC_API_KEY"
DEFAULT_MODEL = "claude-sonnet-5-5"
CONTEXT_TOKENS = 200_000   # Claude models' context (prompt and answer together), unless --context-tokens says otherwise

if TYPE_CHECKING:  # the SDK takes a second to import: only a search that uses it pays for it
    import anthropic


def _message(e: "anthropic.APIError") -> str:
    return str(getattr(e, "api_message", None) or e.message).strip().splitlines()[0][:300]


def _block(b: Block) -> dict:
    block = {"type": "text", "text": b.text}
    if b.cache:
        block["cache_control"] = {"type": "ephemeral"}
    return block


class AnthropicProposer(ChatProposer):
    """Mutation and crossover written by a Claude model.

    >>> proposer = AnthropicProposer(model="claude-sonnet-5-5")   # doctest: +SKIP
    >>> proposal = proposer.mutate(parent, ctx)                    # doctest: +SKIP
    >>> proposal.usage["cost_usd"], proposal.artifacts.keys()      # doctest: +SKIP

    Args:
        model: the Claude model id (``--model``).
        api_key: the key; default $ANTHROPIC_API_KEY, which is then removed from this
            process's environment (see `_keys`). Kept in memory only: never written to an
            artifact, the store, or a trial's environment.
        base_url: the API's address; default $ANTHROPIC_BASE_URL, else Anthropic's.
        prices: price table (see `load_prices`); the model's entry prices each call.
        timeout: seconds one HTTP call may take before it is abandoned (the SDK retries it
            max_retries times, then the API counts as unavailable for now).
        max_retries: the SDK's own retries of 408/409/429/5xx/529, timeouts and dropped connections.
        backoff: seconds to wait before each further round of attempts once the SDK gave up
            on a transient error (default none: the search loop waits, with a growing pause
            it shows, while keeping its devices busy); when the last round fails too the
            proposal raises ProposerUnavailable.
        max_tokens: the answer's token limit (thinking included; default 16000).
        context_tokens: the model's context (default CONTEXT_TOKENS); prompts are fitted to it.
        repairs: repair turns after edits that do not apply.

    Raises ProposerError at once when there is no key.
    """

    name = "anthropic"

    def __init__(self, *, model: str = DEFAULT_MODEL, api_key: str | None = None, base_url: str | None = None,
                 prices: dict[str, Price] | None = None, timeout: float = 600.0, max_retries: int = 3,
                 backoff: tuple[float, ...] = (), max_tokens: int | None = None, repairs: int = 1,
                 context_tokens: int | None = None):
        key = api_key or keys.take(KEY_ENV)
        if not key:
            raise ProposerError(f"{KEY_ENV} is not set: export your Anthropic API key to use `proposer` anthropic")
        super().__init__(model=model, price=price_for(model, DEFAULT_PRICES if prices is None else prices),
                         repairs=repairs, secrets=(key,), context_tokens=context_tokens or CONTEXT_TOKENS,
                         max_tokens=max_tokens or 16000)
        import anthropic

        self.sdk = anthropic
        self.client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self.timeout, self.backoff = timeout, tuple(backoff)
        self._forced = True   # forced tool choice, until a model refuses it

    def _conversation(self, prompt: Prompt, ctx=None) -> "_Conversation":
        return _Conversation(self, prompt)

    def close(self) -> None:
        super().close()  # a call in flight is abandoned, a proposal waiting out a backoff gives up
        self.client.close()

    def _create(self, system: list[dict], messages: list[dict]):
        """One Messages API call, retried; returns the raw response (parsed by the conversation, so
        a malformed answer still shows what it said). Raises ProposerError (stop the search),
        ProposerUnavailable (wait and ask again), CallFailed (this proposal) or CallAborted."""
        anthropic = self.sdk
        # Still failing after the SDK's own retries: an outage, an overload, a rate limit, a dropped connection.
        transient = (anthropic.RateLimitError, anthropic.InternalServerError, anthropic.RequestTimeoutError,
                     anthropic.ConflictError, anthropic.APIConnectionError)
        attempts = len(self.backoff) + 1
        for attempt in range(attempts):
            choice = {"type": "tool", "name": TOOL_NAME} if self._forced else {"type": "auto"}
            try:
                return self._abortable(lambda: self.client.messages.with_raw_response.create(
                    model=self.model, max_tokens=self.max_tokens, system=system, messages=messages, tool_choice=choice,
                    tools=[{"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}]))
            except anthropic.AuthenticationError as e:
                raise ProposerError(f"the Anthropic API rejected the key in {KEY_ENV} (401): {_message(e)}") from None
            except anthropic.PermissionDeniedError as e:
                raise ProposerError(f"the key in {KEY_ENV} may not use {self.model} (403): {_message(e)}") from None
            except anthropic.NotFoundError as e:
                raise ProposerError(f"model {self.model!r} not found (404): {_message(e)}; choose one with `model`") from None
            except anthropic.PaymentRequiredError as e:
                raise ProposerError(f"the Anthropic account cannot pay for more calls (402): {_message(e)}") from None
            except anthropic.BadRequestError as e:
                text = _message(e)
                if self._forced and "tool_choice" in text.lower():
                    # Models that always think refuse a forced tool: ask with "auto" (the prompt says to call it).
                    self._forced = False
                    return self._create(system, messages)
                if "credit balance" in text.lower():
                    raise ProposerError(f"the Anthropic account is out of credit (400): {text}") from None
                raise CallFailed(f"the Anthropic API refused the request (400): {text}") from None
            except anthropic.APITimeoutError:
                # The SDK already retried it; a longer wait between rounds would not make the answer faster.
                raise ProposerUnavailable(f"no answer from the Anthropic API within {self.timeout:g}s (raise "
                                          f"`timeout` if the model needs longer)") from None
            except transient as e:
                if attempt == attempts - 1:
                    status = getattr(e, "status_code", None)
                    raise ProposerUnavailable(f"the Anthropic API kept failing ({status or 'connection error'}: "
                                              f"{_message(e)})") from None
            except anthropic.APIStatusError as e:
                raise CallFailed(f"the Anthropic API answered {e.status_code}: {_message(e)}") from None
            if self._closed.wait(self.backoff[attempt]):
                raise CallAborted("the search stopped while the Anthropic API was failing")
        raise AssertionError("unreachable")


class _Conversation:
    """One proposal's exchange: the first call, then at most the repair turns."""

    def __init__(self, proposer: AnthropicProposer, prompt: Prompt):
        self.proposer = proposer
        self.system = [_block(b) for b in prompt.system]
        self.messages: list[dict] = [{"role": "user", "content": [_block(b) for b in prompt.user]}]
        self.last: "anthropic.types.Message | None" = None

    def start(self) -> Reply:
        return self._call()

    def repair(self, message: str) -> Reply:
        last = self.last
        uses = [b for b in last.content if b.type == "tool_use"]
        # The assistant turn goes back unchanged (thinking blocks are bound to it), then our answer to its call.
        self.messages.append(last.to_param())
        if uses:
            content = [{"type": "tool_result", "tool_use_id": u.id, "is_error": True,
                        "content": message if i == 0 else "Ignored: send a single proposal."} for i, u in enumerate(uses)]
        else:
            content = [{"type": "text", "text": f"{message}\n\n{ANSWER_WITH_TOOL}"}]
        self.messages.append({"role": "user", "content": content})
        return self._call()

    def _call(self) -> Reply:
        answer = self.proposer._create(self.system, self.messages)
        try:
            return self._read(answer.parse())
        except Exception as e:  # not a Messages response: what it said still counts and is kept
            text = answer.http_response.text
            raise CallFailed(f"the Anthropic API answered {answer.http_response.status_code} with something that is "
                             f"not a Messages response ({type(e).__name__}: {str(e)[:200]})",
                             tokens=_tokens_in(text), raw={"unparsed": text}) from None

    def _read(self, response: "anthropic.types.Message") -> Reply:
        if not isinstance(response, self.proposer.sdk.types.Message):
            raise TypeError(f"the body is a JSON {type(response).__name__}, not a message object")
        u = response.usage
        tokens = {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                  "cache_read_tokens": u.cache_read_input_tokens or 0,
                  "cache_write_tokens": u.cache_creation_input_tokens or 0}
        raw = response.model_dump(mode="json", exclude_none=True)
        use = next((b for b in response.content if b.type == "tool_use" and b.name == TOOL_NAME), None)
        self.last = response
        words = " ".join(b.text for b in response.content if b.type == "text")
        text = "\n".join([words] + ([json.dumps(use.input, default=str)] if use is not None else [])).strip()
        if response.stop_reason == "max_tokens":
            return Reply(None, raw, tokens, cut_off(u.output_tokens, self.proposer.max_tokens, what="max_tokens"), text)
        if use is None:
            return Reply(None, raw, tokens, f"the answer did not call the {TOOL_NAME} tool (it began: "
                         f"{first_words(words)})", text)
        if not isinstance(use.input, dict):
            return Reply(None, raw, tokens, f"the {TOOL_NAME} input is not an object with description, rationale "
                         "and edits", text)
        return Reply(dict(use.input), raw, tokens, "", text)


def _tokens_in(text: str) -> dict[str, int]:
    """The token counts a malformed answer still states, as far as they can be read: from its JSON
    when that parses, else from the usage fields found in the text; none when it states none."""
    try:
        usage = json.loads(text).get("usage") or {}
    except (ValueError, AttributeError, TypeError):
        usage = {k: int(v) for k, v in re.findall(r'"(\w+_tokens)"\s*:\s*(\d+)', text[-20000:] + text[:20000])}
    if not isinstance(usage, dict):
        return {}
    named = {"input_tokens": "input_tokens", "output_tokens": "output_tokens",
             "cache_read_tokens": "cache_read_input_tokens", "cache_write_tokens": "cache_creation_input_tokens"}
    try:
        return {ours: int(usage.get(theirs) or 0) for ours, theirs in named.items() if usage.get(theirs)}
    except (ValueError, TypeError):
        return {}
