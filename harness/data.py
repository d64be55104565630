"""Eval sets on disk: a knowledge base plus train/validation/test Q/A splits.

Format (documented in eval_sets/README.md)::

    <eval-set>/
      kb/*.md  or  kb.jsonl           documents (id = file stem; title = first '# ' heading)
      kb_updates/*.md or kb_updates.jsonl   optional overlay: same id replaces, new id adds
      train|validation|test.jsonl or .csv   fields: id, question, answer, [context_ids], [tags],
                                            [must_include], [must_not_include] (JSONL only)

Rows are parsed here (so errors can name file and line) and handed to ``datasets``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from harness.errors import DataError

SPLITS = ("train", "validation", "test")
REQUIRED_FIELDS = ("id", "question", "answer")
_MATCHABLE = re.compile(r"[^\W_]|[$€£¥₹%]")


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    source: str


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
            raise DataError(f"{self.root}: split {name!r} not found (available: {have})")
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8; re-save the file as UTF-8") from None


def _markdown_doc(path: Path) -> Document:
    text = _read_text(path).strip()
    if not text:
        raise DataError(f"{path}: document is empty")
    first, _, rest = text.partition("\n")
    if first.startswith("# "):
        title, body = first[2:].strip(), rest.strip()
    else:
        title, body = path.stem.replace("-", " ").replace("_", " ").title(), text
    return Document(id=path.stem, title=title, text=body, source=str(path))


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    raw = path.read_bytes()
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{lineno}: not valid UTF-8; re-save the file as UTF-8") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{lineno}: malformed JSON ({exc.msg}); each line must be one JSON object"
            ) from None
        except RecursionError:
            raise DataError(
                f"{path}:{lineno}: JSON nested too deeply; each line must be one flat object"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(obj).__name__}")
        rows.append((lineno, obj))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict[str, Any]]]:
    text = _read_text(path)
    try:
        reader = csv.DictReader(text.splitlines())
        rows = [(i, dict(r)) for i, r in enumerate(reader, start=2)]
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    for lineno, row in rows:
        if None in row:
            raise DataError(f"{path}:{lineno}: more fields than the header has columns")
        for key in ("context_ids", "tags"):
            value = row.get(key)
            row[key] = [v.strip() for v in value.split(";") if v.strip()] if value else []
        for key in ("must_include", "must_not_include"):  # JSONL only; an empty CSV cell means absent
            if key in row and not (row[key] or "").strip():
                del row[key]
    return rows


def _load_kb_dir(folder: Path, jsonl: Path) -> list[Document]:
    docs: list[Document] = []
    if folder.is_dir():
        docs.extend(_markdown_doc(p) for p in sorted(folder.glob("*.md")))
    if jsonl.is_file():
        for lineno, obj in _read_jsonl(jsonl):
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
    for ext in (".jsonl", ".csv"):
        p = root / f"{split}{ext}"
        if p.is_file():
            return p
    return None


def load_eval_set(root: str | Path) -> EvalSet:
    """Load and validate an eval set directory; raise ``DataError`` with file:line on any problem."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: eval set directory not found")
    documents = _load_kb_dir(root / "kb", root / "kb.jsonl")
    updates = _load_kb_dir(root / "kb_updates", root / "kb_updates.jsonl")

    splits: dict[str, datasets.Dataset] = {}
    seen_ids: dict[str, str] = {}
    known = {d.id for d in documents} | {d.id for d in updates}
    for split in SPLITS:
        path = _find_split_file(root, split)
        if path is None:
            continue
        raw = _read_jsonl(path) if path.suffix == ".jsonl" else _read_csv(path)
        rows = _validate_rows(path, raw)
        for (lineno, _), row in zip(raw, rows, strict=True):
            if row["id"] in seen_ids:
                raise DataError(
                    f"{path}:{lineno}: duplicate example id {row['id']!r} (also at {seen_ids[row['id']]}); "
                    "give every example a unique id"
                )
            seen_ids[row["id"]] = f"{path.name}:{lineno}"
            missing = [c for c in row["context_ids"] if c not in known]
            if known and missing:
                raise DataError(
                    f"{path}:{lineno}: example {row['id']!r} cites unknown document {missing[0]!r} "
                    "(context_ids must name kb/ documents)"
                )
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
        splits[split] = datasets.Dataset.from_list(rows, features=features, split=split)
    if not splits:
        raise DataError(
            f"{root}: no split files found; expected test.jsonl (or .csv), optionally train/validation"
        )

    hashes = {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.name != "README.md"
    }
    return EvalSet(
        name=root.name, root=root, documents=documents, splits=splits, kb_updates=updates, file_hashes=hashes
    )
