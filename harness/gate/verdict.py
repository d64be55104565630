"""One word per comparison, and the sentence that justifies it.

* ``better`` / ``worse``: the (Holm-adjusted) test is significant, in the metric's good / bad direction;
* ``equivalent``: the whole interval lies within ±margin, so any effect larger than the margin is ruled out;
* ``inconclusive``: neither; the sentence gives the minimum detectable effect at this n (80% power,
  normal approximation on the paired differences), i.e. how large an effect this eval could have seen.
"""

from __future__ import annotations

import math

WORDS = ("better", "worse", "equivalent", "inconclusive")


def amount(value: float | None, unit: str = "") -> str:
    """Score differences in points (0.061 -> "6.1 points"), other units as numbers with the unit."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "":
        return f"{100 * value + 0.0:.1f} points"
    return f"{value + 0.0:,.3g} {unit}"


def verdict(
    diff: float,
    low: float,
    high: float,
    significant: bool,
    margin: float,
    mde: float,
    *,
    higher_is_better: bool = True,
    unit: str = "",
) -> tuple[str, str]:
    """``diff`` (``low``..``high``) is candidate minus baseline in the metric's own direction."""
    if not all(math.isfinite(x) for x in (diff, low, high)):
        return "inconclusive", "no paired values to compare"
    sign = 1.0 if higher_is_better else -1.0
    d, lo, hi = sign * diff, min(sign * low, sign * high), max(sign * low, sign * high)
    if significant and d > 0:
        return "better", f"improved by {amount(abs(diff), unit)} (significant)"
    if significant and d < 0:
        return "worse", f"regressed by {amount(abs(diff), unit)} (significant)"
    if lo >= -margin and hi <= margin:
        return "equivalent", f"within ±{amount(margin, unit)}: effects larger than that are ruled out"
    return "inconclusive", f"minimum detectable effect at this n: {amount(mde, unit)} (80% power)"


def power_note(
    n: int, mde: float, unit: str = "", *, what: str = "differences", clusters: int | None = None
) -> str:
    """ "n = 92: drops ≥ 6.1 points are detected (80% power; normal approximation on paired differences)"."""
    where = f"n = {n}" + (f" in {clusters} clusters" if clusters is not None and clusters < n else "")
    if not math.isfinite(mde):
        return f"{where}: too few examples to estimate power"
    return (
        f"{where}: {what} ≥ {amount(mde, unit)} are detected with 80% power "
        "(normal approximation on the paired differences)"
    )
