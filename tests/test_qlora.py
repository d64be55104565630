"""Real QLoRA training runs (4-bit NF4 bitsandbytes on CPU + peft LoRA + trl) on the tiny model."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from click.testing import CliRunner

from harness import plugin as registry
from harness.cli import main
from harness.config import StrategySpec, load_config
from harness.data import load_eval_set
from harness.rundir import load_predictions
from harness.runner import open_context, run
from strategies.adapters import attach, cache, data, quantized, trainer

pytestmark = pytest.mark.slow

# Model-free metrics only: scoring is tested elsewhere, these tests are about training.
LIGHT = {"metrics": ["exact_match", "token_f1"]}

# Few steps, high learning rate: the tiny random model must visibly learn within seconds.
FAST = {
    "max_steps": 6,
    "batch_size": 3,
    "learning_rate": 0.005,
    "eval_steps": 3,
    "gradient_checkpointing": True,
}


def _ctx(write_config, tmp_path, strategies):
    cfg = load_config(write_config(strategies=strategies))
    return cfg, open_context(cfg, load_eval_set(cfg.eval_set.path), tmp_path / "run")


def test_qlora_trains_4bit_loss_decreases_and_cache_hits(write_config, tmp_path, monkeypatch):
    cfg, ctx = _ctx(write_config, tmp_path, [{"name": "qlora", "id": "qlora", **FAST}])
    strategy = registry.build(cfg.strategies[0], 0)

    loaded_4bit = []
    real_load = quantized._load_4bit
    monkeypatch.setattr(
        quantized, "_load_4bit", lambda c: loaded_4bit.append(real_load(c)) or loaded_4bit[-1]
    )
    result = strategy.train(ctx)
    rec = result.record
    assert not result.cache_hit
    # The training base really was bitsandbytes 4-bit NF4 with double quantisation.
    qmodel = loaded_4bit[0].model
    assert qmodel.is_loaded_in_4bit
    qcfg = qmodel.config.quantization_config
    assert qcfg.bnb_4bit_quant_type == "nf4" and qcfg.bnb_4bit_use_double_quant
    assert any(type(m).__name__ == "Linear4bit" for m in qmodel.modules())

    assert rec["quantization"] == "4bit" and rec["fallback_reason"] is None and rec["device"] == "cpu"
    assert rec["gradient_checkpointing"] is True  # the setting in effect, recorded
    assert rec["steps"] == 6 and rec["tokens_seen"] > 0 and rec["tokens_per_s"] > 0
    assert 0 < rec["step_seconds"] <= rec["train_seconds"]  # tokens/s counts optimizer steps only
    assert 0 < rec["trainable_share"] < 1 and rec["trainable_params"] > 0
    assert rec["peak_memory_kind"] == "process_rss" and rec["peak_memory_bytes"] >= rec["rss_before_bytes"]
    # Loss decreases: validation below the untrained base, late training loss below early.
    assert rec["val_loss_final"] < rec["val_loss_base"] - 0.05
    train_curve = [p["loss"] for p in rec["loss_curve"]["train"]]
    assert sum(train_curve[-3:]) / 3 < sum(train_curve[:3]) / 3
    assert rec["loss_curve"]["validation"][0] == {"step": 0, "loss": round(rec["val_loss_base"], 5)}
    assert (result.adapter_dir / "adapter_model.safetensors").stat().st_size == rec["adapter_bytes"]
    assert result.adapter_dir.parent == ctx.cache_dir / "adapters"
    assert not list(result.adapter_dir.parent.glob(".tmp-*"))  # atomic: no leftovers
    run_record = json.loads((ctx.run_dir / "training" / "qlora.json").read_text())
    assert run_record["source"] == "trained" and run_record["key"] == rec["key"]

    # Same key: cache hit, nothing is loaded or trained.
    monkeypatch.setattr(trainer, "load_training_base", lambda *a: pytest.fail("retrained on a cache hit"))
    again = registry.build(cfg.strategies[0], 0).train(ctx)
    assert again.cache_hit and again.adapter_dir == result.adapter_dir and again.record["key"] == rec["key"]

    # Any training hyper-parameter change is a miss (another key, so another folder); same params hit.
    changed = registry.get("qlora").Params.model_validate(
        {**cfg.strategies[0].params, "learning_rate": 0.002}
    )
    rows = data.build_data(ctx, changed, strategy.training_prompts)
    assert cache.cache_key(ctx, changed, rows) != rec["key"]
    assert cache.cache_key(ctx, strategy.params, rows) == rec["key"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_precision_follows_the_base_dtype(write_config, tmp_path, monkeypatch, dtype):
    """A bf16 base (``dtype: auto`` on a CPU with native bf16) trains under bf16 autocast, an fp32 base in
    fp32; LoRA weights stay fp32 master weights either way, and the adapter still learns."""
    from safetensors.torch import load_file

    cfg = load_config(
        write_config(strategies=[{"name": "qlora", "id": "qlora", **FAST}], model={"dtype": dtype})
    )
    ctx = open_context(cfg, load_eval_set(cfg.eval_set.path), tmp_path / "run")
    built = []
    real_build = trainer.build_trainer
    monkeypatch.setattr(
        trainer, "build_trainer", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]
    )
    result = registry.build(cfg.strategies[0], 0).train(ctx)
    rec = result.record
    assert rec["base_dtype"] == dtype == ctx.backend.describe()["dtype"]
    assert rec["compute_dtype"] == dtype and built[0].args.bf16 is (dtype == "bfloat16")
    assert not built[0].args.fp16
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert weights and {str(w.dtype) for w in weights.values()} == {"torch.float32"}
    assert rec["val_loss_final"] < rec["val_loss_base"] - 0.05


def test_fallback_to_full_precision_lora_is_loud_and_recorded(write_config, tmp_path, monkeypatch, caplog):
    def no_backend(ctx):
        raise RuntimeError("no bitsandbytes backend for device 'npu'")

    monkeypatch.setattr(quantized, "_load_4bit", no_backend)
    cfg = load_config(write_config(strategies=[{"name": "qlora", "id": "qlora", **FAST}], **LIGHT))
    with caplog.at_level(logging.WARNING, logger="adaptbench.training"):
        result = run(cfg, run_dir=tmp_path / "run", progress=False)
    assert "falling back to LoRA on the full-precision base" in caplog.text
    assert "no bitsandbytes backend for device 'npu'" in caplog.text

    cost = json.loads((tmp_path / "run" / "manifest.json").read_text())["strategies"]["qlora"]["cost"]
    assert cost["training"]["quantization"] == "none"
    assert "no bitsandbytes backend" in cost["training"]["fallback_reason"]
    assert any("4-bit unavailable" in n for n in cost["notes"])
    rec = json.loads((tmp_path / "run" / "training" / "qlora.json").read_text())
    assert rec["quantization_requested"] == "4bit" and rec["quantization"] == "none"
    assert rec["val_loss_final"] < rec["val_loss_base"]
    assert cost["train_seconds"] > 0 and cost["adapter_bytes"] > 0 and cost["peak_memory_bytes"] > 0
    assert len([p for p in load_predictions(result.run_dir / "predictions.jsonl")]) == 6


def test_train_command_then_evaluate_with_adapter(write_config, tmp_path, monkeypatch):
    cfg = write_config(
        strategies=[{"name": "prompt", "id": "base"}, {"name": "qlora", "id": "qlora", **FAST}], **LIGHT
    )
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(cfg), "--out", str(tmp_path / "trained")])
    assert res.exit_code == 0, res.output
    adapter = next(line.split("adapter: ", 1)[1] for line in res.output.splitlines() if "adapter: " in line)
    assert "qlora: trained 4bit LoRA, 6 steps" in res.output
    assert (tmp_path / "trained" / "training" / "qlora.json").is_file()
    assert not (tmp_path / "trained" / "predictions.jsonl").exists()  # trains, does not evaluate

    # --adapter: evaluate that folder, no training at all.
    monkeypatch.setattr(attach, "train_adapter", lambda *a, **k: pytest.fail("trained despite --adapter"))
    out = tmp_path / "eval"
    res = runner.invoke(
        main, ["run", str(cfg), "--adapter", f"qlora={adapter}", "--out", str(out), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "training" / "qlora.json").read_text())
    assert rec["source"] == "--adapter" and rec["adapter_dir"] == adapter
    assert rec["inference_base"]["val_loss_adapter"] < rec["inference_base"]["val_loss_base"]
    preds = [p for p in load_predictions(out / "predictions.jsonl") if p["strategy"] == "qlora"]
    assert len(preds) == 6
    fingerprint = json.loads((out / "manifest.json").read_text())["fingerprint"]["strategies"]["qlora"]
    assert fingerprint["adapter_path"] == adapter

    # An adapter trained for another base is refused in one line.
    other = tmp_path / "other-adapter"
    shutil.copytree(adapter, other)
    record = json.loads((other / "training_record.json").read_text())
    record["base_model"]["id"] = "someone/else-7b"
    (other / "training_record.json").write_text(json.dumps(record))
    res = runner.invoke(
        main,
        ["run", str(cfg), "--adapter", str(other), "--strategies", "qlora", "--out", str(tmp_path / "x")],
    )
    assert res.exit_code == 2
    assert (
        res.output.strip().startswith("error: adapter ")
        and "trained for base model 'someone/else-7b'" in res.output
    )


def test_rag_qlora_hybrid_on_toy_set(write_config, tmp_path):
    cfg = load_config(
        write_config(
            strategies=[{"name": "rag+qlora", "id": "rag_qlora", "top_k": 2, "raft_p_gold": 0.5, **FAST}],
            metrics=["exact_match", "token_f1", "recall_at_k", "faithfulness"],
        )
    )
    result = run(cfg, run_dir=tmp_path / "run", progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    cost = manifest["strategies"]["rag_qlora"]["cost"]
    assert cost["training"]["quantization"] == "4bit" and cost["n_chunks"] == 5
    assert cost["raft"]["train"]["n"] == 6 and 0 < cost["raft"]["train"]["with_gold"] < 6
    rec = json.loads((result.run_dir / "training" / "rag_qlora.json").read_text())
    assert rec["val_loss_final"] < rec["val_loss_base"]
    preds = [p for p in load_predictions(result.run_dir / "predictions.jsonl")]
    assert len(preds) == 6 and all(len(p["extra"]["retrieved"]) == 2 for p in preds)
    # Test-time retrieval sees the kb_updates overlay (training used the pre-update KB).
    assert next(p for p in preds if p["example_id"] == "te-6")["extra"]["retrieved"][0]["doc_id"] == "returns"
    rows = json.loads((result.run_dir / "scores.json").read_text())["strategies"]["rag_qlora"]["per_example"]
    assert all(r["recall_at_k"] is not None and r["faithfulness"] is not None for r in rows.values())


@pytest.mark.parametrize("sentences", [None, 1])
def test_rag_qlora_trains_on_the_context_it_is_tested_with(write_config, tmp_path, sentences):
    """Training prompts get the same context compression (``context_sentences``) as test prompts: a
    validation prompt (plain top-k, as at test time) equals the test-time prompt built from the same
    retriever."""
    spec = {"name": "rag+qlora", "id": "rag_qlora", "top_k": 2, "context_sentences": sentences, **FAST}
    cfg, ctx = _ctx(write_config, tmp_path, [spec])
    strategy = registry.build(cfg.strategies[0], 0)
    strategy.setup(ctx)
    rows = list(ctx.eval_set.split("validation"))
    prompts = strategy.training_prompts(rows, "validation")
    strategy.retriever = strategy._train_retriever  # the KB as of training time, for the comparison
    for row, (prompt, answer) in zip(rows, prompts, strict=True):
        assert answer == row["answer"]
        assert prompt == strategy.build_prompt(row)[0]
    if sentences:
        full = registry.build(StrategySpec(**{**spec, "context_sentences": None}), 0)
        full.setup(ctx)
        whole = full.training_prompts(rows, "validation")
        assert all(
            len(p[-1]["content"]) < len(w[-1]["content"])
            for (p, _), (w, _) in zip(prompts, whole, strict=True)
        )
