"""Stdlib HTTP for served backends: JSON POST/GET, SSE streaming, and retries with backoff + jitter.

Standard library only (``http.client``), so a served-model run needs no extra dependency. What is
retried: HTTP 408/409/429 and every 5xx, refused/reset connections and timeouts — the failures a
restarting or overloaded server (vLLM, llama.cpp) produces. Other 4xx (bad request, unknown model,
bad key) fail at once: retrying cannot fix them.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
RETRY_STATUS = {408, 409, 429}
MAX_BACKOFF_S = 30.0


class HTTPStatusError(Exception):
    """A non-2xx answer; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, status: int, body: str, url: str, retry_after: float | None = None):
        self.status, self.body, self.url, self.retry_after = status, body, url, retry_after
        super().__init__(f"HTTP {status} from {url}: {_short(body)}")

    @property
    def retryable(self) -> bool:
        return self.status in RETRY_STATUS or self.status >= 500


class RetriesExhausted(Exception):
    """Every attempt failed; ``last`` is the final error."""

    def __init__(self, attempts: int, last: BaseException):
        self.attempts, self.last = attempts, last
        super().__init__(f"{attempts} attempts failed; last: {describe_error(last)}")


def _short(body: str) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        body = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        pass
    return " ".join(str(body).split())[:200]


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, HTTPStatusError):
        return str(exc)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:200]


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.retryable
    # ConnectionError covers refused/reset/aborted; http.client errors cover a server dying mid-answer.
    return isinstance(exc, OSError | http.client.HTTPException | TruncatedStream)


class TruncatedStream(Exception):
    """An SSE stream ended without ``[DONE]`` or a finish reason (the server went away mid-answer)."""


@dataclass
class Endpoint:
    """One server's API root, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is added to a bare host)."""

    url: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        url = url.rstrip("/")
        if not urlsplit(url).path:
            url += "/v1"
        return cls(url)

    @property
    def public(self) -> str:
        """The URL without any ``user:password@`` part (what manifests and messages may show)."""
        parts = urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return conn_cls(parts.hostname or "localhost", parts.port, timeout=timeout)

    def path(self, route: str) -> str:
        return urlsplit(self.url).path + route


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _retry_after(resp: http.client.HTTPResponse) -> float | None:
    value = resp.getheader("Retry-After")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def get_json(ep: Endpoint, route: str, api_key: str | None, timeout: float) -> Any:
    conn = ep.connection(timeout)
    try:
        conn.request("GET", ep.path(route), headers=_headers(api_key))
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        if resp.status >= 300:
            raise HTTPStatusError(resp.status, body, ep.public + route, _retry_after(resp))
        return json.loads(body)
    finally:
        conn.close()


def post_json(ep: Endpoint, route: str, payload: dict[str, Any], api_key: str | None, timeout: float) -> Any:
    conn = ep.connection(timeout)
    try:
        conn.request("POST", ep.path(route), body=json.dumps(payload), headers=_headers(api_key))
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        if resp.status >= 300:
            raise HTTPStatusError(resp.status, body, ep.public + route, _retry_after(resp))
        return json.loads(body)
    finally:
        conn.close()


def post_stream(
    ep: Endpoint, route: str, payload: dict[str, Any], api_key: str | None, timeout: float
) -> Iterator[dict[str, Any]]:
    """POST with ``stream: true``; yield each SSE ``data:`` JSON event until ``[DONE]``."""
    conn = ep.connection(timeout)
    try:
        conn.request("POST", ep.path(route), body=json.dumps(payload), headers=_headers(api_key))
        resp = conn.getresponse()
        if resp.status >= 300:
            body = resp.read().decode("utf-8", "replace")
            raise HTTPStatusError(resp.status, body, ep.public + route, _retry_after(resp))
        finished = done = False
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments (": ping"), event:/id: fields
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                event = json.loads(data)
            except ValueError:
                raise TruncatedStream(
                    f"malformed SSE event from {ep.public + route}: {data[:80]!r}"
                ) from None
            if isinstance(event, dict) and "error" in event:
                raise HTTPStatusError(500, json.dumps(event), ep.public + route)
            if any(c.get("finish_reason") for c in event.get("choices") or []):
                finished = True
            yield event
        if not finished:
            # A [DONE] with no finish reason is a cut answer too: llama-cpp-python's server ends a stream
            # that way when another request is waiting (unless started with --interrupt_requests False).
            how = "with [DONE] but no finish reason" if done else "before the answer finished"
            raise TruncatedStream(f"stream from {ep.public + route} ended {how}")
    finally:
        conn.close()


def with_retries(
    attempt: Callable[[int], T],
    *,
    max_retries: int,
    backoff_s: float,
    on_retry: Callable[[int, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``attempt(i)`` until it succeeds; back off ``backoff_s * 2**i`` with full jitter between
    tries (or the server's ``Retry-After``, when larger). Non-retryable errors propagate at once."""
    for i in range(max_retries + 1):
        try:
            return attempt(i)
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_retryable(exc):
                raise
            if i == max_retries:
                raise RetriesExhausted(i + 1, exc) from exc
            if on_retry is not None:
                on_retry(i, exc)
            cap = min(MAX_BACKOFF_S, backoff_s * 2**i)
            delay = random.uniform(cap / 2, cap)  # "equal jitter": never hammer, never wait 0
            hinted = getattr(exc, "retry_after", None)
            sleep(max(delay, min(hinted, MAX_BACKOFF_S)) if hinted is not None else delay)
    raise AssertionError("unreachable")
