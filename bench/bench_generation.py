"""Generation benchmark: model load time (GGUF vs dequantised cache) and batched vs one-by-one decoding.

    python bench/bench_generation.py [--model smollm2-135m-instruct] [--n 32] [--batch-size 32] [--max-new-tokens 48]

Both arms use the same model, prompts and greedy settings in the same process, so the speed-up ratio is
comparable across machines even when absolute numbers are not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from harness.backends.hf import TransformersBackend
from harness.backends.loading import cache_root, load_model
from harness.config import GenerationConfig, ModelConfig
from harness.data import load_eval_set

REPO = Path(__file__).resolve().parents[1]


def prompts_from_demo(n: int) -> list[list[dict[str, str]]]:
    ds = load_eval_set(REPO / "eval_sets" / "nimbus_support").split("test")
    system = "You are the customer-support assistant of Nimbus Cycles. Answer in one short sentence."
    return [
        [{"role": "system", "content": system}, {"role": "user", "content": ds[i % len(ds)]["question"]}]
        for i in range(n)
    ]


def timed_generate(backend, prompts, params, batch_size):
    start = time.perf_counter()
    tokens = 0
    texts = []
    for i in range(0, len(prompts), batch_size):
        out = backend.generate(prompts[i : i + batch_size], params)
        tokens += out.new_tokens
        texts += [g.text for g in out.generations]
    return time.perf_counter() - start, tokens, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-gguf", action="store_true", help="don't time the first (GGUF) load")
    args = ap.parse_args()
    cfg = ModelConfig(id=args.model, device=args.device)
    results: dict[str, float] = {}

    if args.model == "smollm2-135m-instruct" and not args.skip_gguf:
        with tempfile.TemporaryDirectory() as fresh:
            results["load_from_gguf_s"] = load_model(cfg, Path(fresh)).info.load_seconds
    loaded = load_model(cfg, cache_root())
    loaded = load_model(cfg, cache_root())  # second load: from the dequantised safetensors cache
    results["load_from_cache_s"] = loaded.info.load_seconds

    backend = TransformersBackend(loaded)
    params = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    prompts = prompts_from_demo(args.n)
    backend.generate(prompts[:2], params)  # warm-up

    seq_s, seq_tok, seq_texts = timed_generate(backend, prompts, params, 1)
    bat_s, bat_tok, bat_texts = timed_generate(backend, prompts, params, args.batch_size)
    same = sum(a == b for a, b in zip(seq_texts, bat_texts, strict=True))
    results.update(
        one_by_one_s=seq_s,
        one_by_one_tokens_per_s=seq_tok / seq_s,
        batched_s=bat_s,
        batched_tokens_per_s=bat_tok / bat_s,
        speedup_batched_vs_one_by_one=(bat_tok / bat_s) / (seq_tok / seq_s),
        identical_answers=same / len(prompts),
    )
    print(
        f"model={args.model} device={loaded.info.device} n={args.n} batch={args.batch_size} max_new_tokens={args.max_new_tokens}"
    )
    for key, value in results.items():
        print(f"{key:<34} {value:10.3f}")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
