"""The flow shared by proposers that talk to a chat model: prompt, answer, apply, one repair turn.

A concrete proposer (Anthropic's Messages API, an OpenAI-compatible endpoint) only says how
to hold a conversation: `_conversation(prompt)` returns an object whose `start()` makes the
first call and whose `repair(message)` sends the precise error back in the same conversation.
Everything else is here: building the prompt from the search's memory and fitting it to the
model's context (`evo.proposers._fit`), applying the edits,
deciding between a child, a repair turn and an invalid proposal, adding up usage and cost,
and keeping every prompt and response for the trial folder.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

from evo.proposers._base import Genome, Proposal, ProposalContext, Proposer, ProposerError, ProposerUnavailable
from evo.proposers._edits import Change, EditError, apply_change, check_child, parse_change
from evo.proposers._pricing import Price
from evo.proposers._known import ask_again_message
from evo.proposers._fit import Budget, Fit, PromptTooLarge, TokenCounter, changed_lines, fit_prompt
from evo.proposers._prompts import ANSWER_WITH_TOOL, Prompt, Shape, crossover_prompt, mutation_prompt, repair_message
from population.errors import ProposalError

TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


class CallFailed(ProposalError):
    """This call got no usable answer (an error reply, a malformed one) but the next proposal may: not fatal.

    tokens: what the answer said it used, when it said (a malformed 200 is still billed).
    raw: what came back, kept in response.json."""

    def __init__(self, message: str, *, tokens: dict[str, int] | None = None, raw=None):
        super().__init__(message)
        self.tokens, self.raw = tokens or {}, raw


class CallAborted(ProposalError):
    """The search stopped while a call was in flight: the call is abandoned, not waited for."""


T = TypeVar("T")
POLL = 0.05  # seconds between looks at whether the proposer was closed while a call is in flight


@dataclass
class Reply:
    """One answer of the model.

    fields: the structured answer (tool arguments or parsed JSON), None when there was none.
    raw: a JSON-serialisable record of the response, kept in response.json.
    tokens: this call's token counts, keyed by TOKEN_KEYS.
    problem: why `fields` is None (no tool call, bad JSON, cut off at a token limit).
    text: what the model said, as text (its words and its tool call's arguments), for `evo show`.
    """

    fields: dict | None
    raw: Any
    tokens: dict[str, int] = field(default_factory=dict)
    problem: str = ""
    text: str = ""


def first_words(text: str, limit: int = 80) -> str:
    """The start of a model's answer, quoted on one line: what it said instead of a proposal."""
    words = " ".join(str(text or "").split())
    if not words:
        return "an empty answer"
    return repr(words if len(words) <= limit else words[:limit] + "...")


def cut_off(used: int, limit: int, *, what: str, prompt: int = 0, context: int | None = None) -> str:
    """Why an answer stopped early, with the limit that was really hit: ours (`what`, e.g. max_tokens =
    `limit`) when the answer used all of it, a full context (`prompt`: the prompt tokens the server
    counted, `context`: the model's, when known), else the server's own cap."""
    if not used:
        where = "by the server before it was complete (it gave no token count)"
    elif used >= limit:
        where = f"at {used} tokens (the {what} limit of {limit})"
    elif context and prompt and prompt + used >= context * 0.98:
        where = f"at {used} tokens (the model's {context:,}-token context was full: the prompt took {prompt:,})"
    elif prompt and not context:
        where = (f"at {used} tokens (the server's own limit, or a full context: the prompt took {prompt:,} tokens; "
                 f"{what} allowed {limit})")
    else:
        where = f"at {used} tokens (the server's own limit; {what} allowed {limit})"
    return f"the answer was cut off {where}: send a smaller change, as search/replace edits"


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
        context_tokens: the model's context, prompt and answer together (None: unknown; prompts are then
            sent whole, never fitted).
        max_tokens: the most tokens an answer may have (sent with every call, and kept free in the context).
    """

    answer = ANSWER_WITH_TOOL

    def __init__(self, *, model: str, price: Price | None = None, repairs: int = 1, secrets: tuple[str, ...] = (),
                 context_tokens: int | None = None, max_tokens: int = 16000):
        self.model, self.price, self.repairs = model, price, repairs
        self._secrets = tuple(s for s in secrets if s)
        self._closed = threading.Event()
        self.max_tokens = max_tokens
        self.budget = Budget(context_tokens, max_tokens)
        self.count = TokenCounter()
        self._warned_cut = False

    def preflight(self, parent: Genome, ctx: ProposalContext) -> list[str]:
        """Whether the mutation prompt of `parent` fits the model, as lines for the start of a run; raises
        ProposerError with one line when even the smallest prompt cannot fit."""
        build = lambda shape: mutation_prompt(parent, ctx, answer=self.answer, shape=shape)[0]
        try:
            _, fit = fit_prompt(build, dict(parent.files), self.budget, self.count, tools=self._tools,
                                rng=random.Random(0), model=self.model, program=ctx.program)
        except PromptTooLarge as e:
            raise ProposerError(str(e)) from None
        what = f"{self.name} ({self.model}): the prompt for #{parent.trial} is {fit.describe()}"
        if self.budget.context is None:
            return [f"{what}; the model's context size is unknown, so prompts are sent whole: give "
                    f"`context_tokens` N (what the server was started with) to fit them"]
        return [f"{what}, answers up to {self.budget.answer:,} tokens"]

    @property
    def _tools(self) -> bool:
        """Whether calls carry the tool's schema (it takes room in the context)."""
        return self.answer == ANSWER_WITH_TOOL

    def _conversation(self, prompt: Prompt, ctx: ProposalContext | None = None) -> Conversation:
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
        start = dict(parent.files)
        fitted = self._fit(lambda shape: mutation_prompt(parent, ctx, answer=self.answer, shape=shape)[0], start, ctx)
        if isinstance(fitted, Proposal):
            return fitted
        return self._propose(*fitted, start, ctx)

    def crossover(self, a: Genome, b: Genome, base: Genome | None, ctx: ProposalContext) -> Proposal:
        _, start = crossover_prompt(a, b, base, ctx, answer=self.answer)
        build = lambda shape: crossover_prompt(a, b, base, ctx, answer=self.answer, shape=shape)[0]
        # What the crossover is about: the lines where the merge differs from the base (or from a).
        focus = changed_lines(base.files if base is not None else a.files, start)
        fitted = self._fit(build, start, ctx, focus=focus)
        if isinstance(fitted, Proposal):
            return fitted
        proposal = self._propose(*fitted, start, ctx, crossing=True)
        # Plots and tables label children by description: make a crossover recognisable as one.
        d = proposal.description
        if d and not (f"#{a.trial}" in d and f"#{b.trial}" in d):
            proposal.description = f"cross #{a.trial} x #{b.trial}: {d}"
        return proposal

    # -- one proposal ---------------------------------------------------------

    def _fit(self, build: Callable[[Shape], Prompt], start: dict[str, str], ctx: ProposalContext,
             focus: dict[str, set[int]] | None = None) -> tuple[Prompt, Fit] | Proposal:
        """The prompt fitted to the model's context, or an invalid proposal (no call made) saying why none fits."""
        try:
            return fit_prompt(build, start, self.budget, self.count, tools=self._tools, focus=focus, rng=ctx.rng,
                              model=self.model, program=ctx.program)
        except PromptTooLarge as e:
            usage = {"model": self.model, "calls": 0, **{k: 0 for k in TOKEN_KEYS}, "cost_usd": 0.0,
                     "priced": self.price is not None}
            return self._result(start, None, usage, [build(Shape()).render()], [], [str(e)], [], ok=False,
                                error=str(e))

    def _propose(self, prompt: Prompt, fit: Fit, start: dict[str, str], ctx: ProposalContext, *,
                 crossing: bool = False) -> Proposal:
        usage = {"model": self.model, "calls": 0, **{k: 0 for k in TOKEN_KEYS}, "cost_usd": 0.0,
                 "priced": self.price is not None, "prompt_tokens_estimate": fit.tokens,
                 "context_tokens": self.budget.context, "max_tokens": self.budget.answer}
        fitted = f"<!-- fitted to the model's context: {fit.describe()} -->\n\n" if fit.cuts else ""
        transcript, responses, errors, answers = [fitted + prompt.render()], [], [], []
        began = time.monotonic()
        ctx.progress({"proposer": self.name, "model": self.model,
                      "phase": f"waiting for the model (prompt ~{fit.tokens:,} tokens)"})
        conversation = self._conversation(prompt, ctx)
        try:
            outcome = self._turns(conversation, start, ctx, usage, (prompt, fit), transcript, responses, errors,
                                  answers, crossing=crossing)
        except CallFailed as e:  # a malformed answer is billed and kept all the same
            if e.tokens or e.raw is not None:
                self._count(usage, Reply(None, e.raw, e.tokens))
                responses.append(e.raw)
            errors.append(str(e))
            outcome = (start, None, False, str(e))
        except CallAborted as e:
            usage["aborted_calls"] = 1  # billed or not, the provider knows: it is not in the usage
            errors.append(str(e))
            outcome = (start, None, False, str(e))
        except ProposerUnavailable as e:
            # The server's fault, even after a billed first answer: no trial, no failed idea; what was
            # spent (and how long the call ran) goes back with it so the search can still count it.
            usage["seconds"] = round(time.monotonic() - began, 1)
            raise ProposerUnavailable(str(e), usage=usage) from None
        except ProposerError:
            raise
        except (ConnectionError, http.client.HTTPException) as e:  # a network fault no client caught
            usage["seconds"] = round(time.monotonic() - began, 1)
            raise ProposerUnavailable(f"the connection to the model failed ({type(e).__name__}: {str(e)[:200]})",
                                      usage=usage) from None
        except Exception as e:  # anything else the answer provoked: keep what was paid for and said
            error = f"unexpected answer from the model ({type(e).__name__}: {str(e)[:300]})"
            errors.append(error)
            outcome = (start, None, False, error)
        sent = getattr(conversation, "sent", None)
        if callable(sent):  # what really went out (e.g. a JSON request after the server refused tools)
            transcript[0] = fitted + sent()
        usage["seconds"] = round(time.monotonic() - began, 1)
        files, change, ok, error = outcome
        return self._result(files, change, usage, transcript, responses, errors, answers, ok=ok, error=error)

    def _turns(self, conversation: Conversation, start: dict[str, str], ctx: ProposalContext, usage: dict,
               sent: tuple[Prompt, Fit], transcript: list[str], responses: list, errors: list[str], answers: list[str], *,
               crossing: bool):
        """The first answer, the repair turns and at most one turn more when the answer repeats an idea the lab
        notebook measured (`ctx.known_idea`): (files, change, ok, error) of the proposal."""
        change: Change | None = None
        reply = conversation.start()
        repairs, asked_again = 0, False
        while True:
            self._count(usage, reply)
            responses.append(reply.raw)
            answers.append(reply.text)
            if len(responses) == 1:
                self._check_counted(reply, *sent, ctx)
            try:
                if reply.fields is None:
                    raise EditError(reply.problem or "the answer held no proposal")
                change = parse_change(reply.fields, allow_empty=crossing)
                child = apply_change(start, change, mutable=ctx.mutable)
                check_child(child, start, allow_unchanged=crossing, is_known=ctx.is_known)
            except EditError as e:
                errors.append(str(e))
                first = str(e).splitlines()[0]
                why = ("the model's edits did not apply" if reply.fields is not None
                       else "the model gave no proposal")  # no edits came: none can have failed to apply
                room = self._repair_room(sent[1], reply, repair_message(str(e))) if repairs < self.repairs else ""
                if room:
                    first += f"; no repair turn: {room}"
                elif repairs < self.repairs:
                    repairs += 1
                    reply = self._again(conversation, repair_message(str(e)), f"repair turn {repairs}", ctx, transcript)
                    continue
                turns = f"after {repairs} repair turn(s)" if not room else "with no repair turn"
                return start, change, False, f"{why} {turns}: {first}"
            known = ctx.known_idea(child, change.description)
            if known is None:
                return child, change, True, ""
            errors.append(known)
            room = self._repair_room(sent[1], reply, ask_again_message(known)) if not asked_again else "asked once"
            if room:
                what = "after it was asked again" if asked_again else f"and it was not asked again: {room}"
                return start, change, False, f"the model's proposal repeats an idea the lab notebook knows, {what}: {known}"
            asked_again = True
            reply = self._again(conversation, ask_again_message(known), "asked again: a known idea", ctx, transcript)

    def _again(self, conversation: Conversation, message: str, turn: str, ctx: ProposalContext,
               transcript: list[str]) -> Reply:
        """One more turn of the conversation (a repair, or a known idea sent back), kept in the transcript."""
        transcript.append(f"<!-- {turn} -->\n\n{message}\n")
        ctx.progress({"proposer": self.name, "model": self.model, "phase": turn})
        return conversation.repair(message)

    def _repair_room(self, fit: Fit, reply: Reply, message: str) -> str:
        """Why one more turn with `message` cannot fit the model's context ("" when it can, or the context is unknown)."""
        context = self.budget.context
        if context is None:
            return ""
        need = fit.tokens + int(reply.tokens.get("output_tokens") or 0) + self.count(message) + self.budget.answer
        return "" if need <= context else (f"the conversation would need ~{need:,} tokens, over the model's "
                                           f"{context:,}-token context")

    def _check_counted(self, reply: Reply, prompt: Prompt, fit: Fit, ctx: ProposalContext) -> None:
        """Learn from the server's count of the prompt's tokens; say once if it counted far fewer than were
        sent (a server that silently cuts prompts to its own, smaller, context)."""
        reported = sum(int(reply.tokens.get(k) or 0) for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens"))
        if not reported:
            return
        sent = len((prompt.system_text() + prompt.user_text()).encode("utf-8", "replace"))
        self.count.learn(sent, reported)
        if reported < fit.tokens // 2 and fit.tokens > 1000 and not self._warned_cut:
            self._warned_cut = True
            ctx.say(f"{self.model} counted only {reported:,} prompt tokens for a prompt of ~{fit.tokens:,}: the server "
                    f"may be cutting prompts to a smaller context than "
                    + (f"`context_tokens` {self.budget.context:,}" if self.budget.context else "the prompt needs")
                    + " (give `context_tokens` the size the server was started with)")

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
                responses: list, errors: list[str], answers: list[str], *, ok: bool = True, error: str = "") -> Proposal:
        record = {"model": self.model, "responses": responses, "errors": errors, "answers": answers}
        artifacts = {"prompt.md": self._redact("\n".join(transcript)),
                     "response.json": self._redact(json.dumps(record, indent=2, default=str) + "\n")}
        return Proposal(files, change.description if change else "", rationale=change.rationale if change else "",
                        ok=ok, error=self._redact(error), usage=usage, artifacts=artifacts, proposer=self.name)
