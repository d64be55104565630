"""An in-process fake OpenAI-compatible server (loopback only) for the served-backend tests.

It answers ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` (plain or SSE
streamed), deterministically: the answer is ``"echo: <last user text>"`` (or of the prompt), with
``usage`` counting whitespace words. Tests script failures (``fail_with`` statuses served first,
``delay_s``), read what it received (``requests``), how many were in flight at once
(``max_in_flight``), and can ``stop`` it and ``start`` it again on the same port.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (the timeout tests' clients give up on purpose) is expected, not an error:
        its handler thread outlives the test, and socketserver's traceback would land in whatever captures
        stderr then (a later test's ``CliRunner`` output). Anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeOpenAI:
    def __init__(self, name: str = "A", models: tuple[str, ...] = ("tiny",), usage: bool = True):
        self.name, self.models, self.usage = name, list(models), usage
        self.fail_with: list[int] = []  # statuses to answer (in order) before behaving
        self.delay_s = 0.0
        self.stop_after: int | None = None  # close the server after this many successful answers
        self.cut_streams = 0  # streams to break off after their first word (a server dying mid-answer)
        self.interrupt_streams = 0  # streams to end with [DONE] after their first word (llama-cpp-python's
        # interrupt_requests: the answer is cut, but the stream closes as if it were complete)
        self.requests: list[dict[str, Any]] = []
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, port: int | None = None) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                fake._get(self)

            def do_POST(self) -> None:
                fake._post(self)

        server = _Server(("127.0.0.1", self.port if port is None else port), Handler)
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- handlers ------------------------------------------------------------------------------
    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        if h.path != "/v1/models":
            return self._send(h, 404, {"error": {"message": "no such route"}})
        data = [{"id": m, "object": "model", "max_model_len": 512} for m in self.models]
        self._send(h, 200, {"object": "list", "data": data})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)))
        with self.lock:
            self.requests.append({"path": h.path, "server": self.name, **body})
            status = self.fail_with.pop(0) if self.fail_with else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        released = False

        def release() -> None:
            """Out of flight *before* the answer is written: a client that has read it may send its next
            request at once, and counting until after the write saw one more than it ever had open."""
            nonlocal released
            if not released:
                released = True
                with self.lock:
                    self.in_flight -= 1

        try:
            if status is not None:
                release()
                return self._send(h, status, {"error": {"message": f"scripted {status}"}})
            if body.get("model") not in self.models:
                release()
                return self._send(h, 404, {"error": {"message": f"model {body.get('model')} not found"}})
            time.sleep(self.delay_s)
            release()
            if h.path == "/v1/chat/completions":
                text = "echo: " + [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            elif h.path == "/v1/completions":
                text = "echo: " + body["prompt"].split("User: ")[-1].split("\n\nAssistant:")[0]
            else:
                return self._send(h, 404, {"error": {"message": "no such route"}})
            words = text.split()[: body.get("max_tokens", 16)]
            text = " ".join(words)
            n_prompt = len(json.dumps(body.get("messages") or body.get("prompt")).split())
            usage = {"prompt_tokens": n_prompt, "completion_tokens": len(words)} if self.usage else None
            if body.get("stream"):
                self._stream(h, h.path, words, usage)
            else:
                chat = h.path.endswith("chat/completions")
                choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                out: dict[str, Any] = {"choices": [{**choice, "index": 0, "finish_reason": "stop"}]}
                if usage:
                    out["usage"] = usage
                self._send(h, 200, out)
            with self.lock:
                self.answered += 1
                stop = self.stop_after is not None and self.answered >= self.stop_after
            if stop:
                self.stop_after = None
                threading.Thread(target=self.stop, daemon=True).start()
        finally:
            release()

    def _stream(self, h: BaseHTTPRequestHandler, path: str, words: list[str], usage: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        chat = path.endswith("chat/completions")
        with self.lock:
            cut, self.cut_streams = self.cut_streams > 0, max(0, self.cut_streams - 1)
            interrupt, self.interrupt_streams = self.interrupt_streams > 0, max(0, self.interrupt_streams - 1)
        for i, word in enumerate(words):
            if cut and i == 1:
                h.close_connection = True
                return
            if interrupt and i == 1:
                h.wfile.write(b"data: [DONE]\n\n")
                h.wfile.flush()
                h.close_connection = True
                return
            piece = word if i == 0 else " " + word
            choice = {"delta": {"content": piece}} if chat else {"text": piece}
            last = i == len(words) - 1
            event = {"choices": [{**choice, "index": 0, "finish_reason": "stop" if last else None}]}
            h.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            h.wfile.flush()
        if usage:
            h.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()
        h.close_connection = True
