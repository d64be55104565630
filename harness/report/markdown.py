"""``summary.md``: the recommendation, a compact table and the reasons, for a pull-request comment."""

from __future__ import annotations

import math
import re
from typing import Any

from harness.decision.analysis import Analysis
from harness.decision.engine import Decision
from harness.decision.measures import format_value, measure
from harness.report.text import ci_text

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!~|])")


def _md(text: Any) -> str:
    """Markdown cell text from untrusted strings (dataset, model, config): no HTML, no table breaks, no
    links/images/code spans, no control or bidi characters (GitHub renders inline HTML in comments)."""
    s = _CONTROL.sub("", str(text))
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"\s+", " ", s).strip()


def _md_code(text: Any) -> str:
    """Text for inside a `code span`: Markdown escapes would show literally there, so instead backticks
    (which could close the span) become quotes, pipes are escaped (GFM tables split on them inside
    spans too), control and bidi characters go. HTML inside a code span is literal text."""
    s = _CONTROL.sub("", str(text)).replace("`", "'").replace("|", "\\|")
    return re.sub(r"\s+", " ", s).strip()


def summary_markdown(an: Analysis, d: Decision) -> str:
    p = an.primary
    cols = [p] + [
        m for m in ("semantic_similarity", "coherence", "faithfulness") if m in an.quality and m != p
    ]
    lines = [f"## adaptbench · {_md(an.run_name)}", "", f"**{_md(d.headline)}**", "", _md(d.detail), ""]
    lines += [f"Decision mode: `{d.mode}` ({_md(d.rule)}).", ""]
    if d.confidence is not None:
        lines.append(
            f"Confidence: {d.confidence_label} ({100 * d.confidence:.0f}% of bootstrap resamples rank {_md(d.top)} first)."
        )
        lines.append("")
    weighted = d.mode == "weighted"
    head = (
        ["strategy", "score" if weighted else "rank"]
        + [measure(m).label for m in cols]
        + ["p95 latency", "cost / 1k queries", "setup"]
    )
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    score = {r["strategy"]: (f"{r['score']:.3f}" if weighted else str(r["rank"])) for r in d.ranking}
    for s in an.strategies:
        cells = [f"**{_md(s)}**" if s == d.recommended else _md(s)]
        cells.append(score.get(s, "excluded"))
        for m in cols:
            iv = an.ci[s].get(m)
            ci = ci_text(m, iv)
            cells.append(format_value(m, an.point[s].get(m)) + (f" ({ci})" if ci else ""))
        cells.append(format_value("latency_p95_ms", an.point[s].get("latency_p95_ms")))
        cells.append(format_value("total_cost_per_1k_usd", an.point[s].get("total_cost_per_1k_usd")))
        # The same "setup" the headline and the reasons quote: the strategy's whole prepare step.
        setup = an.point[s].get("setup_time_min", float("nan"))
        cells.append(format_value("setup_time_min", setup) if math.isfinite(setup) else "n/a")
        lines.append("| " + " | ".join(_md(c) if i else c for i, c in enumerate(cells)) + " |")
    truncated = {
        sid: n
        for sid, e in (an.scores.get("strategies") or {}).items()
        if (n := (e or {}).get("prompt_truncated"))
    }
    if truncated:
        lines += [
            "",
            "Prompts truncated to fit the context window: "
            + ", ".join(f"{_md(sid)} {n}" for sid, n in truncated.items())
            + ".",
        ]
    lines += ["", "**Why**", ""] + [f"- {_md(r)}" for r in d.rationale]
    lines += ["", "**What would change it**", ""] + [f"- {_md(s['text'])}" for s in d.sensitivity]
    lines += [
        "",
        f"{len(an.examples)} examples · {an.decision_cfg.bootstrap_resamples} bootstrap resamples · "
        f"α = {an.decision_cfg.alpha} (Holm) · hardware price ${an.price_per_hour:.2f}/h · full report: `report.html`",
        "",
    ]
    return "\n".join(lines)
