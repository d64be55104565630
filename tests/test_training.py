"""Adapter-training plumbing without training: tokenisation and masks, params, RAFT contexts, merge, CLI args."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from harness import plugin as registry
from harness.backends.hf import TransformersBackend
from harness.backends.loading import load_model
from harness.cli import main
from harness.config import load_config
from harness.data import Document
from harness.errors import ConfigError, DataError
from harness.runner import use_adapters
from strategies.adapters.data import completion_text, encode_example, kb_chunks, split_rows
from strategies.adapters.params import TrainParams
from strategies.adapters.settings import planned_steps
from strategies.rag_qlora import raft_context
from strategies.retrieval import RetrievedChunk

TOY_SET = Path(__file__).parent / "fixtures" / "toy_set"
PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How long is the return window?"},
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tmp_path_factory):
    cfg = load_config_for(tiny_model_dir, tmp_path_factory.mktemp("cfg"))
    loaded = load_model(cfg.model, tmp_path_factory.mktemp("cache"))
    return TransformersBackend(loaded)


def completion_loss(backend, rows, batch_size=8):
    """Mean completion loss of the base (no adapter), through the backend's AdapterHost capability."""
    return backend.adapter_nll(None, rows, batch_size)


def load_config_for(model_dir, folder):
    import yaml

    path = folder / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"id": str(model_dir)},
                "eval_set": {"path": str(TOY_SET)},
                "strategies": [{"name": "qlora"}],
            }
        )
    )
    return load_config(path)


def test_completion_is_answer_plus_end_of_turn_and_masks_only_it(tiny):
    tok = tiny.tokenizer
    text = completion_text(tok, tiny.render, PROMPT, "45 days.")
    assert text == "45 days.<|im_end|>"
    row = encode_example(tok, tiny.render, PROMPT, "45 days.", max_len=512)
    ids, mask = row["input_ids"], row["completion_mask"]
    assert len(ids) == len(mask) and mask[0] == 0 and mask[-1] == 1
    n_prompt = mask.index(1)
    # The prompt part is tokenised exactly like the backend tokenises prompts at inference time.
    assert ids[:n_prompt] == tok(tiny.render(PROMPT), add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[n_prompt:]) == "45 days.<|im_end|>"
    assert set(mask[n_prompt:]) == {1}


def test_overlong_prompt_loses_its_start_not_the_answer(tiny):
    long_prompt = [{"role": "user", "content": "word " * 400 + "How long is the return window?"}]
    row = encode_example(tiny.tokenizer, tiny.render, long_prompt, "45 days.", max_len=64)
    assert len(row["input_ids"]) == 64
    assert tiny.tokenizer.decode(
        [t for t, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
    ) == ("45 days.<|im_end|>")
    assert "return window?" in tiny.tokenizer.decode(row["input_ids"])


def test_kb_chunks_train_every_token_and_respect_length(tiny):
    doc = Document(id="d", title="Returns", text="You can return a bike within 45 days. " * 40, source="x")
    chunks = kb_chunks(tiny.tokenizer, [doc], max_len=48)
    assert len(chunks) > 2
    assert all(len(c["input_ids"]) <= 48 and set(c["completion_mask"]) == {1} for c in chunks)
    assert chunks[-1]["input_ids"][-1] == tiny.tokenizer.eos_token_id


def test_completion_loss_ignores_prompt_tokens(tiny):
    row = encode_example(tiny.tokenizer, tiny.render, PROMPT, "45 days.", max_len=512)
    loss = completion_loss(tiny, [row])
    assert loss > 0 and torch.isfinite(torch.tensor(loss))
    # Token-weighted mean over completion tokens only: duplicating the row or batching differently
    # (padding) leaves it unchanged; a longer prompt with the same answer changes it only via context.
    assert completion_loss(tiny, [row, row], batch_size=1) == pytest.approx(loss, rel=1e-5)
    longer = encode_example(
        tiny.tokenizer, tiny.render, [*PROMPT[:1], {"role": "user", "content": "Hi. " * 20}], "45 days.", 512
    )
    assert completion_loss(tiny, [row, longer], batch_size=2) == pytest.approx(
        (completion_loss(tiny, [row]) + completion_loss(tiny, [longer])) / 2, rel=1e-4
    )


def test_train_params_defaults_and_errors():
    p = TrainParams()
    assert (p.r, p.alpha, p.dropout, p.target_modules, p.learning_rate) == (16, 32, 0.05, "all-linear", 2e-4)
    assert p.quantization == "4bit" and p.lr_scheduler == "cosine" and p.gradient_checkpointing
    assert planned_steps(TrainParams(batch_size=8, epochs=2), 20) == 6
    assert planned_steps(TrainParams(max_steps=5), 1000) == 5
    from harness.config import StrategySpec

    with pytest.raises(ConfigError, match=r"c.yaml: strategies\[0\].r: must be > 0"):
        registry.build(StrategySpec(name="qlora", r=0), 0, "c.yaml")
    with pytest.raises(ConfigError, match=r"strategies\[0\].quantizaton: unknown key"):
        registry.build(StrategySpec(name="qlora", quantizaton="4bit"), 0, "c.yaml")
    with pytest.raises(ConfigError, match=r"strategies\[0\].adapter_path: .*adapter folder not found"):
        registry.build(StrategySpec(name="rag+qlora", adapter_path="/nonexistent/adapter"), 0, "c.yaml")


def test_gradient_checkpointing_auto_is_off_only_for_bf16_training_on_cpu():
    from strategies.adapters.settings import with_checkpointing

    auto = TrainParams(gradient_checkpointing="auto")
    decided = {
        (device, dtype): with_checkpointing(auto, device, dtype).gradient_checkpointing
        for device in ("cpu", "cuda")
        for dtype in ("bfloat16", "float32")
    }
    # CPU fp32: activations twice bf16's size (the demo's 3 GB budget); GPU: memory is the limit for 7-8B.
    assert decided == {
        ("cpu", "bfloat16"): False,
        ("cpu", "float32"): True,
        ("cuda", "bfloat16"): True,
        ("cuda", "float32"): True,
    }
    for explicit in (True, False):  # an explicit setting is kept everywhere
        params = TrainParams(gradient_checkpointing=explicit)
        assert with_checkpointing(params, "cpu", "bfloat16").gradient_checkpointing is explicit
    from harness.config import StrategySpec

    with pytest.raises(ConfigError, match=r"strategies\[0\].gradient_checkpointing"):
        registry.build(StrategySpec(name="qlora", gradient_checkpointing="sometimes"), 0, "c.yaml")


def test_checkpointing_reaches_the_trainer_args_without_a_deprecation_warning(tmp_path):
    import warnings

    from trl import SFTConfig

    from strategies.adapters.settings import checkpointing_args

    for on in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the old name warns on transformers >= 5.25
            args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, **checkpointing_args(SFTConfig, on))
        assert args.gradient_checkpointing is on  # both names agree, whichever this transformers takes
        assert getattr(args, "activation_checkpointing", on) is on
        kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
        assert (kwargs or {}).get("use_reentrant") is (False if on else None)


def test_adapter_path_must_be_a_peft_folder(tmp_path):
    from harness.config import StrategySpec

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a peft adapter folder"):
        registry.build(StrategySpec(name="qlora", adapter_path=str(tmp_path / "empty")), 0, "c.yaml")


def _chunk(doc: str, score: float) -> RetrievedChunk:
    return RetrievedChunk(chunk_id=f"{doc}#0", doc_id=doc, title=doc, text=doc, start=0, end=1, score=score)


def test_raft_context_gold_and_distractor_modes():
    pool = [_chunk(d, s) for d, s in [("a", 0.9), ("b", 0.8), ("c", 0.7), ("gold", 0.6), ("e", 0.5)]]
    hits = pool[:2]
    # Gold missed by top-2: swapped in for the last hit, order stays by score.
    chunks, has_gold = raft_context(hits, pool, {"gold"}, 2, with_gold=True)
    assert [c.doc_id for c in chunks] == ["a", "gold"] and has_gold
    # Distractor-only: no gold document at all.
    pool2 = [_chunk(d, s) for d, s in [("gold", 0.9), ("b", 0.8), ("c", 0.7)]]
    chunks, has_gold = raft_context(pool2[:2], pool2, {"gold"}, 2, with_gold=False)
    assert [c.doc_id for c in chunks] == ["b", "c"] and not has_gold
    # Gold already retrieved: unchanged.
    chunks, has_gold = raft_context(pool2[:2], pool2, {"gold"}, 2, with_gold=True)
    assert [c.doc_id for c in chunks] == ["gold", "b"] and has_gold
    # No gold documents known for the question: plain retrieval.
    chunks, has_gold = raft_context(hits, pool, set(), 2, with_gold=True)
    assert chunks == hits and not has_gold


# fp32: peft's subtraction restores the base up to float rounding. bf16: W + BA is rounded to 8 mantissa
# bits, so subtraction cannot restore it; the backend copies the touched weights back, bit for bit.
@pytest.mark.parametrize(("dtype", "merged_atol"), [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_merge_matches_unmerged_adapter_and_unmerge_restores_base(
    tiny_model_dir, tmp_path, dtype, merged_atol
):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    cfg = load_config_for(tiny_model_dir, tmp_path)
    cfg.model.dtype = dtype
    # A random (non-zero) LoRA adapter saved to disk.
    donor = load_model(cfg.model, tmp_path / "c1").model
    peft_model = get_peft_model(
        donor, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")

    backend = TransformersBackend(load_model(cfg.model, tmp_path / "c2"))
    x = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def logits(adapter):
        backend.select_adapter(adapter)
        with torch.no_grad():
            return backend.model(input_ids=x).logits

    backend.load_adapter(str(tmp_path / "adapter"), "a")
    assert backend.loaded.info.dtype == dtype
    # By tensor, not name: while no adapter computes, the LoRA layers are swapped out (names lose "base_layer")
    weights = [(p, p.detach().clone()) for n, p in backend.model.named_parameters() if "lora_" not in n]
    base, with_adapter = logits(None), logits("a")
    assert not torch.allclose(base, with_adapter, atol=1e-4)
    backend.merge_adapter("a")
    assert backend.merged_adapter == "a"
    merged = logits("a")
    assert torch.allclose(merged, with_adapter, atol=merged_atol)
    assert backend.merged_adapter == "a"
    assert torch.allclose(logits(None), base, atol=1e-4)  # another request unmerges first
    assert backend.merged_adapter is None
    assert not any(isinstance(m, BaseTunerLayer) for m in backend.model.modules())  # plain linears serve
    layers = [layer for _, _, layer in backend._swapped]
    assert layers and not any(m.merged for m in layers)  # peft's own record agrees (bf16: no subtraction)
    if dtype == "bfloat16":  # exact: the same weights, so the same logits
        assert len(weights) > len(layers) and all(torch.equal(p, saved) for p, saved in weights)
        assert torch.equal(logits(None), base)
    backend.merge_adapter("a")  # merged again from the restored base: the same merged model
    assert torch.allclose(logits("a"), merged, atol=1e-5)
    # Training loads its own copy; the inference base is unmerged first so no saved weights stay resident.
    backend.training_copy("none")
    assert backend.merged_adapter is None and "_merge_backup" not in backend.__dict__
    assert torch.allclose(logits(None), base, atol=1e-4)


def test_use_adapters_targets_adapter_strategies_only(write_config, tmp_path):
    cfg = load_config(write_config(strategies=[{"name": "prompt", "id": "p"}, {"name": "qlora", "id": "q"}]))
    use_adapters(cfg, [str(tmp_path / "ad")])
    assert cfg.strategies[1].params["adapter_path"] == str((tmp_path / "ad").resolve())
    assert "adapter_path" not in cfg.strategies[0].params
    with pytest.raises(ConfigError, match=r"--adapter p=x: strategy 'p' does not take an adapter .*: q\)"):
        use_adapters(cfg, ["p=x"])
    only_prompt = load_config(write_config(strategies=[{"name": "prompt"}], name="p.yaml"))
    with pytest.raises(ConfigError, match="no strategy here takes an adapter"):
        use_adapters(only_prompt, ["x"])


def test_cli_adapter_errors_are_one_line(write_config, tmp_path):
    cfg = write_config(strategies=[{"name": "qlora", "id": "q"}])
    res = CliRunner().invoke(main, ["run", str(cfg), "--adapter", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "adapter folder not found" in res.output
    res = CliRunner().invoke(
        main, ["train", str(write_config(strategies=[{"name": "prompt"}], name="p.yaml"))]
    )
    assert res.exit_code == 2 and "no strategy here trains anything" in res.output


def test_validation_split_limit_and_hold_out(write_config, tmp_path):
    from harness.data import load_eval_set

    cfg = load_config(write_config(strategies=[{"name": "qlora"}]))
    es = load_eval_set(cfg.eval_set.path)
    train, val, source = split_rows(es, 0, TrainParams())
    assert (len(train), len(val), source) == (6, 3, "validation")
    train, val, source = split_rows(es, 0, TrainParams(validation_limit=2))
    assert len(val) == 2 and source == "validation (first 2)"
    # No such split: 10% of train (at least one example) held out, deterministically by seed.
    train, val, source = split_rows(es, 0, TrainParams(validation_split="dev"))
    assert len(train) == 5 and len(val) == 1 and "held out" in source
    assert split_rows(es, 0, TrainParams(validation_split="dev"))[1] == val
    with pytest.raises(DataError, match="adapter training needs a 'tune' split"):
        split_rows(es, 0, TrainParams(train_split="tune"))


def test_probe_times_merged_adapters_merged_when_strategies_interleave(tiny_model_dir, tmp_path):
    """The probe round-robins strategies; each adapter strategy with ``merge: true`` is served merged at
    every request (as in the batched pass), not unmerged after the other one's request."""
    from peft import LoraConfig, get_peft_model

    from harness.data import load_eval_set
    from harness.latency import run_probe
    from harness.runner import open_context

    cfg = load_config_for(tiny_model_dir, tmp_path)
    for i in (1, 2):
        donor = get_peft_model(
            load_model(cfg.model, tmp_path / f"c{i}").model,
            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
        )
        donor.save_pretrained(tmp_path / f"adapter{i}")
    ctx = open_context(cfg, load_eval_set(TOY_SET), tmp_path / "run")
    strategies = []
    for i in (1, 2):
        spec = {"name": "qlora", "id": f"q{i}", "adapter_path": str(tmp_path / f"adapter{i}"), "merge": True}
        strategy = registry.build(
            load_config_for(tiny_model_dir, tmp_path).strategies[0].model_copy(update=spec), 0
        )
        strategy.prepare(ctx)
        strategies.append(strategy)
    backend, served = ctx.backend, []
    real = backend.generate
    backend.generate = lambda prompts, params, adapter=None: (
        served.append((adapter, backend.merged_adapter)) or real(prompts, params, adapter)
    )
    examples = list(load_eval_set(TOY_SET).split("test"))
    run_probe(strategies, examples, requests=3, warmup=1, seed=0, progress=False)
    assert len(served) == 8 and {a for a, _ in served} == {s.adapter for s in strategies}
    assert all(adapter == merged for adapter, merged in served)
