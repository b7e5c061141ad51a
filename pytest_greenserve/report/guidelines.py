"""The paper's three guideline shapes, in words: energy-, latency- and resource-constrained."""

from __future__ import annotations

from ..analysis.guidelines import Guideline
from ..stats import Analysis

SHAPE_QUESTION = {
    "energy-constrained": "If energy is your constraint (battery, carbon budget, cost per request)",
    "latency-constrained": "If latency is your constraint (auto-complete must keep up with typing)",
    "resource-constrained": "If CPU, RAM or GPU memory is your constraint (shared laptop or server)",
}


def guideline_text(g: Guideline) -> tuple[str, list[str]]:
    """A headline sentence and the evidence lines for one guideline."""
    intro = SHAPE_QUESTION.get(g.shape, g.shape)
    if g.best_config:
        head = f"{intro}: use {g.best_config} (best found in this run on {g.machine})."
    else:
        head = f"{intro}: no recommendation on {g.machine}" + (f" ({'; '.join(g.caveats)})." if g.caveats else ".")
    lines = list(g.evidence)
    if g.best_config:
        lines += [f"caveat: {c}" for c in g.caveats]
    return head, lines


def guideline_markdown(analysis: Analysis) -> str:
    if not analysis.guidelines:
        return "No guidelines: no configuration could be compared in this run."
    out = []
    for g in analysis.guidelines:
        head, lines = guideline_text(g)
        out.append(f"- **{g.shape}** — {head}")
        out += [f"  - {line}" for line in lines]
    return "\n".join(out)
