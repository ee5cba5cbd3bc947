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
