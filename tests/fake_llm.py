"""Scripted fake LLM APIs on 127.0.0.1, for tests that use the real clients over real HTTP.

A `FakeServer` answers every POST from a script: a list whose items are either a reply
(status, JSON body, headers) or a function of the received request returning one. The
last item repeats once the script runs out. Every request is recorded (path, headers,
JSON body) so a test can check what the client really sent.

    with FakeServer([anthropic_reply({"description": ...})]) as server:
        proposer = AnthropicProposer(api_key="k", base_url=server.url)
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None   # sent as it is instead of the JSON of `body` (a malformed answer)


class FakeServer:
    """An HTTP server in a thread that answers POSTs from `script` and records them."""

    def __init__(self, script: list):
        self.script = list(script)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = server._next(request)
                if reply.delay:
                    time.sleep(reply.delay)
                data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                drop = reply.headers.get("x-drop")
                if drop:  # the connection ends without a full answer (a crash, a restart, a proxy's limit)
                    self.close_connection = True
                    if drop == "mid":
                        start = b'{"id": "chatcmpl-small", "choices": [{"message": {"content": "I will cha'
                        self.send_response(200)
                        self.send_header("content-type", "application/json")
                        self.send_header("content-length", "4000")
                        self.end_headers()
                        self.wfile.write(start)
                        self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _next(self, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        reply = item(request) if callable(item) else item
        return reply if isinstance(reply, Reply) else Reply(*reply)

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- Anthropic Messages API ---------------------------------------------------------------

def proposal(description: str, edits: list[tuple[str, str, str]] = (), rationale: str = "a scripted idea",
             files: dict[str, str] | None = None) -> dict:
    """The arguments of a propose_change call: edits as (file, search, replace)."""
    fields = {"description": description, "rationale": rationale,
              "edits": [{"file": f, "search": s, "replace": r} for f, s, r in edits]}
    if files:
        fields["files"] = [{"file": k, "content": v} for k, v in files.items()]
    return fields


def anthropic_reply(fields: dict, *, input_tokens: int = 1000, output_tokens: int = 200, cache_read: int = 0,
                    cache_write: int = 0, stop_reason: str = "tool_use") -> Reply:
    """A Messages API response whose content is one propose_change tool call."""
    body = {"id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "Here is my proposal."},
                        {"type": "tool_use", "id": "toolu_fake", "name": "propose_change", "input": fields}],
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                      "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write}}
    return Reply(200, body)


def anthropic_error(status: int, kind: str, message: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": kind, "message": message}}, headers or {})


# -- OpenAI-compatible chat completions ---------------------------------------------------

def _chat(message: dict, usage: dict | None) -> Reply:
    return Reply(200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": "local-test",
                       "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                       "usage": usage or {"prompt_tokens": 900, "completion_tokens": 150, "total_tokens": 1050}})


def chat_tool_call(fields: dict, usage: dict | None = None) -> Reply:
    """A chat completion whose message calls propose_change."""
    return _chat({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_fake", "type": "function",
         "function": {"name": "propose_change", "arguments": json.dumps(fields)}}]}, usage)


def chat_text(content: str, usage: dict | None = None) -> Reply:
    """A chat completion answering in plain content."""
    return _chat({"role": "assistant", "content": content}, usage)


# -- a small local model, as a user meets one ---------------------------------------------

@dataclass
class Drop:
    """The server's connection ends without a full answer: "before" any byte of it (http.client's
    RemoteDisconnected), or "mid" answer (the body cut short: IncompleteRead)."""

    where: str = "mid"


class SmallModel:
    """An OpenAI-compatible server on 127.0.0.1 that behaves like a small instruction-tuned model behind a
    local server: it refuses `tools` and `response_format` with a 400 (as servers without those features
    do), answers in prose (a script of texts, or functions of the request returning one), stops at its own
    length limit `n_predict` (finish_reason length, whatever max_tokens asked), counts tokens at
    `bytes_per_token`, cuts a prompt longer than its `context` (reporting what it kept), can drop a
    connection (a `Drop` in the script) and serves one request at a time (503 while busy).

    hold: an Event the next answer waits for (a slow call a test can watch), when set by `slow()`.
    """

    def __init__(self, script: list, *, context: int = 8192, n_predict: int = 600, bytes_per_token: float = 3.06,
                 model: str = "small-instruct"):
        self.script, self.context, self.n_predict, self.bytes_per_token = list(script), context, n_predict, bytes_per_token
        self.model = model
        self.answered: list[dict] = []       # what each answered request was told: prompt tokens, finish reason
        self.busy_refusals = 0
        self.hold: threading.Event | None = None
        self._busy = threading.Lock()
        self._lock = threading.Lock()
        self._server = FakeServer([self._answer])

    @property
    def url(self) -> str:
        return self._server.url + "/v1"

    @property
    def received(self) -> list[Received]:
        """Every request, refused ones included."""
        return self._server.received

    def slow(self) -> threading.Event:
        """Make the next answer wait until the returned Event is set."""
        self.hold = threading.Event()
        return self.hold

    def _tokens(self, text: str) -> int:
        return int(len(text.encode("utf-8")) / self.bytes_per_token) + 1

    def _answer(self, request: Received):
        body = request.body or {}
        if "tools" in body:
            return Reply(400, {"error": {"message": "tools are not supported by this server (start it with "
                                                    "--enable-auto-tool-choice)", "type": "BadRequestError"}})
        if "response_format" in body:
            return Reply(400, {"error": {"message": "response_format json_object is not supported",
                                         "type": "BadRequestError"}})
        if not self._busy.acquire(blocking=False):
            with self._lock:
                self.busy_refusals += 1
            return Reply(503, {"error": {"message": "the server is busy: no free slot", "type": "unavailable"}})
        try:
            return self._generate(request, body)
        finally:
            self._busy.release()

    def _generate(self, request: Received, body: dict):
        with self._lock:
            item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.wait(120)
        if isinstance(item, Drop):
            return Reply(200, None, raw=b"", headers={"x-drop": item.where})
        text = item(request) if callable(item) else str(item)
        prompt = sum(self._tokens(str(m.get("content") or "")) for m in body.get("messages", [])) + 16
        kept = min(prompt, self.context - 1)  # a prompt past the context is cut: only its end is seen
        limit = min(self.n_predict, int(body.get("max_tokens") or self.n_predict), self.context - kept)
        words, finish = text, "stop"
        if self._tokens(text) > limit:
            words, finish = text.encode()[: int(limit * self.bytes_per_token)].decode("utf-8", "ignore"), "length"
        completion = min(self._tokens(words), limit)
        self.answered.append({"prompt_tokens": kept, "sent_tokens": prompt, "finish_reason": finish,
                              "completion_tokens": completion, "max_tokens": body.get("max_tokens")})
        return Reply(200, {"id": "chatcmpl-small", "object": "chat.completion", "model": self.model,
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": words},
                                        "finish_reason": finish}],
                           "usage": {"prompt_tokens": kept, "completion_tokens": completion,
                                     "total_tokens": kept + completion}})

    def __enter__(self) -> "SmallModel":
        self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.hold is not None:
            self.hold.set()
        self._server.__exit__(*exc)
