"""The paper's three guideline shapes, in words: energy-, latency- and resource-constrained."""

from __future__ import annotations

from ..analysis.guidelines import Guideline
from ..stats import Analysis

SHAPE_QUESTION = {
    "energy-constrained": "If energy is your constraint (battery, carbon budget, cost per request)",
    "latency-constrained": "If latency is your constraint (auto-complete must keep up with typing)",
    "resource-constrained": "If CPU, RAM or GPU memory is your constraint (shared laptop or server)",
}


def _both(configs: list[str]) -> str:
    return configs[0] if len(configs) == 1 else ", ".join(configs[:-1]) + " and " + configs[-1]


def guideline_text(g: Guideline) -> tuple[str, list[str]]:
    """A headline sentence and the evidence lines for one guideline.

    Where the first configuration is not significantly different from the runner-up (in every
    model where it came first), the headline says *tied* and names both: the run cannot tell
    them apart, so it does not pick one."""
    intro = SHAPE_QUESTION.get(g.shape, g.shape)
    tied_with = getattr(g, "tied_with", [])
    if g.best_config and tied_with and getattr(g, "tied_everywhere", False):
        head = (f"{intro}: tied — {_both([g.best_config] + tied_with)} (no significant difference in this run "
                f"on {g.machine}); either will do, or measure more repetitions to tell them apart.")
    elif g.best_config and tied_with:
        where = ", ".join(m for m, other in g.ties.items() if g.per_model.get(m) == g.best_config)
        head = (f"{intro}: use {g.best_config} (best found in this run on {g.machine}; tied with "
                f"{_both(tied_with)} for {where}).")
    elif g.best_config:
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
