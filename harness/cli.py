"""``adaptbench`` command line. User errors print one line and exit 2; interrupts print how to resume."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.cli_release import baseline, compare, gate, init
from harness.cli_support import _version, set_verbosity, stopping, user_errors, verbosity
from harness.distributed import is_main
from harness.errors import AdaptbenchError


@click.group()
@click.version_option(_version(), "--version", prog_name="adaptbench", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Show library logs.")
@click.option("-q", "--quiet", is_flag=True, help="Errors only.")
def main(verbose: bool, quiet: bool) -> None:
    """Benchmark prompt engineering, RAG and QLoRA on your own data, and decide."""
    set_verbosity(verbose, quiet)


def _overrides(model: str | None, limit: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if model:
        out["model.id"] = model
    if limit is not None:
        out["eval_set.limit"] = limit
    return out


def _load(config: str, model: str | None, limit: int | None, strategies: str | None):
    from harness.config import load_config, select_strategies

    cfg = load_config(config, _overrides(model, limit))
    if strategies:
        cfg = select_strategies(cfg, [s.strip() for s in strategies.split(",") if s.strip()])
    return cfg


def print_summary(run_dir: Path) -> None:
    """The report's numbers as a table: point estimates over the examples every strategy answered,
    read from ``decision.json`` (written by the report from the run's one analysis)."""
    from harness.rundir import read_json

    decision_file = run_dir / "decision.json"
    rec = read_json(decision_file) if decision_file.is_file() else {}
    aggregates: dict[str, dict[str, Any]] = rec.get("aggregates") or {}
    metrics: list[str] = rec.get("quality_metrics") or []
    short = {"semantic_similarity": "semantic", "style_adherence": "style", "answer_recall": "recall"}
    names = [short.get(m, m) for m in metrics]
    widths = [max(9, len(n) + 2) for n in names]

    def value(sid: str, name: str) -> float | None:
        return (aggregates[sid].get(name) or {}).get("estimate")

    def cell(v: float | None, width: int, fmt: str) -> str:
        return f"{'n/a':>{width}}" if v is None else f"{v:>{width}{fmt}}"

    if aggregates:
        header = (
            f"{'strategy':<18}"
            + "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
            + f"{'p50 ms':>10}{'p95 ms':>10}{'tok/s':>9}"
        )
        click.echo("\n" + header)
        click.echo("-" * len(header))
        for sid in aggregates:
            row = f"{sid:<18}" + "".join(
                f"{100 * v:>{w - 1}.1f}%" if (v := value(sid, m)) is not None else f"{'n/a':>{w}}"
                for m, w in zip(metrics, widths, strict=True)
            )
            row += cell(value(sid, "latency_p50_ms"), 10, ".0f")
            row += cell(value(sid, "latency_p95_ms"), 10, ".0f")
            row += cell(value(sid, "tokens_per_s"), 9, ".1f")
            click.echo(row)
        click.echo("\n" + rec.get("headline", "") + "\n" + rec.get("detail", ""))
    click.echo(f"\nrun folder: {run_dir}\nreport:     {run_dir / 'report.html'}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--model", help="Model id (HF hub) or local path; overrides model.id.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N examples of the split.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder (re-using one resumes it).")
@click.option("--strategies", help="Comma-separated strategy ids or names to run, e.g. prompt,rag.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    metavar="[ID=]PATH",
    help="Evaluate a trained adapter folder instead of training (all adapter strategies, or strategy ID).",
)
@verbosity
@user_errors
def run(
    config: str,
    model: str | None,
    limit: int | None,
    out: str | None,
    strategies: str | None,
    no_progress: bool,
    adapters: tuple[str, ...],
) -> None:
    """Run every configured strategy on the eval set and write a run folder."""
    from harness.runner import run as run_harness
    from harness.runner import use_adapters

    cfg = use_adapters(_load(config, model, limit, strategies), list(adapters))
    run_dir = Path(out).resolve() if out else None
    options = {"model": model, "limit": limit, "strategies": strategies, "adapter": adapters}
    with stopping(config, run_dir or cfg.output_dir, options=options):
        result = run_harness(cfg, config_path=Path(config), run_dir=run_dir, progress=not no_progress)
    if is_main():  # torchrun / accelerate launch: rank 0 wrote the run folder and prints
        print_summary(result.run_dir)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--model", help="Model id (HF hub) or local path; overrides model.id.")
@click.option("--strategies", help="Comma-separated strategy ids or names to train, e.g. qlora.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for the training records.")
@verbosity
@user_errors
def train(config: str, model: str | None, strategies: str | None, out: str | None) -> None:
    """Train the adapters of the configured strategies (cached), without evaluating."""
    from harness.runner import train as train_harness

    cfg = _load(config, model, None, strategies)
    options = {"model": model, "strategies": strategies}
    with stopping(config, Path(out).resolve() if out else cfg.output_dir, "train", options):
        run_dir, results = train_harness(
            cfg, config_path=Path(config), run_dir=Path(out).resolve() if out else None
        )
    if not is_main():
        return
    for sid, res in results.items():
        rec = res.record
        status = "cached" if res.cache_hit else "trained"
        click.echo(
            f"{sid}: {status} {rec.get('quantization')} LoRA, {rec.get('steps')} steps in "
            f"{rec.get('train_seconds', 0):.0f} s, val loss {rec.get('val_loss_base', 0):.3f} -> "
            f"{rec.get('val_loss_final', 0):.3f}"
            + (f" (fallback: {rec['fallback_reason']})" if rec.get("fallback_reason") else "")
        )
        click.echo(f"  adapter: {res.adapter_dir}")
    click.echo(f"training records: {run_dir / 'training'}")
    click.echo(f"evaluate with:    adaptbench run {config} --adapter [ID=]<adapter folder>")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--model", help="Model id (HF hub) or local path; overrides model.id.")
@verbosity
@user_errors
def validate(config: str, model: str | None) -> None:
    """Check a config, its strategies against the eval set and the model folder, without loading a model."""
    from harness.validate import validate_config

    cfg = _load(config, model, None, None)
    result = validate_config(cfg, config)
    if not result.ok:
        for problem in result.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(2)
    eval_set = result.eval_set
    assert eval_set is not None
    sizes = ", ".join(f"{k}={len(v)}" for k, v in eval_set.splits.items())
    click.echo(
        f"ok: {config}: eval set {eval_set.name} ({sizes}; {len(eval_set.documents)} KB documents, "
        f"{len(eval_set.kb_updates)} updates); evaluating {len(eval_set.splits[cfg.eval_set.split])} "
        f"examples of {cfg.eval_set.split!r} with strategies {', '.join(s.key for s in cfg.strategies)}"
    )


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--constraint",
    "constraints",
    multiple=True,
    help="What-if: replace the run's decision constraints, e.g. --constraint 'latency_p95_ms <= 500' (repeatable).",
)
@click.option(
    "--weight",
    "weights",
    multiple=True,
    help="What-if: decide in the weighted mode with these weights, e.g. --weight token_f1=0.7 "
    "--weight semantic_similarity=0.3 (latency and cost need decision.scales in the run's config).",
)
@verbosity
@user_errors
def report(run_dir: str, constraints: tuple[str, ...], weights: tuple[str, ...]) -> None:
    """Re-render report.html, summary.md, scores.csv and decision.json from a run folder (no model, no re-run)."""
    from harness.report import write_report

    path = Path(run_dir)
    if not (path / "scores.json").is_file():
        raise AdaptbenchError(
            f"{path}: no scores.json; finish the run first (adaptbench run CONFIG --out {path})"
        )
    overrides: dict[str, Any] = {}
    if constraints:
        overrides["constraints"] = list(constraints)
    if weights:
        parsed: dict[str, float] = {}
        for item in weights:
            name, sep, value = item.partition("=")
            try:
                parsed[name.strip()] = float(value)
            except ValueError:
                raise AdaptbenchError(f"--weight {item!r}: write NAME=NUMBER, e.g. token_f1=0.5") from None
            if not sep:
                raise AdaptbenchError(f"--weight {item!r}: write NAME=NUMBER, e.g. token_f1=0.5")
        overrides["weights"] = parsed
        overrides["mode"] = "weighted"  # weights only matter in the weighted mode
    out = write_report(path, decision_overrides=overrides or None)
    print_summary(path)
    click.echo(f"wrote {out.name}, summary.md, scores.csv and decision.json in {path}")


@main.command("strategies")
@verbosity
def list_strategies() -> None:
    """List the registered strategies."""
    from harness import plugin

    for name in plugin.available():
        cls = plugin.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:<14} {doc}")


for _command in (compare, gate, baseline, init):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
