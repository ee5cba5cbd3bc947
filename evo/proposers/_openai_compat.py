"""A proposer for local models behind an OpenAI-compatible `/v1/chat/completions` endpoint.

vLLM, llama.cpp's server, Ollama and most gateways speak this protocol. The same prompts as
the Anthropic proposer are sent; the answer comes, in order of preference, as a function
call (`tools`), as a JSON object (`response_format: json_object`), or as plain text holding
a JSON object. In `auto` mode a server that refuses tools (or JSON mode) is asked again in
the next mode, and the proposer stays there for the rest of the search. Only the standard
library is used (urllib): no extra dependency.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request

from evo.proposers import _keys as keys
from evo.proposers._base import ProposalContext, ProposerError, ProposerUnavailable
from evo.proposers._llm import CallAborted, CallFailed, ChatProposer, Reply, cut_off, first_words
from evo.proposers._pricing import Price, price_for
from evo.proposers._prompts import ANSWER_AS_JSON, ANSWER_WITH_TOOL, TOOL_DESCRIPTION, TOOL_NAME, TOOL_SCHEMA, Prompt
from population.errors import OptionError, ProposalError

KEY_ENV = "OPENAI_API_KEY"
MODES = ("auto", "tools", "json", "text")
_NEXT_MODE = {"tools": "json", "json": "text"}
# Words in an error that say the server does not take this way of answering (then: next mode).
_UNSUPPORTED = {"tools": ("tool", "function"), "json": ("response_format", "json")}
_TRANSIENT_STATUS = (429, 502, 503, 504)
_THINK = re.compile(r"<think>.*?</think>", re.S)
_FENCED = re.compile(r"```(?:json)?\s*\n(.*?)\n```", re.S)


class _Refused(ProposalError):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


def _chat_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if urllib.parse.urlsplit(base).path in ("", "/"):
        base += "/v1"  # a bare host: the OpenAI convention puts the API under /v1
    return base + "/chat/completions"


def parse_json_answer(content: str) -> dict | None:
    """The JSON object in a model's text answer (whole, fenced, or the outermost braces), or None."""
    text = _THINK.sub("", content or "").strip()
    candidates = [text] + _FENCED.findall(text)
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


class OpenAICompatibleProposer(ChatProposer):
    """Mutation and crossover written by a model behind an OpenAI-compatible endpoint.

    >>> proposer = OpenAICompatibleProposer(base_url="http://localhost:8000/v1", model="qwen3-coder")  # doctest: +SKIP

    Args:
        base_url: the API root, e.g. http://localhost:8000/v1 (``--base-url``; /v1 is added to a bare host).
        model: the model name the server knows (``--model``).
        api_key: sent as a Bearer token; default $OPENAI_API_KEY, else none (local servers need none).
        prices: price table; a model not in it costs $0 (``priced: False`` in the usage).
        timeout: seconds one HTTP call may take (local models can be slow).
        mode: auto (tools, then JSON mode, then text, as the server allows), or one of tools, json, text.
        backoff: seconds to wait before each further attempt after a 429/502/503/504 or a refused
            connection (its length caps them); then ProposerUnavailable, and the search loop
            waits with a growing pause it shows.
        max_tokens: the answer's token limit (default: a quarter of `context_tokens`, at most 16000).
        repairs: repair turns after edits that do not apply.
        context_tokens: the context the server gives the model (``--context-tokens``; what vLLM's
            --max-model-len or llama.cpp's -c set); prompts are fitted to it. None: unknown, sent whole.
    """

    name = "openai-compatible"

    def __init__(self, *, base_url: str, model: str, api_key: str | None = None, prices: dict[str, Price] | None = None,
                 timeout: float = 600.0, mode: str = "auto", backoff: tuple[float, ...] = (2.0, 10.0),
                 max_tokens: int | None = None, repairs: int = 1, context_tokens: int | None = None):
        if mode not in MODES:
            raise OptionError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        key = api_key if api_key is not None else (keys.take(KEY_ENV) or "")
        if max_tokens is None:  # a quarter of a known context (a small model's 8k leaves room for the prompt)
            max_tokens = min(16000, context_tokens // 4) if context_tokens else 16000
        super().__init__(model=model, price=price_for(model, prices or {}), repairs=repairs, secrets=(key,),
                         context_tokens=context_tokens, max_tokens=max_tokens)
        self.url, self.timeout, self.backoff = _chat_url(base_url), timeout, tuple(backoff)
        self._key = key
        self.mode = "tools" if mode == "auto" else mode
        self._auto = mode == "auto"

    @property
    def answer(self) -> str:
        return ANSWER_WITH_TOOL if self.mode == "tools" else ANSWER_AS_JSON

    def _conversation(self, prompt: Prompt, ctx: ProposalContext | None = None) -> "_Conversation":
        return _Conversation(self, prompt, ctx)

    def _post(self, payload: dict) -> dict:
        """POST one chat completion; raises _Refused (a 4xx/5xx reply), ProposerError, ProposerUnavailable,
        CallFailed or CallAborted."""
        headers = {"content-type": "application/json"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        data = json.dumps(payload).encode()
        for attempt in range(len(self.backoff) + 1):
            last = attempt == len(self.backoff)
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                text = self._abortable(lambda: _read(request, self.timeout))
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code in (401, 403):
                    raise ProposerError(f"{self.url} rejected the key ({KEY_ENV}) ({e.code}): {message}") from None
                if e.code == 404:
                    raise ProposerError(f"{self.url} answered 404 ({message}): check `base_url` (e.g. "
                                        f"http://localhost:8000/v1) and `model`") from None
                if e.code not in _TRANSIENT_STATUS:
                    raise _Refused(e.code, message) from None
                if last:
                    raise ProposerUnavailable(f"{self.url} kept answering {e.code} ({message})") from None
            except (TimeoutError, socket.timeout):
                raise ProposerUnavailable(f"no answer from {self.url} within {self.timeout:g}s (raise "
                                          "`timeout` if the model needs longer)") from None
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    raise ProposerUnavailable(f"no answer from {self.url} within {self.timeout:g}s (raise "
                                              "`timeout` if the model needs longer)") from None
                if last:
                    raise ProposerUnavailable(_unreachable(self.url, e.reason)) from None
            except (http.client.HTTPException, ConnectionError) as e:
                # The server closed or reset the connection mid-answer (a crash, a restart, a proxy's
                # idle limit): the server's fault, not the model's idea. Ask again; then wait it out.
                if last:
                    raise ProposerUnavailable(f"{self.url} dropped the connection before answering "
                                              f"({type(e).__name__}: {str(e)[:120] or 'no reason given'})") from None
            else:
                try:
                    return json.loads(text)
                except ValueError as e:
                    raise CallFailed(f"{self.url} answered with something that is not JSON: {e}",
                                     raw={"unparsed": text}) from None
            if self._closed.wait(self.backoff[attempt]):
                raise CallAborted(f"the search stopped while {self.url} was failing")
        raise AssertionError("unreachable")


def _unreachable(url: str, reason) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return (f"{url} refused the connection (is the server running? one that serves a single request at a time "
                "may refuse more while it is busy)")
    return f"cannot reach {url}: {reason}"


def _read(request: urllib.request.Request, timeout: float) -> str:
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode("utf-8", "replace")


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    try:
        body = json.loads(text)
        error = body.get("error", body) if isinstance(body, dict) else body
        text = error.get("message", text) if isinstance(error, dict) else str(error)
    except ValueError:
        pass
    return " ".join(str(text or e.reason).split())[:300]


class _Conversation:
    """One proposal's exchange with the endpoint, in the proposer's current mode."""

    def __init__(self, proposer: OpenAICompatibleProposer, prompt: Prompt, ctx: ProposalContext | None = None):
        self.proposer, self.prompt = proposer, prompt
        self.say = ctx.say if ctx is not None else (lambda line: None)
        self.messages: list[dict] = [{"role": "system", "content": prompt.system_text()},
                                     {"role": "user", "content": prompt.user_text()}]
        self.last: dict = {}
        self.first_mode: str | None = None   # the mode the first request went out in

    def start(self) -> Reply:
        return self._call()

    def sent(self) -> str:
        """The prompt as the first request carried it (asking for JSON once the server refused tools)."""
        text = self.prompt.render()
        return text if self.first_mode in (None, "tools") else text.replace(ANSWER_WITH_TOOL, ANSWER_AS_JSON)

    def repair(self, message: str) -> Reply:
        calls = self.last.get("tool_calls") or []
        self.messages.append({"role": "assistant", "content": self.last.get("content"),
                              **({"tool_calls": calls} if calls else {})})
        if calls and calls[0].get("id"):
            self.messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": message})
            self.messages += [{"role": "tool", "tool_call_id": c["id"], "content": "Ignored: send a single proposal."}
                              for c in calls[1:] if c.get("id")]
        else:
            self.messages.append({"role": "user", "content": f"{message}\n\n{self.proposer.answer}"})
        return self._call()

    def _payload(self, mode: str) -> dict:
        messages = [dict(m) for m in self.messages]
        if mode != "tools":  # the prompt asked for a tool call: ask for JSON instead
            messages[1]["content"] = messages[1]["content"].replace(ANSWER_WITH_TOOL, ANSWER_AS_JSON)
        payload = {"model": self.proposer.model, "messages": messages, "max_tokens": self.proposer.max_tokens}
        if mode == "tools":
            payload["tools"] = [{"type": "function", "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION,
                                                                  "parameters": TOOL_SCHEMA}}]
            payload["tool_choice"] = {"type": "function", "function": {"name": TOOL_NAME}}
        elif mode == "json":
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _call(self) -> Reply:
        p = self.proposer
        while True:
            mode = p.mode
            try:
                data = p._post(self._payload(mode))
                break
            except _Refused as e:
                if p._auto and mode in _NEXT_MODE and any(w in e.message.lower() for w in _UNSUPPORTED[mode]):
                    if p.mode == mode:  # another proposal may have moved on already: say it once
                        p.mode = _NEXT_MODE[mode]  # this server does not take `mode`: stay with the next one
                        self.say(f"{p.model} at {p.url} refused {_MODE_WORDS[mode]} ({e.status}: {e.message[:100]}): "
                                 f"asking for {_MODE_WORDS[p.mode]} from now on")
                    continue
                hint = ("; give --context-tokens N (the model's context) so prompts are fitted to it"
                        if re.search(r"context|too long|maximum .*length", e.message, re.I) and not p.budget.context else "")
                raise CallFailed(f"{p.url} refused the request ({e.status}): {e.message}{hint}") from None
        if self.first_mode is None:
            self.first_mode = mode
        return self._read(data, mode)

    def _read(self, data, mode: str) -> Reply:
        p = self.proposer
        raw = {"mode": mode, "response": data}
        if not isinstance(data, dict):
            return Reply(None, raw, {}, "the endpoint's answer is not a JSON object")
        usage = data.get("usage") or {}
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        tokens = {"input_tokens": int(usage.get("prompt_tokens") or 0) - cached, "cache_read_tokens": cached,
                  "output_tokens": int(usage.get("completion_tokens") or 0)}
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            return Reply(None, raw, tokens, "the endpoint's answer held no message")
        self.last = message
        calls = [c for c in message.get("tool_calls") or [] if (c.get("function") or {}).get("name") == TOOL_NAME]
        content = message.get("content") or ""
        text = "\n".join([content] + [str((c.get("function") or {}).get("arguments") or "") for c in calls]).strip()
        if choice.get("finish_reason") == "length":
            return Reply(None, raw, tokens, cut_off(tokens["output_tokens"], p.max_tokens, what="max_tokens",
                                                   prompt=tokens["input_tokens"] + cached, context=p.budget.context), text)
        if calls:
            arguments = calls[0]["function"].get("arguments")
            try:
                fields = arguments if isinstance(arguments, dict) else json.loads(arguments or "")
            except ValueError as e:
                return Reply(None, raw, tokens, f"the {TOOL_NAME} arguments are not valid JSON: {e}", text)
            return Reply(fields if isinstance(fields, dict) else None, raw, tokens,
                         "" if isinstance(fields, dict) else f"the {TOOL_NAME} arguments are not a JSON object", text)
        # No function call: many local models write the JSON into the text instead.
        fields = parse_json_answer(content)
        if fields is None:
            return Reply(None, raw, tokens, f"no JSON object in the answer (it began: {first_words(content)})", text)
        return Reply(fields, raw, tokens, "", text)


_MODE_WORDS = {"tools": "function calls (tools)", "json": "JSON mode (response_format)", "text": "a JSON object in "
               "plain text"}
