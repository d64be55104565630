"""``adaptbench`` command line. User errors print one line and exit 2; interrupts print how to resume."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from harness.errors import AdaptbenchError


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in (
        "transformers",
        "datasets",
        "evaluate",
        "sentence_transformers",
        "peft",
        "trl",
        "accelerate",
        "bitsandbytes",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - both are hard dependencies
        pass


def user_errors(fn):
    """Turn AdaptbenchError into one line on stderr and a non-zero exit; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AdaptbenchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def _version() -> str:
    from harness import __version__

    try:
        return importlib.metadata.version("adaptbench")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return __version__


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    """-v: library logs too; --quiet: errors only; default: adaptbench's progress messages."""
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("adaptbench").setLevel(logging.ERROR if quiet else logging.INFO)
    if not verbose:
        _quiet_libraries()


@contextlib.contextmanager
def stopping(
    config: str, fallback: Path, command: str = "run", options: dict[str, Any] | None = None
) -> Iterator[None]:
    """Ctrl-C / SIGTERM: the runner stops after the batch in flight (``harness.signals``); say how to
    resume and exit 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells expect."""
    from harness import signals

    try:
        with signals.graceful_stop():
            yield
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)
        where = getattr(exc, "run_dir", None) or signals.run_dir()
        out = shlex.quote(str(where)) if where else f"<run folder in {fallback}>"
        flags = "".join(
            f" --{name.replace('_', '-')} {shlex.quote(str(v))}"
            for name, value in (options or {}).items()
            for v in (value if isinstance(value, (list, tuple)) else [value])
            if v is not None
        )
        click.echo(
            f"\ninterrupted; finished batches are saved. Resume with: "
            f"adaptbench {command} {shlex.quote(config)}{flags} --out {out}",
            err=True,
        )
        sys.exit(code)


def verbosity(fn):
    """``-v/--verbose`` and ``-q/--quiet`` on a subcommand too (``adaptbench run X -v`` as well as
    ``adaptbench -v run X``); the subcommand's flags win over the group's."""

    def apply(flag: str):
        def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
            if value:
                set_verbosity(verbose=flag == "verbose", quiet=flag == "quiet")

        return callback

    fn = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=apply("quiet"), help="Errors only."
    )(fn)
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=apply("verbose"),
        help="Show library logs.",
    )(fn)


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


@main.command()
@click.argument("run_a", type=click.Path(exists=True))
@click.argument("run_b", type=click.Path(exists=True))
@click.option("--strategy", help="Compare only this strategy id (default: every strategy in both).")
@click.option(
    "--allow-mismatch", is_flag=True, help="Compare runs of another eval set, ids or metric definitions."
)
@click.option(
    "--margin",
    type=click.FloatRange(min=0),
    default=0.02,
    show_default=True,
    help="Equivalence margin (score units).",
)
@click.option(
    "--cluster-by", type=click.Choice(["context", "group", "none"]), default="context", show_default=True
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for compare.html/.md/.json (default: RUN_B's folder or .).",
)
@verbosity
@user_errors
def compare(run_a, run_b, strategy, allow_mismatch, margin, cluster_by, out) -> None:
    """Paired differences from RUN_A (baseline) to RUN_B (candidate): run folders or baseline files."""
    from harness.gate import compare as cmp
    from harness.gate.outputs import write_compare
    from harness.gate.runs import load

    res = cmp.compare_runs(
        load(run_a),
        load(run_b),
        strategy=strategy,
        allow_mismatch=allow_mismatch,
        margin=margin,
        cluster_by=cluster_by,
    )
    folder = Path(out) if out else (Path(run_b) if Path(run_b).is_dir() else Path("."))
    paths = write_compare(res, folder)
    for sid, s in res["strategies"].items():
        for r in s["metrics"]:
            click.echo(f"{sid:<12} {r['metric']:<20} {r['verdict']:<13} {r['verdict_text']}")
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--policy", required=True, type=click.Path(dir_okay=False, exists=True), help="gates.yaml")
@click.option(
    "--baseline", type=click.Path(exists=True), help="Baseline run folder or baseline.json (relative rules)."
)
@click.option("--strict", is_flag=True, help="Relative rules fail on any point drop, significant or not.")
@click.option(
    "--allow-mismatch", is_flag=True, help="Gate against a baseline of another eval set / ids / metrics."
)
@click.option(
    "--junit", type=click.Path(dir_okay=False), help="Write a JUnit XML file (one testcase per rule)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for gate.md and gate.json (default: RUN_DIR or .).",
)
@verbosity
@user_errors
def gate(run_dir, policy, baseline, strict, allow_mismatch, junit, out) -> None:
    """Check a run against a policy of release rules: exit 0 pass, 1 a rule failed, 2 usage/data error."""
    from harness.gate.gate import evaluate, load_policy
    from harness.gate.outputs import gate_table, write_gate
    from harness.gate.runs import load

    pol = load_policy(policy)
    res = evaluate(
        load(run_dir), pol, load(baseline) if baseline else None, strict=strict, allow_mismatch=allow_mismatch
    )
    folder = Path(out) if out else (Path(run_dir) if Path(run_dir).is_dir() else Path("."))
    paths = write_gate(res, folder, Path(junit) if junit else None)
    click.echo(gate_table(res))
    click.echo("wrote " + ", ".join(str(p) for p in paths))
    sys.exit(0 if res["passed"] else 1)


@main.group()
def baseline() -> None:
    """Versionable baselines for compare and gate."""


@baseline.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="baseline.json to write."
)
@verbosity
@user_errors
def baseline_export(run_dir: str, output: str) -> None:
    """Write the small file compare and gate accept in place of RUN_DIR."""
    from harness.gate.runs import export_baseline

    path = export_baseline(run_dir, output)
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


@main.command()
@click.option(
    "--qa",
    required=True,
    type=click.Path(dir_okay=False),
    help="Q/A file: CSV, TSV, JSONL, Parquet or Excel.",
)
@click.option(
    "--docs", type=click.Path(file_okay=False), help="Folder of .md/.txt/.html/.pdf documents (the KB)."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New eval-set folder to write.")
@click.option("--question-col", help="Column holding the questions (guessed if omitted).")
@click.option("--answer-col", help="Column holding the reference answers (guessed if omitted).")
@click.option("--id-col", help="Column holding unique ids (generated if omitted).")
@click.option(
    "--context-col", help="Column naming the supporting documents (file names or ids, ;-separated)."
)
@click.option("--tags-col", help="Column of tags (;-separated); the split is stratified by the first tag.")
@click.option(
    "--split", "split", default="0.6,0.15,0.25", show_default=True, help="train,validation,test fractions."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the split.")
@click.option("--model", help="Model id or local folder for the starter config.")
@click.option(
    "--gpu", is_flag=True, help="GPU defaults in the starter config (4-bit, 3 epochs, lr 2e-4, packing)."
)
@verbosity
@user_errors
def init(
    qa, docs, out, question_col, answer_col, id_col, context_col, tags_col, split, seed, model, gpu
) -> None:
    """Turn your Q/A file and documents into an eval set plus a starter config."""
    from harness.init import ask_if_tty, init_eval_set

    given = {
        "question": question_col,
        "answer": answer_col,
        "id": id_col,
        "context_ids": context_col,
        "tags": tags_col,
    }
    res = init_eval_set(
        Path(qa), Path(out), Path(docs) if docs else None, given, split, seed, model, gpu, ask_if_tty()
    )
    sizes = ", ".join(f"{k}={v}" for k, v in res.sizes.items())
    cols = ", ".join(f"{k}<-{v!r}" for k, v in res.columns.items())
    click.echo(f"wrote {res.out}: {sizes}; {res.n_docs} KB documents; columns {cols}")
    click.echo(f"next: adaptbench validate {res.config} && adaptbench run {res.config}")


@main.command("strategies")
@verbosity
def list_strategies() -> None:
    """List the registered strategies."""
    from harness import plugin

    for name in plugin.available():
        cls = plugin.get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        click.echo(f"{name:<14} {doc}")


if __name__ == "__main__":  # pragma: no cover
    main()
