"""Inline SVG charts for the self-contained report: no JavaScript, no network, printable.

Every piece of text that reaches the SVG (strategy ids, tags, labels) goes through ``escape``;
functions return ``markupsafe.Markup`` so the Jinja2 template (autoescape on) embeds them as markup.
Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies);
bars also carry value labels so nothing depends on colour alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#6E6E6E", "#000000"]
FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"
Fmt = Callable[[float], str]


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _finite(v: float | None) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    t = escape(title)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width}px;{FONT}" role="img" aria-label="{t}"><title>{t}</title>'
    )
    return Markup(head + "".join(body) + "</svg>")


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", extra: str = "") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="#1b1f24" {extra}>'
        f"{escape(s)}</text>"
    )


def _frame(
    left: float, top: float, plot_w: float, plot_h: float, x_label: str, y_label: str, *, x_label_y: float
) -> list[str]:
    """The plot area's border, the x-axis label below it and the rotated y-axis label on its left."""
    return [
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#57606a"/>',
        _text(left + plot_w / 2, x_label_y, x_label, 12, "middle"),
        _text(
            14, top + plot_h / 2, y_label, 12, "middle", f'transform="rotate(-90 14 {top + plot_h / 2:.1f})"'
        ),
    ]


def loss_range(ys: Sequence[float]) -> tuple[float, float]:
    """Y range for loss curves: zoom to the data (losses rarely approach 0) on round tick values."""
    if not ys:
        return 0.0, 1.0
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or max(abs(hi), 1.0) * 0.1
    raw = (span * 1.2) / 4
    exp = 10 ** math.floor(math.log10(raw))
    steps = [m * exp * 10**k for k in range(3) for m in (1, 2, 2.5, 5)]
    for step in (st for st in steps if st >= raw):
        ymin = max(0.0, math.floor((lo - 0.1 * span) / step) * step)
        if ymin + 4 * step >= hi:  # exactly four round steps
            return round(ymin, 10), round(ymin + 4 * step, 10)
    return 0.0, nice_max(hi)


def nice_max(v: float) -> float:
    if not _finite(v) or v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def legend(
    names: Sequence[str], x: float, y: float, dashed: Sequence[str] = (), colours: Sequence[int] | None = None
) -> list[str]:
    out, cx = [], x
    for i, n in enumerate(names):
        c = colour(colours[i] if colours is not None else i)
        out.append(f'<rect x="{cx:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{c}" rx="2"/>')
        out.append(_text(cx + 16, y, n, 12))
        cx += 28 + 7.2 * len(n)
    for j, d in enumerate(dashed):
        dash = "" if j == 0 else ' stroke-dasharray="5 3"'
        out.append(
            f'<line x1="{cx:.1f}" y1="{y - 4:.1f}" x2="{cx + 22:.1f}" y2="{y - 4:.1f}" stroke="#1b1f24" stroke-width="2"{dash}/>'
        )
        out.append(_text(cx + 26, y, d, 12))
        cx += 36 + 7.2 * len(d)
    return out


def grouped_bars(
    groups: Sequence[str],
    series: Sequence[str],
    values: dict[tuple[str, str], tuple[float, float | None, float | None]],
    *,
    title: str,
    y_max: float | None = None,
    fmt: Fmt = lambda v: f"{100 * v:.0f}%",
    width: int = 920,
    height: int = 300,
) -> Markup:
    """Vertical grouped bars (one group per metric/tag, one bar per strategy) with CI whiskers."""
    left, right, top, bottom = 48, 12, 34, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    vmax = y_max or nice_max(max([v[2] or v[0] for v in values.values() if _finite(v[0])] or [1.0]))
    body = legend(series, left, 16)
    for k in range(5):
        val = vmax * k / 4
        y = top + plot_h - plot_h * k / 4
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#d0d7de" stroke-width="1"/>'
        )
        body.append(_text(left - 6, y + 4, fmt(val), 11, "end"))
    gw = plot_w / max(1, len(groups))
    bw = min(34.0, (gw - 14) / max(1, len(series)))
    for gi, g in enumerate(groups):
        gx = left + gi * gw + (gw - bw * len(series)) / 2
        for si, s in enumerate(series):
            est, lo, hi = values.get((g, s), (float("nan"), None, None))
            x = gx + si * bw
            if not _finite(est):
                body.append(_text(x + bw / 2, top + plot_h - 4, "n/a", 9, "middle", 'fill-opacity="0.7"'))
                continue
            h = plot_h * max(0.0, min(est, vmax)) / vmax
            y = top + plot_h - h
            label = f"{s} {g}: {fmt(est)}" + (
                f" (CI {fmt(lo)} to {fmt(hi)})" if _finite(lo) and _finite(hi) else ""
            )
            body.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{colour(si)}">'
                f"<title>{escape(label)}</title></rect>"
            )
            if _finite(lo) and _finite(hi):
                ylo = top + plot_h - plot_h * max(0.0, min(lo, vmax)) / vmax
                yhi = top + plot_h - plot_h * max(0.0, min(hi, vmax)) / vmax
                cx = x + bw / 2
                body.append(
                    f'<path d="M{cx:.1f} {ylo:.1f}V{yhi:.1f}M{cx - 4:.1f} {ylo:.1f}h8M{cx - 4:.1f} {yhi:.1f}h8" '
                    'stroke="#1b1f24" stroke-width="1.3" fill="none"/>'
                )
                y = min(y, yhi)
            if bw >= 22:
                body.append(_text(x + bw / 2, y - 4, fmt(est), 10, "middle"))
        body.append(_text(left + gi * gw + gw / 2, top + plot_h + 18, g, 12, "middle"))
    body.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#57606a"/>'
    )
    return _svg(width, height, title, body)


def scatter_ci(
    points: Sequence[dict],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_fmt: Fmt,
    y_fmt: Fmt,
    width: int = 920,
    height: int = 340,
) -> Markup:
    """Points with horizontal and vertical CI whiskers; each dict: name, x, xlo, xhi, y, ylo, yhi."""
    left, right, top, bottom = 58, 24, 20, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [v for p in points for v in (p["x"], p.get("xhi")) if _finite(v)]
    ys = [v for p in points for v in (p["y"], p.get("yhi")) if _finite(v)]
    xmax, ymax = nice_max(max(xs or [1.0]) * 1.08), nice_max(max(ys or [1.0]) * 1.08)
    if ymax > 1 and all(v <= 1 for v in ys):
        ymax = 1.0

    def px(v: float) -> float:
        return left + plot_w * max(0.0, min(v, xmax)) / xmax

    def py(v: float) -> float:
        return top + plot_h - plot_h * max(0.0, min(v, ymax)) / ymax

    body = []
    for k in range(5):
        yv, xv = ymax * k / 4, xmax * k / 4
        body.append(
            f'<line x1="{left}" y1="{py(yv):.1f}" x2="{width - right}" y2="{py(yv):.1f}" stroke="#d0d7de"/>'
        )
        body.append(_text(left - 6, py(yv) + 4, y_fmt(yv), 11, "end"))
        body.append(
            f'<line x1="{px(xv):.1f}" y1="{top}" x2="{px(xv):.1f}" y2="{top + plot_h}" stroke="#eef0f2"/>'
        )
        body.append(_text(px(xv), top + plot_h + 16, x_fmt(xv), 11, "middle"))
    body.extend(_frame(left, top, plot_w, plot_h, x_label, y_label, x_label_y=height - 8))
    labels: list[tuple[float, float, str]] = []
    for i, p in enumerate(points):
        if not (_finite(p["x"]) and _finite(p["y"])):
            continue
        cx, cy = px(p["x"]), py(p["y"])
        if _finite(p.get("xlo")) and _finite(p.get("xhi")):
            body.append(
                f'<line x1="{px(p["xlo"]):.1f}" y1="{cy:.1f}" x2="{px(p["xhi"]):.1f}" y2="{cy:.1f}" stroke="{colour(i)}" stroke-width="2"/>'
            )
        if _finite(p.get("ylo")) and _finite(p.get("yhi")):
            body.append(
                f'<line x1="{cx:.1f}" y1="{py(p["ylo"]):.1f}" x2="{cx:.1f}" y2="{py(p["yhi"]):.1f}" stroke="{colour(i)}" stroke-width="2"/>'
            )
        tip = f"{p['name']}: {y_label} {y_fmt(p['y'])}, {x_label} {x_fmt(p['x'])}"
        body.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{colour(i)}" stroke="#fff" stroke-width="1.5">'
            f"<title>{escape(tip)}</title></circle>"
        )
        labels.append((cx, cy, p["name"]))
    body.extend(_place_labels(labels, left, left + plot_w, top, top + plot_h))
    return _svg(width, height, title, body)


def _place_labels(
    points: list[tuple[float, float, str]], x0: float, x1: float, y0: float, y1: float
) -> list[str]:
    """Greedy label placement: try right-above, right-below, left-above, left-below, then further
    out, and take the first spot that overlaps no earlier label or the plot edge."""
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for cx, cy, name in points:
        w, h = 7.4 * len(name) + 4, 15
        spots = []
        for dy in (-8, 18, -24, 34, -40, 50):
            spots += [(cx + 10, cy + dy, "start"), (cx - 10, cy + dy, "end")]
        choice = spots[0]
        for sx, sy, anchor in spots:
            bx = sx if anchor == "start" else sx - w
            box = (bx, sy - h + 3, bx + w, sy + 3)
            inside = box[0] >= x0 and box[2] <= x1 + 20 and box[1] >= y0 - 14 and box[3] <= y1
            if inside and not any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed
            ):
                choice = (sx, sy, anchor)
                placed.append(box)
                break
        out.append(_text(choice[0], choice[1], name, 12, choice[2], 'font-weight="600"'))
    return out


def hbars(
    names: Sequence[str],
    values: Sequence[float | None],
    *,
    title: str,
    fmt: Fmt,
    width: int = 440,
    bar_h: int = 22,
) -> Markup:
    """One horizontal bar per strategy (a small multiple of the cost panel)."""
    left, right, top = 130, 90, 28
    height = top + bar_h * len(names) + 10
    finite = [v for v in values if _finite(v)]
    vmax = max(finite) if finite and max(finite) > 0 else 1.0
    body = [_text(0, 16, title, 13, "start", 'font-weight="600"')]
    for i, (n, v) in enumerate(zip(names, values, strict=True)):
        y = top + i * bar_h
        label = n if len(n) <= 18 else n[:17] + "…"
        body.append(_text(left - 8, y + bar_h / 2 + 4, label, 12, "end"))
        if not _finite(v):
            body.append(_text(left + 4, y + bar_h / 2 + 4, "n/a", 11))
            continue
        w = (width - left - right) * (v / vmax if vmax else 0)
        body.append(
            f'<rect x="{left}" y="{y + 3}" width="{max(w, 1.5):.1f}" height="{bar_h - 6}" fill="{colour(i)}">'
            f"<title>{escape(f'{n}: {fmt(v)}')}</title></rect>"
        )
        body.append(_text(left + max(w, 1.5) + 6, y + bar_h / 2 + 4, fmt(v), 11))
    return _svg(width, height, title, body)


def line_chart(
    series: Sequence[dict],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 920,
    height: int = 300,
) -> Markup:
    """Loss curves: each dict has name, colour index, dashed flag and points [(x, y)]."""
    left, right, top, bottom = 58, 20, 34, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s["points"]]
    ys = [y for s in series for _, y in s["points"]]
    xmax = max(xs or [1.0]) or 1.0
    ymin, ymax = loss_range(ys)

    def px(v: float) -> float:
        return left + plot_w * v / xmax

    def py(v: float) -> float:
        return top + plot_h - plot_h * (v - ymin) / (ymax - ymin)

    names = list(dict.fromkeys(s["name"] for s in series))
    idx = {
        s["name"]: (s.get("colour") if s.get("colour") is not None else names.index(s["name"]))
        for s in series
    }
    body = legend(names, left, 16, dashed=("train", "validation"), colours=[idx[n] for n in names])
    for k in range(5):
        yv = ymin + (ymax - ymin) * k / 4
        body.append(
            f'<line x1="{left}" y1="{py(yv):.1f}" x2="{width - right}" y2="{py(yv):.1f}" stroke="#d0d7de"/>'
        )
        body.append(_text(left - 6, py(yv) + 4, f"{yv:.4g}", 11, "end"))
        xv = xmax * k / 4
        body.append(_text(px(xv), top + plot_h + 16, f"{xv:.0f}", 11, "middle"))
    body.extend(_frame(left, top, plot_w, plot_h, x_label, y_label, x_label_y=height - 6))
    for s in series:
        pts = sorted(s["points"])
        if not pts:
            continue
        c = colour(idx[s["name"]])
        d = "M" + "L".join(f"{px(x):.1f} {py(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="6 4"' if s.get("dashed") else ""
        body.append(
            f'<path d="{d}" fill="none" stroke="{c}" stroke-width="2"{dash}><title>{escape(s["name"])}</title></path>'
        )
        if len(pts) <= 30:
            for x, y in pts:
                body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{c}"/>')
    return _svg(width, height, title, body)
