"""p-values, values and percentages as words (summaries, findings, reports)."""

from __future__ import annotations

import math


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_value(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    a = abs(v)
    text = f"{v:,.0f}" if a >= 1000 else f"{v:.1f}" if a >= 10 else f"{v:.3g}"
    return f"{text} {unit}".strip()


def pct_text(x: float) -> str:
    return f"{x:.2f}%"
