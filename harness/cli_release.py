"""``compare``, ``gate``, ``baseline`` and ``init``: regression testing, release gates and bringing your own
data. Thin click wrappers; the work is in ``harness.gate`` and ``harness.init``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli_support import user_errors, verbosity


@click.command()
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


@click.command()
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


@click.group()
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


@click.command()
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
