"""The ``openai`` backend against an in-process fake OpenAI-compatible server (loopback, fast)."""

from __future__ import annotations

import pytest

from harness.backends import get_backend
from harness.backends.openai import OpenAIBackend
from harness.config import GenerationConfig, ModelConfig
from harness.errors import ConfigError, ModelError
from harness.latency import request_clock
from tests.support.fake_openai import FakeOpenAI

GEN = GenerationConfig(max_new_tokens=8)


def prompt(q: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": q}]


@pytest.fixture()
def fake():
    server = FakeOpenAI().start()
    yield server
    server.stop()


def backend(url, **kw) -> OpenAIBackend:
    cfg = ModelConfig(
        backend="openai", base_url=url, id="tiny", max_retries=3, retry_backoff_s=0.01, timeout_s=5, **kw
    )
    return OpenAIBackend.open(cfg, cache_dir=None)  # type: ignore[arg-type]


def test_registered_under_openai():
    assert get_backend("openai") is OpenAIBackend


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_answers_in_order_with_usage(fake, endpoint):
    be = backend(fake.url, endpoint=endpoint)
    out = be.generate([prompt("alpha one"), prompt("beta two")], GEN)
    assert [g.text for g in out.generations] == ["echo: alpha one", "echo: beta two"]
    assert [g.new_tokens for g in out.generations] == [3, 3]  # from the server's usage
    assert all(g.prompt_tokens > 0 for g in out.generations)
    paths = {r["path"] for r in fake.requests}
    assert paths == {"/v1/chat/completions" if endpoint == "chat" else "/v1/completions"}
    if endpoint == "completions":
        assert "System: be brief\n\nUser: alpha one\n\nAssistant:" in {r["prompt"] for r in fake.requests}
    assert be.stats["completion_tokens"] == 6 and be.stats["estimated"] == 0
    assert be.context_window == 512  # learnt from /models (max_model_len)


def test_usage_missing_falls_back_to_estimate():
    server = FakeOpenAI(usage=False).start()
    try:
        be = backend(server.url)
        (g,) = be.generate([prompt("x" * 40)], GEN).generations
        assert g.new_tokens == be.count_tokens("echo: " + "x" * 40) == 12  # ceil(46 / 4)
        assert be.stats["estimated"] == 1
        assert "chars/4" in be.describe()["token_counts"]
    finally:
        server.stop()


def test_stream_without_usage_counts_content_events():
    """llama-cpp-python streams no usage: a streamed answer's tokens are its content events (about one
    per token), not characters / 4."""
    server = FakeOpenAI(usage=False).start()
    try:
        be = backend(server.url)
        with request_clock():
            (g,) = be.generate([prompt("stream me please")], GEN).generations
        assert g.text == "echo: stream me please" and g.new_tokens == 4  # ceil(22 / 4) would be 6
        assert be.stats["estimated"] == 1
    finally:
        server.stop()


def test_stop_strings_sent_and_applied(fake):
    be = backend(fake.url)
    (g,) = be.generate(
        [prompt("keep this. drop")], GenerationConfig(max_new_tokens=8, stop=["."])
    ).generations
    assert fake.requests[0]["stop"] == ["."]
    assert g.text == "echo: keep this"


def test_streaming_marks_first_token(fake):
    be = backend(fake.url)
    with request_clock() as clock:
        (g,) = be.generate([prompt("stream me please")], GEN).generations
    assert fake.requests[0]["stream"] is True
    assert g.text == "echo: stream me please" and g.new_tokens == 4
    assert clock.first_token is not None and clock.first_token >= clock.start
    be.generate([prompt("batch pass")], GEN)  # outside a probe: no streaming needed
    assert fake.requests[1]["stream"] is False


def test_stream_cut_mid_answer_is_retried_whole(fake):
    fake.cut_streams = 1
    be = backend(fake.url)
    with request_clock() as clock:
        (g,) = be.generate([prompt("say it once")], GEN).generations
    assert g.text == "echo: say it once"  # the broken attempt's first word is not kept
    assert len(fake.requests) == 2 and be.stats["retries"] == 1
    assert clock.first_token is not None


def test_stream_done_without_finish_reason_is_a_cut_answer(fake):
    """llama-cpp-python's server (interrupt_requests) ends a stream with [DONE] and no finish reason when
    another request waits: that answer is incomplete, so it is retried, not kept."""
    fake.interrupt_streams = 1
    be = backend(fake.url)
    with request_clock():
        (g,) = be.generate([prompt("say it all")], GEN).generations
    assert g.text == "echo: say it all"
    assert len(fake.requests) == 2 and be.stats["retries"] == 1


def test_backoff_doubles_with_jitter_and_honours_retry_after():
    from harness.backends._http import HTTPStatusError, with_retries

    slept: list[float] = []
    errors = [
        ConnectionRefusedError(),
        ConnectionResetError(),
        HTTPStatusError(429, "", "u", retry_after=5.0),
    ]

    def attempt(i: int) -> str:
        if i < len(errors):
            raise errors[i]
        return "ok"

    assert with_retries(attempt, max_retries=3, backoff_s=0.1, sleep=slept.append) == "ok"
    assert 0.05 <= slept[0] <= 0.1 and 0.1 <= slept[1] <= 0.2  # backoff_s * 2**i, jittered in [cap/2, cap]
    assert slept[2] == 5.0  # the server's Retry-After wins over a shorter backoff
    with pytest.raises(ValueError):  # not a transport error: no retry
        with_retries(lambda i: int("x"), max_retries=3, backoff_s=0.1, sleep=slept.append)
    assert len(slept) == 3


def test_429_then_success_is_retried(fake):
    fake.fail_with = [429, 503]
    be = backend(fake.url)
    (g,) = be.generate([prompt("retry")], GEN).generations
    assert g.text == "echo: retry"
    assert len(fake.requests) == 3 and be.stats["retries"] == 2


def test_500s_exhaust_retries_into_one_clear_error(fake):
    fake.fail_with = [500] * 10
    be = backend(fake.url)
    with pytest.raises(ModelError) as err:
        be.generate([prompt("doomed")], GEN)
    msg = str(err.value)
    assert "4 attempts" in msg and "HTTP 500" in msg and "\n" not in msg
    assert len(fake.requests) == 4  # 1 + max_retries


def test_client_error_is_not_retried(fake):
    be = backend(fake.url)
    with pytest.raises(ModelError, match="is model.id / the adapter name served"):
        be.generate([prompt("q")], GEN, adapter="not-served")
    assert len(fake.requests) == 1


def test_timeout_is_retried_then_reported(fake):
    fake.delay_s = 1.0
    cfg = ModelConfig(
        backend="openai", base_url=fake.url, id="tiny", max_retries=1, retry_backoff_s=0.01, timeout_s=0.2
    )
    be = OpenAIBackend(cfg)
    with pytest.raises(ModelError, match="timed out"):
        be.generate([prompt("slow")], GEN)
    assert len(fake.requests) == 2


def test_round_robin_across_base_urls():
    a, b = FakeOpenAI("A").start(), FakeOpenAI("B").start()
    try:
        be = backend([a.url, b.url], concurrency=1)
        be.generate([prompt(f"q{i}") for i in range(6)], GEN)
        assert len(a.requests) == 3 and len(b.requests) == 3
        assert be.describe()["base_urls"] == [a.url, b.url]
    finally:
        a.stop()
        b.stop()


def test_dead_replica_is_routed_around():
    a, b = FakeOpenAI("A").start(), FakeOpenAI("B").start()
    try:
        be = backend([a.url, b.url], concurrency=1)
        a.stop()  # replica A dies after the start-up check
        out = be.generate([prompt(f"q{i}") for i in range(4)], GEN)
        assert [g.text for g in out.generations] == [f"echo: q{i}" for i in range(4)]
        assert len(b.requests) == 4
    finally:
        b.stop()


def test_concurrency_limit_respected(fake):
    fake.delay_s = 0.15
    be = backend(fake.url, concurrency=3)
    be.generate([prompt(f"q{i}") for i in range(9)], GEN)
    assert fake.max_in_flight == 3  # reached, never exceeded


def test_adapter_name_is_sent_as_model():
    server = FakeOpenAI(models=("tiny", "support-lora")).start()
    try:
        be = backend(server.url)
        be.generate([prompt("q")], GEN, adapter="support-lora")
        be.generate([prompt("q")], GEN)
        assert [r["model"] for r in server.requests] == ["support-lora", "tiny"]
    finally:
        server.stop()


def test_unknown_model_and_down_server_fail_at_open(fake):
    fake.models = ["tiny", "tiny-lora"]
    with pytest.raises(ModelError, match="'nope' is not served .*served: tiny, tiny-lora"):
        OpenAIBackend(ModelConfig(backend="openai", base_url=fake.url, id="nope"))
    fake.models = ["/models/x.gguf"]  # one model under another name (llama.cpp): accepted, noted
    assert (
        OpenAIBackend(ModelConfig(backend="openai", base_url=fake.url, id="x")).served["id"]
        == "/models/x.gguf"
    )
    port = fake.port
    fake.stop()
    cfg = ModelConfig(backend="openai", base_url=f"http://127.0.0.1:{port}", id="tiny", max_retries=0)
    with pytest.raises(ModelError, match="cannot list models .* is the server running"):
        OpenAIBackend(cfg)


def test_api_key_read_from_env_never_stored(fake, monkeypatch):
    cfg = ModelConfig(backend="openai", base_url=fake.url, id="tiny", api_key_env="FAKE_KEY_FOR_TEST")
    with pytest.raises(ConfigError, match="FAKE_KEY_FOR_TEST is not set"):
        OpenAIBackend.open(cfg, cache_dir=None)  # type: ignore[arg-type]
    monkeypatch.setenv("FAKE_KEY_FOR_TEST", "s3cret-value")
    be = OpenAIBackend.open(cfg, cache_dir=None)  # type: ignore[arg-type]
    assert "s3cret-value" not in repr(be.describe()) and "s3cret-value" not in cfg.model_dump_json()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"backend": "openai"}, "needs model.base_url"),
        ({"backend": "openai", "base_url": "ftp://x"}, "not an http"),
        ({"backend": "openai", "base_url": []}, "at least one URL"),
        ({"backend": "openai", "base_url": "http://x", "api_key_env": "sk-abc123"}, "NAME of an environment"),
        ({"backend": "openai", "base_url": "http://x", "concurrency": 0}, "must be > 0"),
        ({"backend": "openai", "base_url": "http://x", "endpoint": "embeddings"}, "must be one of"),
        ({"base_url": "http://x"}, "set model.backend: openai"),
    ],
)
def test_config_validation(tmp_path, model, message):
    import yaml

    from harness.config import load_config

    (tmp_path / "set").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"model": model, "eval_set": {"path": "set"}, "strategies": [{"name": "prompt"}]})
    )
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: model")


def test_default_model_dump_unchanged_by_served_fields():
    """Run folders from before the served-model keys keep their fingerprint (and resume)."""
    assert set(ModelConfig().model_dump()) == {
        "backend", "id", "revision", "dtype", "device", "quantization", "trust_remote_code", "max_context"
    }  # fmt: skip
    dumped = ModelConfig(backend="openai", base_url="http://x", concurrency=8).model_dump()
    assert dumped["base_url"] == "http://x" and dumped["concurrency"] == 8 and "timeout_s" not in dumped


def test_credentials_in_url_never_shown():
    from harness.backends._http import Endpoint

    ep = Endpoint.parse("http://user:pw@127.0.0.1:9")
    assert ep.url == "http://user:pw@127.0.0.1:9/v1" and ep.public == "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError, match="no credentials in URLs"):
        ModelConfig(backend="openai", base_url="http://user:pw@127.0.0.1:9", id="t")
