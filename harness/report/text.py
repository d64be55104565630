"""Text helpers shared by the report outputs (HTML view model, summary.md)."""

from __future__ import annotations

import math
from typing import Any

from harness.decision.measures import format_value


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ci_text(name: str, iv: Any) -> str:
    if iv is None or not finite(iv.low) or not finite(iv.high) or iv.low == iv.high:
        return ""
    return f"{format_value(name, iv.low)} – {format_value(name, iv.high)}"
