"""Readers for the files people actually have: spreadsheet CSV exports, TSV, JSONL, and KB documents.

Why a module of its own: spreadsheet tools save "CSV UTF-8" with a byte-order mark, use ``;`` as the
delimiter in some locales and keep line breaks inside quoted cells. Each reader here handles those and
still reports problems as ``file:line`` where the line is the row's *first physical line* in the file.
Documents may be Markdown, plain text, HTML (stdlib parser, no extra dependency) or PDF (``pypdf``,
the ``[pdf]`` extra).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from harness.errors import DataError

log = logging.getLogger("adaptbench")

TEXT_DOCS = (".md", ".markdown", ".txt")  # read as they are
CONVERTED_DOCS = (".html", ".htm", ".pdf")  # converted to text (by ``adaptbench init``)
_DELIMITERS = ",;\t|"


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    source: str


def read_text(path: Path) -> str:
    """UTF-8 text with an optional byte-order mark removed (Excel's "CSV UTF-8" writes one)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8; re-save the file as UTF-8") from None


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` per non-blank line."""
    rows = []
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
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


def sniff_delimiter(path: Path, text: str) -> str:
    """``\\t`` for .tsv; otherwise what ``csv.Sniffer`` finds in the header line (default ``,``)."""
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    header = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(header, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(first line of the row, {column: cell})`` per record.

    Quoted cells keep their line breaks; the line number is where the record starts, so later rows
    are still reported at the line an editor shows.
    """
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(path, text))
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise DataError(f"{path}:1: empty header; the first line must name the columns")
        start = reader.line_num + 1
        for cells in reader:
            if any(c.strip() for c in cells):
                if len(cells) > len(header):
                    raise DataError(f"{path}:{start}: more fields than the header has columns")
                cells += [""] * (len(header) - len(cells))
                rows.append((start, dict(zip(header, cells, strict=True))))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return header, rows


# -- documents -----------------------------------------------------------------------------------


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: scripts/styles dropped, block elements become line breaks."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
              "header", "footer", "table", "ul", "ol", "pre", "blockquote", "hr", "dt", "dd"}  # fmt: skip
    HIDDEN = {"script", "style", "noscript", "template", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.title = ""
        self.h1: str | None = None
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        if tag in ("title", "h1"):
            self._in = tag
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and self.hidden:
            self.hidden -= 1
        if tag == self._in:
            self._in = None
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "h1" and not self.hidden:
            self.h1 = (self.h1 or "") + data
        if not self.hidden:
            self.parts.append(data)

    def text(self) -> str:
        lines = (re.sub(r"[ \t\r\f\v]+", " ", ln).strip() for ln in "".join(self.parts).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> tuple[str, str]:
    """``(title, text)`` of an HTML page; title from ``<h1>`` or ``<title>`` (may be empty)."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return (parser.h1 or parser.title or "").strip(), parser.text()


def pdf_to_text(path: Path) -> str:
    from harness.optional import require_module

    pypdf = require_module("pypdf", f"reading {path.name}")
    try:
        reader = pypdf.PdfReader(str(path))
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except Exception as exc:  # pypdf raises many types for damaged files
        raise DataError(f"{path}: cannot read PDF ({type(exc).__name__}: {exc})") from None


def _default_title(stem: str) -> str:
    return stem.replace("-", " ").replace("_", " ").strip().title()


def read_document(path: Path, doc_id: str | None = None) -> Document:
    """One KB document from .md/.txt/.html/.pdf; the title is a leading ``# `` line (Markdown, text),
    the page's ``<h1>``/``<title>`` (HTML) or the file name."""
    suffix = path.suffix.lower()
    title = ""
    if suffix in (".html", ".htm"):
        title, text = html_to_text(read_text(path))
        first, _, rest = text.partition("\n")
        if title and first.strip() == title and rest.strip():
            text = rest.strip()  # the <h1> becomes the title, not the body's first line
    elif suffix == ".pdf":
        text = pdf_to_text(path)
    else:
        text = read_text(path).strip()
        first, _, rest = text.partition("\n")
        if first.startswith("# "):
            title, text = first[2:].strip(), rest.strip()
    if not text:
        raise DataError(f"{path}: document is empty")
    return Document(
        id=doc_id or path.stem, title=title or _default_title(path.stem), text=text, source=str(path)
    )


def kb_files(folder: Path, suffixes: tuple[str, ...] = TEXT_DOCS) -> list[Path]:
    """Document files of a KB folder (sorted); warns naming every other file it skips."""
    if not folder.is_dir():
        return []
    keep, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        (keep if p.is_file() and p.suffix.lower() in suffixes else skipped).append(p)
    if skipped:
        names = ", ".join(p.name for p in skipped[:5]) + (
            f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else ""
        )
        hint = (
            " (convert HTML/PDF with `adaptbench init --docs`)"
            if any(p.suffix.lower() in CONVERTED_DOCS for p in skipped)
            else ""
        )
        log.warning("%s: skipped %d file(s) that are not %s documents: %s%s",
                    folder, len(skipped), "/".join(suffixes), names, hint)  # fmt: skip
    return keep
