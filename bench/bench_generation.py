"""Generation benchmark: the harness's evaluation pass vs bare ``model.generate`` on the same prompts.

    python bench/bench_generation.py [--model smollm2-135m-instruct | --shape tiny|1b|7b] [--device cpu|cuda]
                                     [--n 92] [--batch-size 16] [--max-new-tokens 96] [--static-cache]
                                     [--strategy prompt|few_shot|rag] [--dtype auto|float32|bfloat16]

Prompts: one of the demo's strategies over the demo test split (``--strategy``: ``prompt``, zero-shot, the
default; ``few_shot``: 4 demonstrations; ``rag``: top-4 chunks -> 3 sentences, 3 demonstrations). Arms, one
process, one model:

  bare          tokenizer + ``model.generate`` per batch in example order, greedy, no stop strings: the
                engine's own speed (tokens counted up to each row's EOS)
  harness       the runner's pass: length-sorted batches (``harness.batching``) through the strategy's
                ``predict`` and the backend, no stop strings: the same work as ``bare``
  harness+stop  the same with the demo's stop string ("\\n\\n") ended inside ``generate``
  harness+stop (continuous off)
                the same through ``model.generate`` (ADAPTBENCH_CONTINUOUS=0): each batch decodes until its
                longest answer ends, finished rows computing pads (harness/backends/continuous.py)
  harness+stop (continuous, one call)
                all prompts in one ``predict`` call, ``--batch-size`` rows decoding at a time: a finished
                row's slot goes to the next waiting prompt (what a caller passing a long list gets)
  harness+stop (prefix cache off)
                the same with the backend's shared-prefix KV cache off (ADAPTBENCH_PREFIX_CACHE=0): the
                gain of reusing the system prompt + demonstrations' keys and values across batches
  harness+stop (packed linear off), single requests (packed on|off)
                bf16 on CPU only: the pass, and ``--single`` latency-probe-style single requests (with the
                stop string), with and without weights packed once for oneDNN
                (harness/backends/packed_linear.py); each request is sent in both arms back to back, in
                alternating order, and the median of the per-request ratios is printed beside the sums
  --arms fused: pass, fused on|off, single requests (fused projections on|off)
                bf16 on CPU only, and only these arms: the pass with the stop string (ABBA order) and the
                single requests with sibling projections (q/k/v, gate/up) as one product over a stacked
                pack and apart (harness/backends/packed_linear.py), and the share of identical answers
  --arms gemv: pass, single requests (one-row gemv on|off)
                bf16 on CPU only, and only these arms: the pass (its answers, for comparison) and the single
                requests with their one-row products through PyTorch's gemv and through the packs
                (harness/backends/packed_linear.py), and the shares of identical answers: single requests
                with vs without, and each against the pass (a single request's answer is not its batched
                one either way)
  --arms lora: pass, plain_linears on|off, single requests (plain linears on|off)
                a random LoRA adapter of the demo's shape loaded and switched off (the base strategies'
                state once an adapter strategy ran): the pass (ABBA) and the single requests through
                plain linears (the backend swaps the LoRA layers out while none computes) and through
                peft's wrappers
  --arms kv: pass, kv_buffers on|off, single requests (kv buffers on|off)
                KV caches whose layers grow in place (harness/backends/kv_buffers.py) vs transformers'
                ``DynamicLayer``, which copies the layer's cache at every step (``torch.cat``)
  --arms shared: pass, shared_prefix on|off
                continuous batches keeping their shared prompt prefix once, attended once for all rows
                (harness/backends/shared_prefix.py), vs the prefix repeated into every row's cache
  --arms batch: pass, batch N (one arm per ``--batch-sizes``, ABBA order)
                the pass with N prompts per call and N rows decoding together; ratios to the first size
  single requests (decode attention on|off)
                CPU only: the same single requests with and without the attention of unmasked decoding
                steps (harness/backends/decode_attention.py; ``bare`` runs without it)

The prefix cache is emptied before each harness arm, so every arm pays for computing its own prefixes.
Printed: tokens, seconds, tokens/s per arm; harness/bare tokens/s (target >= 0.8); the wall-time ratio of
harness+stop to bare; the wall-time ratio of harness+stop with the prefix cache to without it, and the
prefix cache's counters; the share of answers identical to bare's (cut at the stop string afterwards) and
of answers identical with and without the prefix cache. ``--dtype`` sets ``model.dtype`` (``auto``: bf16 on CPUs
with native bf16, else fp32).
``--shape 1b|7b`` uses a random-init Llama of that size (bench/shapes.py) for GPU sizing; ``--static-cache``
turns on the static KV cache (+ torch.compile on CUDA) in the backend; FlashAttention-2 is used when the
``flash_attn`` package is installed and the device is CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SYSTEM = (
    "You are the customer-support assistant of Nimbus Cycles, an e-bike company. "
    "Answer the customer's question in one short, factual sentence."
)
# The demo's strategies (configs/demo.yaml).
STRATEGIES = {
    "prompt": {"name": "prompt", "system_prompt": SYSTEM},
    "few_shot": {"name": "prompt", "shots": 4, "system_prompt": SYSTEM},
    "rag": {
        "name": "rag",
        "top_k": 4,
        "context_sentences": 3,
        "shots": 3,
        "system_prompt": "You are the customer-support assistant of Nimbus Cycles. "
        "Answer with one sentence copied from the context.",
    },
}


def bare_pass(loaded, texts: list[str], batch_size: int, max_new: int) -> tuple[float, int, list[str]]:
    """Plain transformers: tokenise, left-pad, generate, decode; tokens counted up to EOS (inclusive)."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    stop_ids = {tok.eos_token_id, tok.pad_token_id} - {None}
    tokens, out_texts = 0, []
    sync = torch.cuda.synchronize if loaded.info.device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id, use_cache=True
            )
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            n = next((j + 1 for j, t in enumerate(row) if t in stop_ids), len(row))
            tokens += n
            out_texts.append(tok.decode(row[:n], skip_special_tokens=True))
    sync()
    return time.perf_counter() - start, tokens, out_texts


def harness_pass(strategy, examples, batch_size: int) -> tuple[float, int, dict[str, str]]:
    """The runner's evaluation loop minus file writes: length-sorted batches through ``predict``."""
    from harness.batching import batch_order
    from harness.runner import batches, predict_timed

    start = time.perf_counter()
    tokens, texts = 0, {}
    for batch in batches(batch_order(strategy, examples), batch_size):
        answers, _ = predict_timed(strategy, batch)
        tokens += sum(a.new_tokens for a in answers)
        texts.update((ex["id"], a.text) for ex, a in zip(batch, answers, strict=True))
    return time.perf_counter() - start, tokens, texts


def single_arms(strategy, examples, off, label: str, results: dict, texts: dict | None = None) -> list[float]:
    """Latency-probe-style single requests (one row each, the strategy's whole ``predict``), each sent with
    and without a speed-up (``off()`` turns it off) back to back, the order alternating: machine drift hits
    both arms alike. Returns the per-request time ratios (on / off); ``texts`` gets each arm's answers."""
    strategy.predict(examples[:1])  # warm: this strategy's prefix and the packs, as the probe's warm-up does
    with off():
        strategy.predict(examples[:1])
    on_name, off_name = f"single requests ({label} on)", f"single requests ({label} off)"
    arms = {on_name: [0.0, 0], off_name: [0.0, 0]}
    ratios = []
    for i, example in enumerate(examples):
        took = {}
        for name in sorted(arms, reverse=i % 2 == 1):
            with off() if name == off_name else contextlib.nullcontext():
                start = time.perf_counter()
                answer = strategy.predict([example])[0]
                took[name] = time.perf_counter() - start
            tokens = answer.new_tokens
            if texts is not None:
                texts.setdefault(name, {})[example["id"]] = answer.text
            arms[name][0] += took[name]
            arms[name][1] += tokens
        ratios.append(took[on_name] / took[off_name])
    for name, (seconds, tokens) in arms.items():
        results[name] = {"seconds": seconds, "tokens": tokens}
    return ratios


def identical(a: dict[str, str], b: dict[str, str]) -> float:
    """The share of ``a``'s answers that ``b`` gives word for word (keyed by example id)."""
    return sum(a[k] == b[k] for k in a) / len(a)


def report(results: dict, summary: dict) -> None:
    """The arms' table, the summary ratios, and both as one JSON line (the single-purpose ``--arms`` runs)."""
    print(f"{'arm':<38}{'tokens':>8}{'seconds':>10}{'tok/s':>10}")
    for name, r in results.items():
        print(f"{name:<38}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens'] / r['seconds']:>10.1f}")
    for key, value in summary.items():
        print(f"{key:<38}{value:>8.3f}")
    print(json.dumps({"arms": results, **summary}, default=float))


def toggled_arms(
    strategy, examples, harness_arm, results: dict, single: int, off, label: str, key: str
) -> None:
    """A speed-up on and off (``off()`` turns it off): the pass with the stop string in ABBA order against
    drift, then ``single`` requests both ways back to back (``single_arms``), and the share of identical
    answers; ratios on / off."""
    texts, wall = {}, {"on": 0.0, "off": 0.0}
    for k, arm in enumerate(("on", "off", "off", "on")):
        with off() if arm == "off" else contextlib.nullcontext():
            texts[arm] = harness_arm(f"pass, {key} {arm} #{k}", prefix=True)
        wall[arm] += results[f"pass, {key} {arm} #{k}"]["seconds"]
    summary = {f"pass_{key}_on_vs_off_wall": wall["on"] / wall["off"]}
    if single:  # 0: a speed-up of batches only
        ratios = single_arms(strategy, examples[:single], off, label, results)
        summary[f"single_{key}_on_vs_off_wall"] = (
            results[f"single requests ({label} on)"]["seconds"]
            / results[f"single requests ({label} off)"]["seconds"]
        )
        summary[f"single_{key}_on_vs_off_median"] = statistics.median(ratios)
    summary[f"identical_answers_{key}_on_off"] = identical(texts["on"], texts["off"])
    report(results, summary)


def fused_arms(strategy, examples, packed, harness_arm, results: dict, single: int) -> None:
    """``--arms fused``: sibling projections stacked (on) and apart (off)."""
    toggled_arms(
        strategy, examples, harness_arm, results, single, packed.separate, "fused projections", "fused"
    )


def gemv_arms(strategy, examples, packed, harness_arm, results: dict, single: int) -> None:
    """``--arms gemv``: the pass (its answers), then ``single`` requests with one-row products through
    PyTorch's gemv and through the packs, back to back (``single_arms``)."""
    batched = harness_arm("pass (batched)", prefix=True)
    texts: dict = {}
    packed.gemv_calls = 0
    ratios = single_arms(strategy, examples[:single], packed.plain_rows, "one-row gemv", results, texts)
    on, off = texts["single requests (one-row gemv on)"], texts["single requests (one-row gemv off)"]
    summary = {
        "single_gemv_on_vs_off_wall": results["single requests (one-row gemv on)"]["seconds"]
        / results["single requests (one-row gemv off)"]["seconds"],
        "single_gemv_on_vs_off_median": statistics.median(ratios),
        "identical_answers_single_gemv_on_off": identical(on, off),
        "identical_answers_single_off_vs_pass": identical(off, batched),
        "identical_answers_single_on_vs_pass": identical(on, batched),
        "gemv_products": packed.gemv_calls,
    }
    report(results, summary)


def attach_random_lora(backend, cfg) -> None:
    """A random LoRA adapter of the demo's shape (r=16, alpha 32, all linear layers) loaded and switched
    off: the state of the base strategies' requests once an adapter strategy has run."""
    import tempfile

    from peft import LoraConfig, get_peft_model

    from harness.backends.loading import cache_root, load_model

    donor = load_model(cfg, cache_root()).model
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    get_peft_model(donor, lora).save_pretrained(folder)
    del donor
    backend.load_adapter(str(folder), "bench")
    backend.select_adapter(None)


def lora_arms(strategy, examples, backend, harness_arm, results: dict, single: int) -> None:
    """``--arms lora``: with an adapter loaded and off, plain linears (the LoRA layers swapped out: on) and
    peft's wrappers (off)."""
    toggled_arms(
        strategy,
        examples,
        harness_arm,
        results,
        single,
        backend.wrappers_kept,
        "plain linears",
        "plain_linears",
    )


def kv_arms(strategy, examples, backend, harness_arm, results: dict, single: int) -> None:
    """``--arms kv``: KV caches growing in place (harness/backends/kv_buffers.py: on) or by ``torch.cat``."""
    off = functools.partial(mock.patch.object, backend, "kv_buffers", False)
    toggled_arms(strategy, examples, harness_arm, results, single, off, "kv buffers", "kv_buffers")


def shared_arms(strategy, examples, backend, harness_arm, results: dict) -> None:
    """``--arms shared``: a batch's shared prefix kept once and attended once for all rows
    (harness/backends/shared_prefix.py: on) or repeated into every row; batches only."""
    if not backend.shared_prefix:
        raise SystemExit("--arms shared: shared-prefix attention is off here (bf16/fp16 on a CPU only)")
    off = functools.partial(mock.patch.object, backend, "shared_prefix", False)  # repeated per row
    toggled_arms(strategy, examples, harness_arm, results, 0, off, "shared prefix", "shared_prefix")


def batch_arms(harness_arm, sizes: list[int], results: dict) -> None:
    """``--arms batch``: the pass at each of ``--batch-sizes`` (prompts per call and rows decoding
    together), in ABBA order against drift; ratios against the first size."""
    texts, wall = {}, dict.fromkeys(sizes, 0.0)
    for k, size in enumerate(sizes + sizes[::-1]):
        texts[size] = harness_arm(f"pass, batch {size} #{k}", prefix=True, per_call=size, slots=size)
        wall[size] += results[f"pass, batch {size} #{k}"]["seconds"]
    first = sizes[0]
    summary = {f"batch_{n}_vs_{first}_wall": wall[n] / wall[first] for n in sizes[1:]}
    summary |= {
        f"identical_answers_batch_{n}_vs_{first}": identical(texts[n], texts[first]) for n in sizes[1:]
    }
    report(results, summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--shape", choices=["tiny", "1b", "7b"], help="random-init model of this shape")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--n", type=int, default=92, help="prompts (the demo test split has 92)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--stop", default="\n\n")
    ap.add_argument("--single", type=int, default=16, help="single requests per packed-linear arm")
    ap.add_argument("--static-cache", action="store_true", help="static KV cache (+ compile on CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--strategy", default="prompt", choices=sorted(STRATEGIES), help="whose prompts")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="model.dtype")
    ap.add_argument(
        "--arms",
        default="all",
        choices=["all", "fused", "gemv", "lora", "batch", "kv", "shared"],
        help="fused: only stacked sibling projections on/off; gemv: only single requests' one-row gemv on/off; "
        "lora: an adapter loaded and off, plain linears vs peft's wrappers; batch: the pass at --batch-sizes; "
        "kv: KV caches growing in place vs by a copy per step; shared: a batch's shared prefix kept once vs per row",
    )
    ap.add_argument(
        "--batch-sizes", default="16,32", help="--arms batch: sizes to compare (the first: baseline)"
    )
    args = ap.parse_args()

    import torch

    from harness import plugin
    from harness.backends import decode_attention
    from harness.backends.base import cut_at_stop
    from harness.backends.continuous import DecodeStats as continuous_stats
    from harness.backends.hf import TransformersBackend
    from harness.backends.loading import cache_root, load_model
    from harness.config import GenerationConfig, ModelConfig, StrategySpec
    from harness.data import load_eval_set
    from harness.plugin import RunContext

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.static_cache:
        os.environ["ADAPTBENCH_STATIC_CACHE"] = "1"
    model_id = args.model
    if args.shape:
        from bench.shapes import model_dir

        model_id = str(model_dir(args.shape))
    cfg = ModelConfig(id=model_id, device=args.device, dtype=args.dtype)
    loaded = load_model(cfg, cache_root())
    if loaded.info.device == "cuda":
        from bench.shapes import accelerators

        if accelerators()["flash_attn"]:
            loaded.model.set_attn_implementation("flash_attention_2")
    backend = TransformersBackend(loaded, cfg)

    eval_set = load_eval_set(REPO / "eval_sets" / "nimbus_support")
    test = list(eval_set.split("test"))
    examples = [{**test[i % len(test)], "id": f"{test[i % len(test)]['id']}#{i}"} for i in range(args.n)]
    strategy = plugin.build(StrategySpec(id="bench", **STRATEGIES[args.strategy]), 0)
    prefix_cache = backend.prefix_cache  # None when turned off (ADAPTBENCH_PREFIX_CACHE=0, static cache)
    was_continuous = backend.continuous  # False when turned off (ADAPTBENCH_CONTINUOUS=0, static cache)

    def harness_arm(
        name: str, prefix: bool, continuous: bool = True, per_call: int = 0, slots: int = 0
    ) -> dict[str, str]:
        """One harness pass with the prefix cache on (emptied first: the arm computes its prefixes) or off,
        continuous batching on or off, ``per_call`` prompts per ``predict`` call (0: the batch size),
        ``slots`` rows decoding together (0: the batch size)."""
        backend.prefix_cache = prefix_cache if prefix else None
        before = dataclasses.replace(prefix_cache.stats) if prefix_cache is not None else None
        if prefix_cache is not None:
            prefix_cache.clear()
        backend.continuous = continuous and was_continuous
        stats = backend.continuous_stats = continuous_stats()
        if slots:
            strategy.ctx = context(list(strategy.ctx.generation.stop), slots)
        s, t, texts = harness_pass(strategy, examples, per_call or args.batch_size)
        backend.continuous = was_continuous
        results[name] = {"seconds": s, "tokens": t}
        if stats.steps:
            results[name]["steps"] = stats.steps
        if prefix and prefix_cache is not None and before is not None:
            after = prefix_cache.stats
            results[name]["prefix"] = {
                k: getattr(after, k) - getattr(before, k) for k in ("computed", "hits", "tokens_saved")
            }
        backend.prefix_cache = prefix_cache
        return texts

    def context(stop: list[str], batch_size: int = 0) -> RunContext:
        gen = GenerationConfig(
            max_new_tokens=args.max_new_tokens, batch_size=batch_size or args.batch_size, stop=stop
        )
        return RunContext(eval_set, backend, gen, 0, cache_root(), Path("/tmp"))

    strategy.prepare(context([]))
    texts = [backend.render(strategy.build_prompt(ex)[0]) for ex in examples]
    bare_pass(loaded, texts[:2], 2, 4)  # warm-up (allocator, kernels, compile)
    harness_pass(strategy, examples[:2], 2)

    results: dict[str, dict] = {}
    packed = backend.packed  # None unless bf16 on CPU (harness/backends/packed_linear.py)
    if args.arms == "fused":
        if packed is None or not packed.groups:
            raise SystemExit("--arms fused: no stacked sibling projections here (bf16 on a CPU only)")
        strategy.ctx = context([args.stop])
        return fused_arms(strategy, examples, packed, harness_arm, results, args.single)
    if args.arms == "lora":
        attach_random_lora(backend, cfg)
        strategy.ctx = context([args.stop])
        return lora_arms(strategy, examples, backend, harness_arm, results, args.single)
    if args.arms == "shared":
        strategy.ctx = context([args.stop])
        return shared_arms(strategy, examples, backend, harness_arm, results)
    if args.arms == "kv":
        strategy.ctx = context([args.stop])
        return kv_arms(strategy, examples, backend, harness_arm, results, args.single)
    if args.arms == "batch":
        strategy.ctx = context([args.stop])
        return batch_arms(harness_arm, [int(x) for x in args.batch_sizes.split(",")], results)
    if args.arms == "gemv":
        if packed is None or not packed.gemv:
            raise SystemExit(
                "--arms gemv: no packed linears here (bf16 on a CPU only) or ADAPTBENCH_ONE_ROW_GEMV=0"
            )
        strategy.ctx = context([args.stop])
        return gemv_arms(strategy, examples, packed, harness_arm, results, args.single)
    with (  # plain transformers
        decode_attention.suspended(loaded.model),
        packed.suspended() if packed is not None else contextlib.nullcontext(),
    ):
        s, t, bare_texts = bare_pass(loaded, texts, args.batch_size, args.max_new_tokens)
    results["bare"] = {"seconds": s, "tokens": t}
    harness_arm("harness", prefix=True)
    strategy.ctx = context([args.stop])
    stop_texts = harness_arm("harness+stop", prefix=True)
    off_texts = harness_arm("harness+stop (prefix cache off)", prefix=False)
    if was_continuous:
        generate_texts = harness_arm("harness+stop (continuous off)", prefix=True, continuous=False)
        harness_arm("harness+stop (continuous, one call)", prefix=True, per_call=len(examples))
    if packed is not None:
        with packed.suspended():
            unpacked_texts = harness_arm("harness+stop (packed linear off)", prefix=True)
        keep_packs = functools.partial(packed.suspended, release=False)  # no re-packing in the timing
        if args.single > 0:  # --single 0: the batched arms only
            single_ratios = single_arms(strategy, examples[: args.single], keep_packs, "packed", results)
    if backend.decode_attention and args.single > 0:
        attention = functools.partial(decode_attention.suspended, loaded.model)
        attention_ratios = single_arms(
            strategy, examples[: args.single], attention, "decode attention", results
        )
    for r in results.values():
        r["tokens_per_s"] = r["tokens"] / r["seconds"]

    expected = [cut_at_stop(x, [args.stop]) for x in bare_texts]
    same = sum(stop_texts[ex["id"]] == e for ex, e in zip(examples, expected, strict=True)) / len(examples)
    same_prefix = identical(stop_texts, off_texts)
    bare = results["bare"]
    summary = {
        "harness_vs_bare_tokens_per_s": results["harness"]["tokens_per_s"] / bare["tokens_per_s"],
        "harness_stop_vs_bare_wall": results["harness+stop"]["seconds"] / bare["seconds"],
        "prefix_on_vs_off_wall": results["harness+stop"]["seconds"]
        / results["harness+stop (prefix cache off)"]["seconds"],
        "identical_answers_vs_bare_cut": same,
        "identical_answers_prefix_on_off": same_prefix,
    }
    if was_continuous:
        off = results["harness+stop (continuous off)"]["seconds"]
        summary |= {
            "continuous_on_vs_off_wall": results["harness+stop"]["seconds"] / off,
            "continuous_one_call_vs_off_wall": results["harness+stop (continuous, one call)"]["seconds"]
            / off,
            "identical_answers_continuous_on_off": identical(stop_texts, generate_texts),
        }
    if packed is not None:
        summary |= {
            "packed_on_vs_off_wall": results["harness+stop"]["seconds"]
            / results["harness+stop (packed linear off)"]["seconds"],
            "identical_answers_packed_on_off": identical(stop_texts, unpacked_texts),
        }
        if args.single > 0:
            summary |= {
                "single_packed_on_vs_off_wall": results["single requests (packed on)"]["seconds"]
                / results["single requests (packed off)"]["seconds"],
                "single_packed_on_vs_off_median": statistics.median(single_ratios),
            }
    if backend.decode_attention and args.single > 0:
        summary |= {
            "single_attention_on_vs_off_wall": results["single requests (decode attention on)"]["seconds"]
            / results["single requests (decode attention off)"]["seconds"],
            "single_attention_on_vs_off_median": statistics.median(attention_ratios),
        }
    prompt_tokens = [backend.count_tokens(x) for x in texts]
    print(
        f"model={model_id} device={loaded.info.device} dtype={loaded.info.dtype} n={args.n} "
        f"strategy={args.strategy} prompt_tokens_mean={sum(prompt_tokens) / len(prompt_tokens):.0f} "
        f"batch={args.batch_size} max_new_tokens={args.max_new_tokens} static_cache={args.static_cache} "
        f"prefix_cache={prefix_cache is not None} threads={torch.get_num_threads()}"
    )
    print(f"{'arm':<38}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'steps':>7}  prefix cache")
    for name, r in results.items():
        print(
            f"{name:<38}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens_per_s']:>10.1f}{r.get('steps', ''):>7}"
            f"  {r.get('prefix', '')}"
        )
    for key, value in summary.items():
        print(f"{key:<38}{value:>8.3f}")
    print(json.dumps({"arms": results, **summary}, default=float))


if __name__ == "__main__":
    main()
