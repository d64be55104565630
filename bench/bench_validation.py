"""Validation-loss benchmark: the adapters' validation passes as trl ran them vs the harness's pass.

    python bench/bench_validation.py [--config configs/demo.yaml] [--repeats 2]

Rows: each adapter strategy's validation rows as ``adaptbench run`` builds them (the demo: qlora's 40, and
rag_qlora's 12 retrieval-augmented ones). Arms, one process, alternating ``--repeats`` times (ABBA):

  trl       the trainer's evaluation as trl runs it (``SFTTrainer.evaluate`` under the harness's compact LM
            head on CPU, as in training: labelled positions projected; batches of the training batch
            size, every position through the model, the mean of batch means) on the 4-bit
            training base with a fresh LoRA adapter: the step-0 point of the loss curve, and every
            ``eval_steps``
  harness   ``strategies.adapters.validation``: the same rows through ``likelihood.token_mean_nll``
            (completion positions only, the prompt prefix the rows share computed once, token-weighted)
  served, prefix off|on
            the served-base passes (``AdapterHost.adapter_nll``: base, adapter, merged; 3 per adapter in a
            run) on the run's bf16 base with the shared prefix off (``ADAPTBENCH_PREFIX_CACHE=0``) and on

Printed: seconds per arm (median of the repeats), the ratios harness / trl and prefix on / off, the
losses each arm reports (trl's and the harness's differ by definition: batch means vs token-weighted),
and the shared prefix's length.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def bench_strategy(ctx, strategy, repeats: int) -> None:
    """Time and print the arms for one adapter strategy's validation rows."""
    import trl

    from harness.backends.likelihood import rows_from_masks
    from strategies.adapters.data import build_data
    from strategies.adapters.fused_head import compact_lm_head_on_cpu
    from strategies.adapters.quantized import load_training_base, prepare_for_training
    from strategies.adapters.settings import with_checkpointing
    from strategies.adapters.trainer import build_trainer

    backend = ctx.backend
    strategy.setup(ctx)
    params = strategy.params
    data = build_data(ctx, params, strategy.training_prompts)
    rows = rows_from_masks(data.validation)
    shared = len(os.path.commonprefix([ids for ids, _ in rows]))
    loaded, quant, _ = load_training_base(backend, params)
    checkpointing = with_checkpointing(params, backend.device, loaded.info.dtype).gradient_checkpointing
    model = prepare_for_training(loaded.model, quant, checkpointing)
    out = Path(tempfile.mkdtemp(prefix="bench-val-trainer-"))
    trainer = build_trainer(
        model, loaded.tokenizer, params, data, backend.device, out, 0, strategy.id, dtype=loaded.info.dtype
    )
    loops = {"harness": type(trainer).evaluation_loop, "trl": trl.SFTTrainer.evaluation_loop}
    seconds: dict[str, list[float]] = {}
    losses: dict[str, float] = {}

    def trainer_eval(name: str) -> float:
        type(trainer).evaluation_loop = loops[name]  # the class built for this trainer only
        return trainer.evaluate()["eval_loss"]

    def served(prefix: bool) -> float:
        os.environ["ADAPTBENCH_PREFIX_CACHE"] = "1" if prefix else "0"
        try:
            return backend.adapter_nll(None, data.validation)
        finally:
            os.environ.pop("ADAPTBENCH_PREFIX_CACHE", None)

    arms = {
        "trl": lambda: trainer_eval("trl"),
        "harness": lambda: trainer_eval("harness"),
        "served, prefix off": lambda: served(False),
        "served, prefix on": lambda: served(True),
    }
    order = list(arms)
    with compact_lm_head_on_cpu():  # as in training: trl's fused LM head projects labelled positions only
        trainer_eval("harness"), served(True)  # warm-up
        for r in range(repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                took, losses[name] = timed(arms[name])
                seconds.setdefault(name, []).append(took)
    type(trainer).evaluation_loop = loops["harness"]
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"{strategy.id}: {len(rows)} validation rows, shared prefix {shared} tokens, {quant} training base")
    for name, values in seconds.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<22} median {med[name]:7.2f} s  ({runs})  loss {losses[name]:.5f}")
    print(f"  harness / trl            {med['harness'] / med['trl']:.3f}")
    print(f"  served prefix on / off   {med['served, prefix on'] / med['served, prefix off']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from harness.config import load_config
    from harness.data import open_eval_set
    from harness.runner import build_strategies, open_context

    config = load_config(args.config)
    ctx = open_context(config, open_eval_set(config.eval_set), Path(tempfile.mkdtemp(prefix="bench-val-")))
    for strategy in build_strategies(config, args.config):
        if callable(getattr(strategy, "train", None)):
            bench_strategy(ctx, strategy, args.repeats)


if __name__ == "__main__":
    main()
