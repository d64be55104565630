"""Eval sets on disk: a knowledge base plus train/validation/test Q/A splits.

Format (documented in eval_sets/README.md)::

    <eval-set>/
      kb/*.md  or  kb.jsonl           documents (id = file stem; title = first '# ' heading)
      kb_updates/*.md or kb_updates.jsonl   optional overlay: same id replaces, new id adds
      train|validation|test.jsonl, .csv or .tsv  fields: id, question, answer, [context_ids], [tags],
                                            [must_include], [must_not_include] (JSONL only)

or a 🤗 ``save_to_disk`` folder / Parquet file(s) with ``eval_set.columns`` naming the columns.
File readers (BOM, delimiter sniffing, quoted line breaks, HTML/PDF) live in ``harness/loaders.py``.

Rows are parsed here (so errors can name file and line) and handed to ``datasets``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from harness.errors import DataError
from harness.loaders import Document, kb_files, read_csv, read_document, read_jsonl

__all__ = ["COLUMN_FIELDS", "SPLITS", "Document", "EvalSet", "load_eval_set", "open_eval_set"]

SPLITS = ("train", "validation", "test")
REQUIRED_FIELDS = ("id", "question", "answer")
COLUMN_FIELDS = (*REQUIRED_FIELDS, "context_ids", "tags", "must_include", "must_not_include")
FORMATS = ("auto", "folder", "datasets", "parquet")
_MATCHABLE = re.compile(r"[^\W_]|[$€£¥₹%]")


@dataclass
class EvalSet:
    name: str
    root: Path
    documents: list[Document]
    splits: dict[str, datasets.Dataset]
    kb_updates: list[Document] = field(default_factory=list)
    file_hashes: dict[str, str] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for name, digest in sorted(self.file_hashes.items()):
            h.update(f"{name}:{digest}\n".encode())
        return h.hexdigest()

    def split(self, name: str) -> datasets.Dataset:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise DataError(
                f"eval_set.split: {name!r} is not a split of {self.root} (available: {have}); "
                "set eval_set.split to one of them"
            )
        return self.splits[name]

    def current_documents(self) -> list[Document]:
        """The knowledge base as of test time: base documents with the update overlay applied."""
        merged = {d.id: d for d in self.documents}
        merged.update({d.id: d for d in self.kb_updates})
        return list(merged.values())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split_list(value: Any) -> Any:
    """``a;b`` -> ``["a", "b"]`` (CSV and table cells); lists pass through."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(";") if v.strip()]
    return [] if value is None else value


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    _, raw_rows = read_csv(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, raw in raw_rows:
        row: dict[str, Any] = dict(raw)
        for key in ("context_ids", "tags"):
            if key in row:
                row[key] = _split_list(row[key])
        for key in ("must_include", "must_not_include"):  # JSONL only; an empty CSV cell means absent
            if key in row and not (row[key] or "").strip():
                del row[key]
        rows.append((lineno, row))
    return rows


def _load_kb_dir(folder: Path, jsonl: Path) -> list[Document]:
    docs: list[Document] = [read_document(p) for p in kb_files(folder)]
    if jsonl.is_file():
        for lineno, obj in read_jsonl(jsonl):
            for key in ("id", "text"):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise DataError(f"{jsonl}:{lineno}: field {key!r} missing or empty")
            docs.append(
                Document(
                    id=obj["id"],
                    title=str(obj.get("title") or obj["id"]),
                    text=obj["text"],
                    source=f"{jsonl}:{lineno}",
                )
            )
    seen: dict[str, str] = {}
    for d in docs:
        if d.id in seen:
            raise DataError(f"{d.source}: duplicate document id {d.id!r} (also in {seen[d.id]})")
        seen[d.id] = d.source
    return docs


def _validate_rows(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    if not rows:
        raise DataError(f"{path}: split is empty; add examples or remove the file")
    clean = []
    for lineno, row in rows:
        for key in REQUIRED_FIELDS:
            value = row.get(key)
            if value is None:
                raise DataError(
                    f"{path}:{lineno}: missing field {key!r}; every row needs id, question and answer"
                )
            if not str(value).strip():
                raise DataError(f"{path}:{lineno}: field {key!r} is empty")
        for key in ("context_ids", "tags"):
            value = row.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(f"{path}:{lineno}: field {key!r} must be a list of strings")
        clean_row = {
            "id": str(row["id"]),
            "question": str(row["question"]),
            "answer": str(row["answer"]),
            "context_ids": list(row.get("context_ids") or []),
            "tags": list(row.get("tags") or []),
        }
        clean_row.update(_validate_facts(path, lineno, row))
        clean.append(clean_row)
    return clean


def _validate_facts(path: Path, lineno: int, row: dict[str, Any]) -> dict[str, list[list[str]] | list[str]]:
    """Optional key-fact fields, returned only when present.

    ``must_include`` items are normalised to lists of alternatives (a plain string becomes a one-item
    list) so the column has one Arrow type; ``must_not_include`` stays a list of strings.
    """

    def matchable(s: Any) -> bool:
        # the matcher (harness/scoring/facts.py) needs a letter, digit, currency sign or % to match on
        return isinstance(s, str) and bool(_MATCHABLE.search(unicodedata.normalize("NFKC", s)))

    out: dict[str, list[list[str]] | list[str]] = {}
    value = row.get("must_include")
    if value is not None:
        where = f"{path}:{lineno}: field 'must_include'"
        if not isinstance(value, list) or not value:
            raise DataError(f"{where} must be a non-empty list of facts (strings or lists of alternatives)")
        items: list[list[str]] = []
        for i, item in enumerate(value):
            alts = [item] if isinstance(item, str) else item
            if not isinstance(alts, list) or not alts or not all(matchable(a) for a in alts):
                raise DataError(
                    f"{where} item {i} must be a non-empty string or a non-empty list of non-empty "
                    f"strings (alternatives), got {item!r}"
                )
            items.append(list(alts))
        out["must_include"] = items
    value = row.get("must_not_include")
    if value is not None:
        where = f"{path}:{lineno}: field 'must_not_include'"
        if not isinstance(value, list) or not value or not all(matchable(v) for v in value):
            raise DataError(f"{where} must be a non-empty list of non-empty strings, got {value!r}")
        out["must_not_include"] = list(value)
    return out


def _find_split_file(root: Path, split: str) -> Path | None:
    for ext in (".jsonl", ".csv", ".tsv"):
        p = root / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def detect_format(path: Path) -> str:
    """``folder`` (the eval-set layout), ``datasets`` (``save_to_disk`` folder) or ``parquet``."""
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return "parquet"
        raise DataError(f"{path}: eval_set.path must be a folder or a .parquet file")
    if any((path / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
        return "datasets"
    if not any(_find_split_file(path, s) for s in SPLITS) and any(path.glob("*.parquet")):
        return "parquet"
    return "folder"


def _table_splits(path: Path, fmt: str) -> dict[str, tuple[str, list[tuple[int, dict[str, Any]]]]]:
    """Rows of a 🤗 ``save_to_disk`` folder or Parquet file(s), per split; line numbers are row numbers."""

    def numbered(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        return [(i, dict(r)) for i, r in enumerate(rows, start=1)]

    if fmt == "datasets":
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"{path}: not a 🤗 datasets folder saved with save_to_disk ({exc})") from None
        if isinstance(loaded, datasets.Dataset):
            return {"test": (str(path), numbered(loaded.to_list()))}
        return {name: (f"{path}[{name}]", numbered(ds.to_list())) for name, ds in loaded.items()}
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    out: dict[str, tuple[str, list[tuple[int, dict[str, Any]]]]] = {}
    for f in files:
        split = "test" if path.is_file() else f.stem.split("-")[0]
        try:
            out[split] = (str(f), numbered(pq.read_table(f).to_pylist()))
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DataError(f"{f}: cannot read Parquet ({type(exc).__name__}: {exc})") from None
    return out


def _map_columns(
    where: str, rows: list[tuple[int, dict[str, Any]]], columns: dict[str, str], split: str, table: bool
) -> list[tuple[int, dict[str, Any]]]:
    """Rename the user's columns to the eval-set fields (``eval_set.columns``); table rows without an
    id column get ``<split>-<row>``; list fields given as ``a;b`` strings are split."""
    have = set().union(*(r.keys() for _, r in rows)) if rows else set()
    for field_name, source in columns.items():
        if source not in have:
            raise DataError(
                f"{where}: eval_set.columns.{field_name}: column {source!r} not found "
                f"(columns: {', '.join(sorted(have)) or 'none'})"
            )
    out = []
    for lineno, row in rows:
        row = dict(row)
        for field_name, source in columns.items():
            row[field_name] = row.pop(source)
        if table:
            if "id" not in columns and "id" not in have:
                row["id"] = f"{split}-{lineno}"
            for key in ("context_ids", "tags"):
                if key in row:
                    row[key] = _split_list(row[key])
            for key in ("must_include", "must_not_include"):
                if key in row and row[key] is None:
                    del row[key]
        out.append((lineno, row))
    return out


def _to_dataset(split: str, rows: list[dict[str, Any]]) -> datasets.Dataset:
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "context_ids": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.Value("string")),
        }
    )
    # key-fact columns exist only in splits that use them; rows without them get None
    if any("must_include" in r for r in rows):
        features["must_include"] = datasets.Sequence(datasets.Sequence(datasets.Value("string")))
    if any("must_not_include" in r for r in rows):
        features["must_not_include"] = datasets.Sequence(datasets.Value("string"))
    rows = [{k: r.get(k) for k in features} for r in rows]
    return datasets.Dataset.from_list(rows, features=features, split=split)


# files of an eval-set folder that are not data (editing them must not invalidate resumable runs)
_NOT_DATA = ("README.md", "config.yaml")


def load_eval_set(root: str | Path, columns: dict[str, str] | None = None, format: str = "auto") -> EvalSet:
    """Load and validate an eval set; raise ``DataError`` with file:line on any problem.

    ``root`` is an eval-set folder, a 🤗 ``save_to_disk`` folder or Parquet file(s) (``format``,
    detected by default); ``columns`` maps eval-set fields to the data's column names.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: eval set directory not found")
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(f"eval_set.format: {format!r} is not one of {', '.join(FORMATS)}")
    columns = dict(columns or {})
    documents = _load_kb_dir(root / "kb", root / "kb.jsonl") if root.is_dir() else []
    updates = _load_kb_dir(root / "kb_updates", root / "kb_updates.jsonl") if root.is_dir() else []

    raw: dict[str, tuple[str, list[tuple[int, dict[str, Any]]]]] = {}
    if fmt == "folder":
        for split in SPLITS:
            path = _find_split_file(root, split)
            if path is not None:
                raw[split] = (str(path), read_jsonl(path) if path.suffix == ".jsonl" else _read_csv(path))
    else:
        raw = _table_splits(root, fmt)

    splits: dict[str, datasets.Dataset] = {}
    seen_ids: dict[str, str] = {}
    known = {d.id for d in documents} | {d.id for d in updates}
    for split, (where, numbered) in raw.items():
        mapped = _map_columns(where, numbered, columns, split, table=fmt != "folder")
        rows = _validate_rows(Path(where), mapped)
        for (lineno, _), row in zip(mapped, rows, strict=True):
            at = f"{where}:{lineno}"
            if row["id"] in seen_ids:
                raise DataError(
                    f"{at}: duplicate example id {row['id']!r} (also at {seen_ids[row['id']]}); "
                    "give every example a unique id"
                )
            seen_ids[row["id"]] = f"{Path(where).name}:{lineno}"
            missing = [c for c in row["context_ids"] if c not in known] if known else []
            if missing:
                raise DataError(
                    f"{at}: example {row['id']!r} cites unknown document {missing[0]!r}; "
                    "context_ids must name files in kb/ or kb_updates/"
                )
        splits[split] = _to_dataset(split, rows)
    if not splits:
        raise DataError(
            f"{root}: no split files found; expected test.jsonl (or .csv), optionally train/validation"
        )

    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    base = root if root.is_dir() else root.parent
    hashes = {
        str(p.relative_to(base)): sha256_file(p)
        for p in files
        if p.is_file() and not p.name.startswith(".") and p.name not in _NOT_DATA
    }
    return EvalSet(
        name=root.name if root.is_dir() else root.stem,
        root=root,
        documents=documents,
        splits=splits,
        kb_updates=updates,
        file_hashes=hashes,
    )


def open_eval_set(config: Any) -> EvalSet:
    """The eval set an ``eval_set`` config section names (path, format, column mapping)."""
    return load_eval_set(
        config.path, columns=getattr(config, "columns", None), format=getattr(config, "format", "auto")
    )
