"""``adaptbench init``: turn a Q/A spreadsheet and a folder of documents into an eval set and a config.

Why: people have a CSV/Excel export with their own column names and a folder of .txt/.html/.pdf pages,
not the eval-set layout. This reads any of them (pandas for Parquet/Excel/JSONL, the BOM- and
quoted-newline-safe CSV reader otherwise), guesses columns, generates missing ids, splits
deterministically (stratified by tag) and writes ``<out>/{kb/,train,validation,test.jsonl,config.yaml}``.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError
from harness.loaders import CONVERTED_DOCS, TEXT_DOCS, read_csv, read_document

GUESSES: dict[str, tuple[str, ...]] = {
    "question": ("question", "questions", "q", "prompt", "query", "input", "user", "instruction", "ask"),
    "answer": (
        "answer",
        "answers",
        "a",
        "response",
        "reference",
        "output",
        "reply",
        "target",
        "expected",
        "expected_answer",
        "ground_truth",
        "completion",
    ),  # fmt: skip
    "id": ("id", "qid", "question_id", "uid", "key", "example_id"),
    "context_ids": (
        "context_ids",
        "context",
        "contexts",
        "source",
        "sources",
        "doc",
        "docs",
        "document",
        "documents",
        "doc_id",
        "doc_ids",
    ),  # fmt: skip
    "tags": ("tags", "tag", "category", "categories", "label", "labels", "topic", "type"),
}
REQUIRED = ("question", "answer")
DEFAULT_SPLIT = (0.6, 0.15, 0.25)


@dataclass
class InitResult:
    out: Path
    config: Path
    sizes: dict[str, int]
    n_docs: int
    columns: dict[str, str]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows (cells as strings, empty for missing) of a CSV/TSV/JSONL/Parquet/Excel file."""
    if not path.is_file():
        raise DataError(f"--qa: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt", ".tab"):
        header, rows = read_csv(path)
        return header, [r for _, r in rows]
    import pandas as pd

    try:
        if suffix in (".jsonl", ".ndjson"):
            df = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".json":
            df = pd.read_json(path, dtype=False)
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix in (".xlsx", ".xls", ".xlsm", ".ods"):
            df = pd.read_excel(path)
        else:
            raise DataError(
                f"--qa: {path}: unsupported file type {suffix!r} (csv, tsv, jsonl, parquet, xlsx)"
            )
    except ImportError as exc:
        raise DataError(f"--qa: {path}: reading {suffix} needs {exc.name}; pip install {exc.name}") from None
    except ValueError as exc:
        raise DataError(f"--qa: {path}: cannot read ({exc})") from None
    df = df.astype(object).where(df.notna(), "")
    return [str(c) for c in df.columns], [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]


def _guess(by_norm: dict[str, str], names: tuple[str, ...], taken: set[str]) -> str | None:
    """Exact (normalised) name first, then a column with a word equal to a guess ("Question Text")."""
    for name in names:
        if name in by_norm and by_norm[name] not in taken:
            return by_norm[name]
    for name in names:
        for norm, col in by_norm.items():
            if len(name) > 2 and name in norm.split("_") and col not in taken:
                return col
    return None


def resolve_columns(
    columns: list[str],
    given: dict[str, str | None],
    ask: Callable[[str, list[str]], str] | None,
    source: str,
) -> dict[str, str]:
    """Field -> column: given by option, else guessed case-insensitively, else asked (TTY) or an error."""
    by_norm = {_norm(c): c for c in columns}
    out: dict[str, str] = {}
    for field_name in (*REQUIRED, "id", "context_ids", "tags"):
        option = f"--{field_name.split('_')[0]}-col"
        wanted = given.get(field_name)
        if wanted:
            if wanted not in columns:
                hit = by_norm.get(_norm(wanted))
                if hit is None:
                    raise ConfigError(
                        f"{option}: {source} has no column {wanted!r} (columns: {', '.join(columns)})"
                    )
                wanted = hit
            out[field_name] = wanted
            continue
        guess = _guess(by_norm, GUESSES[field_name], set(out.values()))
        if guess is not None:
            out[field_name] = guess
        elif field_name in REQUIRED:
            if ask is None:
                raise ConfigError(
                    f"{source}: cannot tell which column is the {field_name} (columns: {', '.join(columns)}); "
                    f"pass {option} NAME"
                )
            out[field_name] = ask(field_name, columns)
    return out


def _split_cell(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in re.split(r"[;,|]", str(value or "")) if v.strip()]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "doc"


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[2] <= 0:
        raise ConfigError(
            f"--split {text!r}: give train,validation,test fractions summing to 1, e.g. 0.6,0.15,0.25"
        )
    return parts  # type: ignore[return-value]


def stratified_split(
    rows: list[dict[str, Any]], fractions: tuple[float, float, float], seed: int
) -> dict[str, list]:
    """Deterministic split; each tag group (first tag) is shuffled by ``seed`` and cut by the fractions,
    so every split sees every tag in proportion. Test gets at least one example."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["tags"] or [""])[0], []).append(row)
    out: dict[str, list] = {"train": [], "validation": [], "test": []}
    for key in sorted(groups):
        group = groups[key][:]
        random.Random(f"{seed}:{key}").shuffle(group)
        n = len(group)
        n_train = round(n * fractions[0])
        n_val = min(round(n * fractions[1]), n - n_train)
        out["train"] += group[:n_train]
        out["validation"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    if not out["test"]:
        donor = "train" if out["train"] else "validation"
        if out[donor]:
            out["test"].append(out[donor].pop())
    return out


def convert_docs(docs: Path, kb: Path) -> dict[str, str]:
    """Every .md/.txt/.html/.pdf under ``docs`` -> ``kb/<id>.md``; returns {file name or stem: id}."""
    if not docs.is_dir():
        raise DataError(f"--docs: folder not found: {docs}")
    kb.mkdir(parents=True, exist_ok=True)
    aliases: dict[str, str] = {}
    files = sorted(p for p in docs.rglob("*") if p.is_file() and not p.name.startswith("."))
    wanted = [p for p in files if p.suffix.lower() in TEXT_DOCS + CONVERTED_DOCS]
    skipped = [p for p in files if p not in wanted]
    if skipped:
        import logging

        logging.getLogger("adaptbench").warning(
            "--docs: skipped %d file(s) that are not .md/.txt/.html/.pdf: %s",
            len(skipped), ", ".join(str(p.relative_to(docs)) for p in skipped[:5]),
        )  # fmt: skip
    for path in wanted:
        rel = path.relative_to(docs).with_suffix("")
        doc_id = slug("-".join(rel.parts))
        if doc_id in aliases.values():
            raise DataError(f"--docs: {path} and another file both become document id {doc_id!r}; rename one")
        doc = read_document(path, doc_id)
        (kb / f"{doc_id}.md").write_text(f"# {doc.title}\n\n{doc.text}\n", encoding="utf-8")
        for alias in (path.name, path.stem, str(path.relative_to(docs)), doc_id):
            aliases.setdefault(alias.lower(), doc_id)
    if not wanted:
        raise DataError(f"--docs: {docs} has no .md, .txt, .html or .pdf files")
    return aliases


CONFIG_TEMPLATE = """\
# Starter config written by `adaptbench init` for {name}.
#   adaptbench validate {config}     checks it in a second (no model load)
#   adaptbench run {config} --limit 20
name: {name}
model:
  id: {model}   # any Hugging Face id or local folder
{model_extra}eval_set:
  path: .
  split: test
strategies:
{strategies}generation:
  max_new_tokens: {max_new_tokens}
  temperature: 0.0   # greedy
  batch_size: {batch}
seed: {seed}
output_dir: ../reports
"""


def starter_config(
    name: str, config_path: str, model: str, gpu: bool, sizes: dict[str, int], n_docs: int, seed: int
) -> str:
    blocks = ["  - name: prompt\n    id: zero_shot\n"]
    if sizes.get("train", 0) >= 3:
        blocks.append("  - name: prompt\n    id: few_shot\n    shots: 3   # demonstrations from train\n")
    if n_docs:
        blocks.append("  - name: rag\n    id: rag\n    top_k: 4\n")
    if sizes.get("train", 0) >= 2:
        train = (
            "    epochs: 3\n    learning_rate: 2.0e-4\n    batch_size: 8\n    packing: true\n"
            if gpu
            else "    # CPU-sized: a few steps; on a GPU use epochs: 3 and learning_rate: 2e-4\n"
            "    max_steps: 20\n    learning_rate: 1.0e-3\n    batch_size: 8\n    gradient_checkpointing: false\n"
        )
        blocks.append("  - name: qlora\n    id: qlora\n" + train)
    model_extra = (
        "  quantization: 4bit   # NF4 through bitsandbytes; needs a CUDA GPU\n  device: cuda\n  dtype: bfloat16\n"
        if gpu
        else "  device: auto\n"
    )
    return CONFIG_TEMPLATE.format(
        name=name, config=config_path, model=model, model_extra=model_extra,
        strategies="".join(blocks), max_new_tokens=128 if gpu else 64, batch=16 if gpu else 8, seed=seed,
    )  # fmt: skip


def init_eval_set(
    qa: Path,
    out: Path,
    docs: Path | None = None,
    given: dict[str, str | None] | None = None,
    split: str = "0.6,0.15,0.25",
    seed: int = 0,
    model: str | None = None,
    gpu: bool = False,
    ask: Callable[[str, list[str]], str] | None = None,
) -> InitResult:
    """Write an eval set and a starter config; see the module docstring."""
    from harness.config import DEFAULT_MODEL

    fractions = parse_split(split)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} exists and is not empty; choose a new folder")
    columns, table = read_table(qa)
    if not table:
        raise DataError(f"--qa: {qa} has no rows")
    mapping = resolve_columns(columns, given or {}, ask, str(qa))
    out.mkdir(parents=True, exist_ok=True)
    aliases = convert_docs(docs, out / "kb") if docs else {}
    rows, seen = [], set()
    for i, raw in enumerate(table, start=1):
        q, a = str(raw[mapping["question"]]).strip(), str(raw[mapping["answer"]]).strip()
        if not q or not a:
            continue  # blank lines in spreadsheets; a row without both cannot be scored
        rid = str(raw.get(mapping.get("id", ""), "") or "").strip() or f"q-{i:04d}"
        if rid in seen:
            raise DataError(f"--qa: {qa}: duplicate id {rid!r} in column {mapping['id']!r}")
        seen.add(rid)
        ctx = [aliases.get(c.lower(), c) for c in _split_cell(raw.get(mapping.get("context_ids", "")))]
        unknown = [c for c in ctx if c not in aliases.values()]
        if unknown:
            raise DataError(f"--qa: {qa}: row {i} cites document {unknown[0]!r}, not found in --docs")
        rows.append({"id": rid, "question": q, "answer": a, "context_ids": ctx,
                     "tags": _split_cell(raw.get(mapping.get("tags", "")))})  # fmt: skip
    if not rows:
        raise DataError(f"--qa: {qa}: no row has both a question and an answer")
    parts = stratified_split(rows, fractions, seed)
    sizes = {}
    for name, part in parts.items():
        if part:
            with (out / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
            sizes[name] = len(part)
    (out / "eval_set.yaml").write_text(
        f"name: {out.name}\nsource: {json.dumps(str(qa))}\ncolumns: {json.dumps(mapping)}\nsplit: {json.dumps(split)}\nseed: {seed}\n",
        encoding="utf-8",
    )
    config = out / "config.yaml"
    config.write_text(
        starter_config(
            out.name, str(config), model or DEFAULT_MODEL, gpu, sizes, len(set(aliases.values())), seed
        ),
        encoding="utf-8",
    )
    return InitResult(out, config, sizes, len(set(aliases.values())), mapping)


def tty_ask(field_name: str, columns: list[str]) -> str:
    import click

    return click.prompt(f"Which column holds the {field_name}?", type=click.Choice(columns))


def ask_if_tty() -> Callable[[str, list[str]], str] | None:
    return tty_ask if sys.stdin.isatty() else None
