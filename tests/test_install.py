"""Install surface: --version, -v/--quiet on every subcommand, extras, the GPU example config."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from harness import __version__
from harness.cli import main
from harness.config import load_config
from harness.optional import MissingDependency, require_module
from harness.validate import validate_config
from tests.conftest import REPO


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert (
        result.exit_code == 0
        and result.output.strip().startswith("adaptbench ")
        and __version__ in result.output
    )


@pytest.mark.parametrize("flag", ["-v", "--verbose", "-q", "--quiet"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbosity_flags_on_every_subcommand(flag, where):
    args = ["validate", str(REPO / "configs" / "demo.yaml")]
    args = [flag, *args] if where == "before" else [*args, flag]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for cmd in ("run", "train", "validate", "report", "init", "strategies"):
        assert "--quiet" in CliRunner().invoke(main, [cmd, "--help"]).output


def test_gpu_config_validates_without_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(REPO / "configs" / "gpu.yaml")
    assert cfg.model.quantization == "4bit" and cfg.model.id.count("/") == 1
    qlora = next(s for s in cfg.strategies if s.name == "qlora").params
    assert qlora["learning_rate"] == 2e-4 and qlora["packing"] is True and "max_steps" not in qlora
    assert validate_config(cfg, "gpu.yaml").problems == []


def test_extras_and_torch_lower_bound():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "torch>=2.4" in meta["dependencies"]
    assert not any(
        d.startswith(("peft", "trl", "bitsandbytes", "faiss", "sentence-transformers"))
        for d in meta["dependencies"]
    )
    extras = meta["optional-dependencies"]
    assert {"train", "rag", "pdf", "demo", "all", "dev"} <= set(extras)
    assert "adaptbench[all]" in extras["dev"]


def test_missing_optional_dependency_is_an_install_hint(monkeypatch):
    from harness import optional

    monkeypatch.setitem(optional.EXTRAS, "no_such_mod_xyz", ("no-such-dist", "pdf"))
    with pytest.raises(
        MissingDependency, match=r"reading x.pdf needs .*'no-such-dist'.*pip install 'adaptbench\[pdf\]'"
    ):
        require_module("no_such_mod_xyz", "reading x.pdf")
    assert require_module("json", "x").dumps([]) == "[]"
