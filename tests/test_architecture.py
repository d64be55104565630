"""Architecture guards: layering of harness/ (static imports, no cycles) and the backend plugin seam."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from harness.backends import register_backend, unregister_backend
from harness.backends.base import BatchGeneration, Generation, GenerationBackend

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "harness"
PRIVATE_BACKEND_MODULES = ("harness.backends.hf", "harness.backends.loading")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def harness_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute module names imported by ``path`` (``from a import b`` yields ``a`` and ``a.b``).

    ``top_level_only``: only imports that run when the module is imported (module body, not inside
    functions or ``if TYPE_CHECKING:``); otherwise every import statement anywhere in the file.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes: list[ast.AST] = []
    if top_level_only:
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and not _is_type_checking(node):
                stack.extend(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                stack.extend(node.body + node.orelse + node.finalbody)
                for handler in node.handlers:
                    stack.extend(handler.body)
            else:
                nodes.append(node)
    else:
        nodes = list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def test_harness_never_imports_strategies_statically():
    offenders = {
        name: sorted(m for m in imported_names(path, top_level_only=False) if m.split(".")[0] == "strategies")
        for name, path in harness_modules().items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_transformers_backend_internals_stay_inside_harness_backends():
    offenders = {}
    for name, path in harness_modules().items():
        if name.startswith("harness.backends"):
            continue
        hits = [
            m
            for m in imported_names(path, top_level_only=False)
            if any(m == p or m.startswith(p + ".") for p in PRIVATE_BACKEND_MODULES)
        ]
        if hits:
            offenders[name] = sorted(hits)
    assert offenders == {}


def test_no_import_cycles_among_harness_modules():
    modules = harness_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imp in imported_names(path, top_level_only=True):
            # ``from harness.x import y``: the module harness.x.y if it is one, else harness.x.
            target = (
                imp
                if imp in modules
                else imp.rpartition(".")[0]
                if imp.rpartition(".")[0] in modules
                else None
            )
            if target and target != name:
                deps.add(target)
                # importing harness.a.b first imports the package harness.a
                parent = target.rpartition(".")[0]
                while parent in modules and parent != name and not name.startswith(parent + "."):
                    deps.add(parent)
                    parent = parent.rpartition(".")[0]
        graph[name] = deps

    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


# -- a backend plugged in from outside harness/ ----------------------------------------------------

CANNED = "Returns are accepted within 45 days."


class EchoBackend:
    """Answers every prompt with one canned sentence; no model, no tokenizer, no optional capability."""

    name = "echo-test-backend"
    context_window = 4096

    def __init__(self, model_id: str):
        self.model_id = model_id
        self.calls = 0

    @classmethod
    def open(cls, model_cfg: Any, cache_dir: Path) -> EchoBackend:
        return cls(model_cfg.id)

    def render(self, prompt: list[dict[str, str]]) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts, params, adapter=None) -> BatchGeneration:
        self.calls += 1
        gens = [Generation(CANNED, self.count_tokens(self.render(p)), len(CANNED.split())) for p in prompts]
        return BatchGeneration(gens, 0.001)

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "backend": self.name, "device": "cpu", "dtype": "none"}


@pytest.fixture()
def echo_backend():
    register_backend(EchoBackend.name)(EchoBackend)
    yield EchoBackend
    unregister_backend(EchoBackend.name)


def test_toy_backend_satisfies_the_protocol():
    assert isinstance(EchoBackend("x"), GenerationBackend)


def test_registered_backend_runs_end_to_end_through_the_cli(echo_backend, write_config, tmp_path):
    from harness.cli import main

    cfg = write_config(
        model={"backend": EchoBackend.name, "id": "no-such-model"},
        metrics=["exact_match", "token_f1"],
        primary_metric="token_f1",
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["backend"] == EchoBackend.name
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["prediction"] == CANNED for p in preds)
    assert all(
        p["batch_seconds"] >= 0 and p["latency_s"] == p["batch_seconds"] / p["batch_size"] for p in preds
    )
    assert EchoBackend.name in (out / "report.html").read_text(encoding="utf-8")


def test_unknown_backend_is_a_config_error_naming_the_key(write_config, tmp_path):
    from harness.cli import main

    cfg = write_config(model={"backend": "no-such-backend"})
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    assert "model.backend" in res.output and "transformers" in res.output


def test_coherence_needs_log_likelihood_from_the_backend(echo_backend, write_config, tmp_path):
    from harness.cli import main

    cfg = write_config(model={"backend": EchoBackend.name}, metrics=["token_f1", "coherence"])
    res = CliRunner().invoke(main, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    assert "needs LogLikelihood; backend 'echo-test-backend' does not provide it" in res.output
