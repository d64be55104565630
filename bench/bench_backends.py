"""Backend benchmark: generated tokens/s of the same prompts on transformers, llama.cpp in-process, and a
llama.cpp server reached through the ``openai`` backend, in one process.

    python bench/bench_backends.py [--n 92] [--max-new-tokens 96] [--batch-size 16] [--threads 0]
                                   [--arms transformers,llama_cpp,server_c1,server_c4] [--demo-stop]

Prompts: the demo's ``prompt`` strategy (configs/demo.yaml) over the first ``--n`` examples of the demo
test split, sent through the runner's evaluation loop (length-sorted batches of ``--batch-size`` through
the strategy's ``predict``). Greedy, the same ``max_new_tokens`` everywhere; no stop strings unless
``--demo-stop`` (each engine still stops at its end-of-turn token). Arms:

  transformers  the harness's default backend (batched generate, batch ``--batch-size``)
  llama_cpp     the in-process GGUF backend (one prompt at a time; llama.cpp does not batch here)
  server_c1     ``openai`` backend -> ``python -m llama_cpp.server`` on a free loopback port, 1 in flight
  server_c4     the same server, 4 requests in flight

The llama-cpp-python server answers one request at a time (one model behind a lock; it has no
``n_parallel`` slots), so ``server_c4`` measures queueing, not parallel decoding: expect about the
``server_c1`` rate. Tokens are what each engine reports generating (``usage.completion_tokens`` for the
server). Printed: a table (tokens, seconds, tok/s), each arm's tok/s relative to ``transformers``, the
1-minute load average at start and end (a busy machine makes every number meaningless), and one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "configs" / "demo.yaml"
ARMS = ("transformers", "llama_cpp", "server_c1", "server_c4")


def evaluate(backend, spec, eval_set, examples, gen) -> dict:
    """The runner's loop minus file writes: build the strategy on ``backend``, generate every example."""
    from harness import plugin
    from harness.backends.loading import cache_root
    from harness.batching import batch_order
    from harness.plugin import RunContext
    from harness.runner import batches, predict_timed

    strategy = plugin.build(spec, 0)
    strategy.prepare(RunContext(eval_set, backend, gen, 0, cache_root(), Path("/tmp")))
    predict_timed(strategy, examples[:1])  # warm-up: first-call allocations, server connection
    start = time.perf_counter()
    tokens = 0
    for batch in batches(batch_order(strategy, examples), gen.batch_size):
        answers, _ = predict_timed(strategy, batch)
        tokens += sum(a.new_tokens for a in answers)
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=92, help="first N examples of the demo test split (92 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16, help="transformers batch; the runner's batch")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for every engine (0: all cores)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--demo-stop", action="store_true", help="use the demo's stop strings")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arms: {', '.join(sorted(unknown))} (choose from {', '.join(ARMS)})")

    from harness.backends import open_backend
    from harness.backends.loading import cache_root
    from harness.backends.openai import OpenAIBackend
    from harness.config import GenerationConfig, ModelConfig, load_config
    from harness.data import load_eval_set
    from tests.support.llama_server import LlamaServer

    threads = args.threads or os.cpu_count() or 1
    os.environ["ADAPTBENCH_LLAMA_THREADS"] = str(threads)
    demo = load_config(DEMO)
    spec = next(s for s in demo.strategies if s.id == "prompt")
    eval_set = load_eval_set(demo.eval_set.path)
    examples = list(eval_set.split("test"))[: args.n]
    gen = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0,
        batch_size=args.batch_size,
        stop=list(demo.generation.stop) if args.demo_stop else [],
    )
    load_start = os.getloadavg()[0]
    results: dict[str, dict] = {}

    if "transformers" in arms:
        import torch

        torch.set_num_threads(threads)
        backend = open_backend(ModelConfig(device="cpu"), cache_root())
        results["transformers"] = evaluate(backend, spec, eval_set, examples, gen)
        del backend
        gc.collect()
    if "llama_cpp" in arms:
        backend = open_backend(ModelConfig(backend="llama_cpp"), cache_root())
        results["llama_cpp"] = evaluate(backend, spec, eval_set, examples, gen)
        del backend
        gc.collect()
    served = [a for a in arms if a.startswith("server_c")]
    if served:
        server = LlamaServer(n_threads=threads).start()
        try:
            for arm in served:
                concurrency = int(arm.removeprefix("server_c"))
                cfg = ModelConfig(
                    backend="openai", base_url=server.url, id="smollm2", concurrency=concurrency
                )
                backend = OpenAIBackend(cfg)
                results[arm] = evaluate(backend, spec, eval_set, examples, gen)
                results[arm]["estimated_token_counts"] = backend.stats["estimated"]
                backend.close()
        finally:
            server.stop()
    load_end = os.getloadavg()[0]

    print(
        f"n={len(examples)} max_new_tokens={args.max_new_tokens} batch={args.batch_size} threads={threads} "
        f"stop={gen.stop} load_avg_1m start={load_start:.2f} end={load_end:.2f}"
    )
    base = results.get("transformers")
    print(f"{'arm':<14}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'vs transformers':>17}")
    for name, r in results.items():
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        r["vs_transformers"] = ratio
        print(f"{name:<14}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens_per_s']:>10.1f}{ratio:>17.2f}")
    print(
        json.dumps(
            {
                "n": len(examples),
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "threads": threads,
                "load_avg_1m": {"start": load_start, "end": load_end},
                "arms": results,
            },
            default=float,
        )
    )


if __name__ == "__main__":
    main()
