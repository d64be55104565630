"""Serving-style latency probe: what one user waits, apart from the batched evaluation pass.

The batched pass measures throughput (tokens/s, examples/s -> serving cost); its per-example "latency"
would be a share of a batch's wall time, which no user ever waits. The probe sends ``requests``
examples (a seeded sample) one at a time through each strategy's *whole* ``predict`` pipeline
(query embedding, retrieval, compression, prompt, generation), after ``warmup`` discarded requests,
interleaving strategies in a carryover-balanced order (a Williams design: over its rounds every strategy
goes first and follows every other equally often) so machine drift and what the previous request left
behind (merged weights, caches) hit all alike — the way vLLM's serving benchmark and GuideLLM measure a
server. Per request it records:

* ``e2e_s``: wall time of the request, from ``predict`` call to answer;
* ``ttft_s``: time to first token — until the backend emitted the first generated token (backends
  call :func:`mark_first_token`); the pipeline work before generation counts, as a user waits for it;
* ``tpot_s``: time per output token after the first, ``(e2e - ttft) / (new_tokens - 1)``;
* ``cached_prefix_tokens``: prompt tokens served from the backend's prefix cache (``None`` where the
  backend does not say), so a reader can check that strategies were measured alike.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from harness.rundir import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.plugin import Strategy

LATENCY_FILE = "latency.jsonl"


@dataclass
class RequestClock:
    start: float
    first_token: float | None = None
    cached_prefix_tokens: int | None = None


_CLOCK: ContextVar[RequestClock | None] = ContextVar("adaptbench_request_clock", default=None)


def mark_first_token() -> None:
    """Backends call this when the first new token of a request exists (no-op outside a probe)."""
    clock = _CLOCK.get()
    if clock is not None and clock.first_token is None:
        clock.first_token = time.perf_counter()


def mark_cached_prefix(tokens: int) -> None:
    """Backends call this with the prompt tokens a request took from their prefix cache (0: none)."""
    clock = _CLOCK.get()
    if clock is not None:
        clock.cached_prefix_tokens = tokens


def probing() -> bool:
    """True inside a probe request: backends may then stream to observe the first token."""
    return _CLOCK.get() is not None


@contextlib.contextmanager
def request_clock() -> Iterator[RequestClock]:
    clock = RequestClock(time.perf_counter())
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@dataclass
class RequestTiming:
    strategy: str
    example_id: str
    round: int
    e2e_s: float
    ttft_s: float | None
    tpot_s: float | None
    new_tokens: int
    cached_prefix_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_sample(examples: Sequence[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """The seeded sample of examples the probe sends (the same for every strategy)."""
    rng = random.Random(f"latency-probe:{seed}")
    idx = sorted(rng.sample(range(len(examples)), min(n, len(examples))))
    return [examples[i] for i in idx]


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` strategies for successive rounds (a Williams Latin square): each strategy is first
    in as many rounds as the others, and each ordered pair follows each other equally often (once in the
    ``n`` rows for even ``n``, twice in the ``2n`` rows, the mirrored ones added, for odd ``n``). A plain
    rotation would have each strategy always follow the same one."""
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(k + r) % n for k in first] for r in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 else rows


def time_request(strategy: Any, example: dict[str, Any], rnd: int) -> RequestTiming:
    with request_clock() as clock:
        (answer,) = strategy.predict([example])
    end = time.perf_counter()
    e2e = end - clock.start
    ttft = (clock.first_token - clock.start) if clock.first_token is not None else None
    n = int(answer.new_tokens)
    tpot = (e2e - ttft) / (n - 1) if ttft is not None and n > 1 else None
    return RequestTiming(strategy.id, str(example["id"]), rnd, e2e, ttft, tpot, n, clock.cached_prefix_tokens)


def run_probe(
    strategies: Sequence[Any],
    examples: Sequence[dict[str, Any]],
    *,
    requests: int,
    warmup: int,
    seed: int,
    progress: bool = True,
) -> list[RequestTiming]:
    """Round-robin single requests through prepared strategies; warm-up rounds are not returned."""
    sample = probe_sample(examples, requests, seed)
    if not sample or not strategies:
        return []
    warm = [sample[i % len(sample)] for i in range(warmup)]
    rounds = [(ex, r < warmup) for r, ex in enumerate(warm + sample)]
    out: list[RequestTiming] = []
    orders = balanced_orders(len(strategies))
    bar = tqdm(total=len(rounds) * len(strategies), desc="latency probe", unit="req", disable=not progress)
    for r, (example, is_warmup) in enumerate(rounds):
        for strategy in (strategies[i] for i in orders[r % len(orders)]):
            activate = getattr(strategy, "activate", None)
            if activate is not None:
                activate()  # untimed: e.g. merge this strategy's adapter, as it is served
            timing = time_request(strategy, example, r - warmup)
            if not is_warmup:
                out.append(timing)
            bar.update(1)
    bar.close()
    return out


# -- in a run (``harness.runner``): once per run folder, rank 0 only ---------------------------------


def probe_needed(
    run_dir: Path, config: RunConfig, strategies: Sequence[Strategy], manifest: dict[str, Any]
) -> bool:
    """The probe is enabled and not already done for the same settings and strategies (resume)."""
    settings = {**config.latency_probe.model_dump(), "strategies": [s.id for s in strategies]}
    done = manifest.get("latency_probe") or {}
    return config.latency_probe.requests > 0 and not (
        done.get("status") == "done"
        and done.get("settings") == settings
        and (run_dir / LATENCY_FILE).is_file()
    )


def probe_latency(
    run_dir: Path,
    config: RunConfig,
    strategies: Sequence[Strategy],
    examples: list[dict[str, Any]],
    manifest: dict[str, Any],
    progress: bool,
) -> None:
    """Run the probe over prepared ``strategies``; write ``latency.jsonl`` and the manifest entry.

    A single-request measurement, so it runs in one process (rank 0 of a data-parallel run)."""
    if not probe_needed(run_dir, config, strategies, manifest):
        return
    settings = {**config.latency_probe.model_dump(), "strategies": [s.id for s in strategies]}
    timings = run_probe(
        strategies,
        examples,
        requests=config.latency_probe.requests,
        warmup=config.latency_probe.warmup,
        seed=config.seed,
        progress=progress,
    )
    atomic_write_text(run_dir / LATENCY_FILE, "".join(json.dumps(t.to_json()) + "\n" for t in timings))
    manifest["latency_probe"] = {"status": "done", "settings": settings, "requests_timed": len(timings)}
    atomic_write_json(run_dir / "manifest.json", manifest)
