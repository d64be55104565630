"""What ``gate`` and ``compare`` write: a terminal table, Markdown (PR comment), JSON, JUnit XML and
``compare.html``. Untrusted text (answers, questions, strategy ids) is escaped for each format:
Markdown via ``harness.report.markdown._md``, XML by ElementTree (after dropping characters XML 1.0
cannot hold), HTML by Jinja2 autoescaping."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jinja2

from harness.gate.verdict import amount
from harness.report.markdown import _md, _md_code

TEMPLATES = Path(__file__).parent / "templates"
_XML_BAD = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if k != "samples"}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=1, default=_json_default) + "\n", encoding="utf-8")
    return path


# -- gate ------------------------------------------------------------------------------------------
def _status(r: dict[str, Any]) -> str:
    return "PASS" if r["passed"] else "FAIL"


def gate_table(res: dict[str, Any]) -> str:
    rows = [(_status(r), r["name"], r.get("verdict", ""), r["evidence"]) for r in res["rules"]]
    w = max([len(r[1]) for r in rows] + [4])
    lines = [f"{'':4}  {'rule':<{w}}  {'verdict':<12}  evidence", "-" * (w + 40)]
    lines += [f"{s:4}  {n:<{w}}  {v:<12}  {e}" for s, n, v, e in rows]
    lines += [r["power"] for r in res["rules"] if r.get("power")]
    word = "PASSED" if res["passed"] else "FAILED"
    failed = sum(not r["passed"] for r in res["rules"])
    lines.append(f"gate {word}: {len(res['rules']) - failed} of {len(res['rules'])} rules pass")
    return "\n".join(lines)


def gate_markdown(res: dict[str, Any]) -> str:
    icon = "✅" if res["passed"] else "❌"
    failed = sum(not r["passed"] for r in res["rules"])
    base = res["baseline"]
    lines = [
        f"## {icon} adaptbench gate · {_md(res['run']['name'])}",
        "",
        f"**{'Passed' if res['passed'] else 'Failed'}**: {len(res['rules']) - failed} of {len(res['rules'])} rules pass"
        + (f" (baseline: {_md(base['name'])})" if base else "")
        + ".",
        "",
        "| | rule | verdict | evidence |",
        "|---|---|---|---|",
    ]
    for r in res["rules"]:
        mark = "✅" if r["passed"] else "❌"
        lines.append(
            f"| {mark} | `{_md_code(r['name'])}` | {_md(r.get('verdict', ''))} | {_md(r['evidence'])} |"
        )
    lines.append("")
    notes = [_md(r["power"]) for r in res["rules"] if r.get("power")]
    notes += [
        _md(
            f"{r['name']}: {r['n_clusters']} clusters; the clustered interval is {r['widening']:.2f}× "
            "as wide as the per-example one"
        )
        for r in res["rules"]
        if r.get("widening")
    ]
    notes += [_md(f"mismatch allowed: {m}") for m in res["mismatches"]]
    if notes:
        lines += ["<details><summary>Power and clustering</summary>", ""]
        lines += [f"- {n}" for n in notes] + ["", "</details>", ""]
    lines.append(
        f"Relative rules fail only on a significant drop beyond the margin (one-sided, alpha = {res['alpha']}"
        f", Holm over {res['holm_family']} rules){'; strict: any point drop fails' if res['strict'] else ''}."
    )
    return "\n".join(lines) + "\n"


def _x(text: Any) -> str:
    return _XML_BAD.sub("\ufffd", str(text))


def gate_junit(res: dict[str, Any], path: Path) -> Path:
    """One testcase per rule; a failed rule carries its evidence in the failure message."""
    failures = sum(not r["passed"] for r in res["rules"])
    suite = ET.Element(
        "testsuite",
        name=_x(f"adaptbench gate {res['run']['name']}"),
        tests=str(len(res["rules"])),
        failures=str(failures),
        errors="0",
    )
    for r in res["rules"]:
        case = ET.SubElement(
            suite, "testcase", classname=_x(f"adaptbench.gate.{r['strategy']}"), name=_x(r["name"])
        )
        if not r["passed"]:
            fail = ET.SubElement(case, "failure", message=_x(r["evidence"]), type=r["kind"])
            fail.text = _x(f"{r['evidence']}\n{r.get('verdict_text', '')}\n{r.get('power', '')}".strip())
        else:
            ET.SubElement(case, "system-out").text = _x(r["evidence"])
    root = ET.Element("testsuites")
    root.append(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


# -- compare ---------------------------------------------------------------------------------------
def _ci(r: dict[str, Any]) -> str:
    return f"{amount(r['low'], r['unit'])} to {amount(r['high'], r['unit'])}"


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def compare_markdown(res: dict[str, Any]) -> str:
    lines = [
        f"## adaptbench compare · {_md(res['a']['name'])} → {_md(res['b']['name'])}",
        "",
        f"Differences are B − A on the example ids both answered; margin ±{amount(res['margin'])}; "
        f"alpha {res['settings']['alpha']}, Holm across the metrics of a strategy.",
        "",
    ]
    lines += [f"> ⚠ mismatch allowed: {_md(m)}" for m in res["mismatches"]]
    for sid, s in res["strategies"].items():
        lines += [
            f"### {_md(sid)} (n = {s['n']})",
            "",
            "| metric | A | B | B − A | CI | p (Holm) | test | verdict |",
            "|---|---:|---:|---:|---|---:|---|---|",
        ]
        for r in s["metrics"]:
            lines.append(
                f"| {_md(r['label'])} | {_fmt(r['a'], r['unit'])} | {_fmt(r['b'], r['unit'])} | "
                f"{amount(r['diff'], r['unit'])} | {_ci(r)} | {_p(r['p_adjusted'])} | {_md(r['test'])} | "
                f"**{r['verdict']}**: {_md(r['verdict_text'])} |"
            )
        lines.append("")
        for r in s["metrics"]:
            lines.append(
                f"- {_md(r['label'])}: {_md(r['power'])}"
                + (
                    f"; {r['n_clusters']} clusters, interval {r['widening']:.2f}× the per-example width"
                    if r.get("widening")
                    else ""
                )
            )
        lines.append("")
        f = s["flips"]
        for group, items in f.get("groups", {}).items():
            lines += [f"**{group.replace('_', ' ')}** on {_md(f['metric'])}: {f['counts'][group]}", ""]
            for it in items[:5]:
                lines.append(
                    f"- `{_md_code(it['id'])}` {_md(it['question'])} — A: {_md(it['a_answer'])} · B: {_md(it['b_answer'])}"
                )
            lines.append("")
        if s["deltas"]:
            lines += ["| latency / throughput / cost | A | B | change |", "|---|---:|---:|---:|"]
            for d in s["deltas"]:
                rel = "" if d["relative"] is None else f" ({100 * d['relative']:+.0f}%)"
                lines.append(
                    f"| {d['measure']} | {_num(d['a'].get('estimate'))} | {_num(d['b'].get('estimate'))} | "
                    f"{_num(d['delta'])}{rel} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if unit == "" else f"{v:,.4g}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.4g}"


def compare_html(res: dict[str, Any], path: Path) -> Path:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["amount"] = amount
    env.filters["fmt"] = _fmt
    env.filters["num"] = _num
    env.filters["p"] = _p
    html = env.get_template("compare.html.j2").render(res=_clean(res))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def write_compare(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(compare_markdown(res), encoding="utf-8")
    return [
        compare_html(res, out / "compare.html"),
        out / "compare.md",
        write_json(res, out / "compare.json"),
    ]


def write_gate(res: dict[str, Any], out: Path, junit: Path | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.md").write_text(gate_markdown(res), encoding="utf-8")
    paths = [out / "gate.md", write_json(res, out / "gate.json")]
    if junit is not None:
        paths.append(gate_junit(res, junit))
    return paths
