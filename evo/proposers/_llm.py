"""The flow shared by proposers that talk to a chat model: prompt, answer, apply, one repair turn.

A concrete proposer (Anthropic's Messages API, an OpenAI-compatible endpoint) only says how
to hold a conversation: `_conversation(prompt)` returns an object whose `start()` makes the
first call and whose `repair(message)` sends the precise error back in the same conversation.
Everything else is here: building the prompt from the search's memory, applying the edits,
deciding between a child, a repair turn and an invalid proposal, adding up usage and cost,
and keeping every prompt and response for the trial folder.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError, ProposerUnavailable
from evo.proposers._edits import Change, EditError, apply_change, check_child, parse_change
from evo.proposers._pricing import Price
from evo.proposers._prompts import ANSWER_WITH_TOOL, Prompt, crossover_prompt, mutation_prompt, repair_message

TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


class CallFailed(Exception):
    """This call got no usable answer (an error reply, a malformed one) but the next proposal may: not fatal.

    tokens: what the answer said it used, when it said (a malformed 200 is still billed).
    raw: what came back, kept in response.json."""

    def __init__(self, message: str, *, tokens: dict[str, int] | None = None, raw=None):
        super().__init__(message)
        self.tokens, self.raw = tokens or {}, raw


class CallAborted(Exception):
    """The search stopped while a call was in flight: the call is abandoned, not waited for."""


T = TypeVar("T")
POLL = 0.05  # seconds between looks at whether the proposer was closed while a call is in flight


@dataclass
class Reply:
    """One answer of the model.

    fields: the structured answer (tool arguments or parsed JSON), None when there was none.
    raw: a JSON-serialisable record of the response, kept in response.json.
    tokens: this call's token counts, keyed by TOKEN_KEYS.
    problem: why `fields` is None (no tool call, bad JSON, cut off at max_tokens).
    """

    fields: dict | None
    raw: Any
    tokens: dict[str, int] = field(default_factory=dict)
    problem: str = ""


class Conversation(Protocol):
    def start(self) -> Reply: ...

    def repair(self, message: str) -> Reply: ...


class ChatProposer(Proposer):
    """Base of the model-driven proposers: turns a conversation into a Proposal.

    Args:
        model: the model's name, recorded in the usage of every proposal.
        price: what a call costs (None: unknown, recorded as $0 with ``priced: False``).
        repairs: repair turns after an answer that does not apply (1: one chance to fix it).
        secrets: strings that must never reach an artifact (the API key), replaced if they ever do.
    """

    answer = ANSWER_WITH_TOOL

    def __init__(self, *, model: str, price: Price | None = None, repairs: int = 1, secrets: tuple[str, ...] = ()):
        self.model, self.price, self.repairs = model, price, repairs
        self._secrets = tuple(s for s in secrets if s)
        self._closed = threading.Event()

    def _conversation(self, prompt: Prompt) -> Conversation:
        raise NotImplementedError

    def close(self) -> None:
        """Abandon every call in flight (they raise CallAborted at once) and refuse new ones."""
        self._closed.set()

    def _abortable(self, call: Callable[[], T]) -> T:
        """Run one blocking HTTP call so that `close` ends the wait for it at once.

        The call runs in a daemon thread: an HTTP client cannot be interrupted from outside
        while it reads, but a daemon thread does not keep the process alive, and the
        connection dies with it. Whatever the call raises is raised here."""
        if self._closed.is_set():
            raise CallAborted("the search stopped before the call")
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as e:  # handed to the waiting thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=run, name="llm-call", daemon=True).start()
        while not done.wait(POLL):
            if self._closed.is_set():
                raise CallAborted("the search stopped while a call to the model was in flight (abandoned)")
        if "error" in box:
            raise box["error"]
        return box["value"]

    # -- the two operators ----------------------------------------------------

    def mutate(self, parent: Genome, ctx: ProposalContext) -> Proposal:
        prompt, start = mutation_prompt(parent, ctx, answer=self.answer)
        return self._propose(prompt, start, ctx)

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        prompt, start = crossover_prompt(a, b, base, ctx, answer=self.answer)
        proposal = self._propose(prompt, start, ctx, crossing=True)
        # Plots and tables label children by description: make a crossover recognisable as one.
        d = proposal.description
        if d and not (f"#{a.trial}" in d and f"#{b.trial}" in d):
            proposal.description = f"cross #{a.trial} x #{b.trial}: {d}"
        return proposal

    # -- one proposal ---------------------------------------------------------

    def _propose(self, prompt: Prompt, start: dict[str, str], ctx: ProposalContext, *, crossing: bool = False) -> Proposal:
        usage = {"model": self.model, "calls": 0, **{k: 0 for k in TOKEN_KEYS}, "cost_usd": 0.0,
                 "priced": self.price is not None}
        transcript, responses, errors = [prompt.render()], [], []
        change: Change | None = None
        conversation = self._conversation(prompt)
        try:
            reply = conversation.start()
            for turn in range(self.repairs + 1):
                self._count(usage, reply)
                responses.append(reply.raw)
                try:
                    if reply.fields is None:
                        raise EditError(reply.problem or "the answer held no proposal")
                    change = parse_change(reply.fields, allow_empty=crossing)
                    child = apply_change(start, change, mutable=ctx.mutable)
                    check_child(child, start, allow_unchanged=crossing, is_known=ctx.is_known)
                except EditError as e:
                    errors.append(str(e))
                    if turn < self.repairs:
                        message = repair_message(str(e))
                        transcript.append(f"<!-- repair turn {turn + 1} -->\n\n{message}\n")
                        reply = conversation.repair(message)
                        continue
                    first = str(e).splitlines()[0]
                    return self._result(start, change, usage, transcript, responses, errors, ok=False,
                                        error=f"the model's edits did not apply after {self.repairs} repair turn(s): {first}")
                return self._result(child, change, usage, transcript, responses, errors)
        except CallFailed as e:  # a malformed answer is billed and kept all the same
            if e.tokens or e.raw is not None:
                self._count(usage, Reply(None, e.raw, e.tokens))
                responses.append(e.raw)
            errors.append(str(e))
            return self._result(start, change, usage, transcript, responses, errors, ok=False, error=str(e))
        except CallAborted as e:
            usage["aborted_calls"] = 1  # billed or not, the provider knows: it is not in the usage
            errors.append(str(e))
            return self._result(start, change, usage, transcript, responses, errors, ok=False, error=str(e))
        except ProposerUnavailable as e:
            if not usage["calls"]:
                raise  # nothing billed, nothing to keep: the search waits and asks again
            errors.append(str(e))  # a repair turn that found the API gone: the first answer was billed
            return self._result(start, change, usage, transcript, responses, errors, ok=False, error=str(e))
        except ProposerError:
            raise
        except Exception as e:  # anything else the answer provoked: keep what was paid for and said
            error = f"unexpected answer from the model ({type(e).__name__}: {str(e)[:300]})"
            errors.append(error)
            return self._result(start, change, usage, transcript, responses, errors, ok=False, error=error)

    def _count(self, usage: dict, reply: Reply) -> None:
        usage["calls"] += 1
        for key in TOKEN_KEYS:
            usage[key] += int(reply.tokens.get(key, 0) or 0)
        if self.price is not None:
            usage["cost_usd"] = round(usage["cost_usd"] + self.price.cost(**{k: int(reply.tokens.get(k, 0) or 0)
                                                                            for k in TOKEN_KEYS}), 8)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def _result(self, files: dict[str, str], change: Change | None, usage: dict, transcript: list[str],
                responses: list, errors: list[str], *, ok: bool = True, error: str = "") -> Proposal:
        record = {"model": self.model, "responses": responses, "errors": errors}
        artifacts = {"prompt.md": self._redact("\n".join(transcript)),
                     "response.json": self._redact(json.dumps(record, indent=2, default=str) + "\n")}
        return Proposal(files, change.description if change else "", rationale=change.rationale if change else "",
                        ok=ok, error=self._redact(error), usage=usage, artifacts=artifacts, proposer=self.name)
