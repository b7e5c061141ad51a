"""Report lines for the ONNX placement audit (issue 8, §7): where the runtime put a CUDA
configuration's nodes, and whether compute operators were left on the CPU.

Each sample of an auditing engine carries ``placement`` (nodes per execution provider,
Memcpy nodes, operator types on the CPU, ``compute_on_cpu``) and ``not_fully_on_cuda``; this
turns them into one note per machine × model × configuration. Pure: reads a samples frame.
"""

from __future__ import annotations

import pandas as pd


def _counts(ops: dict) -> str:
    return ", ".join(f"{op}×{n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


def placement_text(placement: dict) -> str:
    """``"1,200 nodes on CUDAExecutionProvider, 40 on CPUExecutionProvider (Gather×20, Shape×20), 2 Memcpy"``."""
    per = sorted(placement.get("nodes_per_provider", {}).items(), key=lambda kv: kv[0] == "CPUExecutionProvider")
    parts = [f"{n:,} {'nodes on ' if i == 0 else 'on '}{ep}" for i, (ep, n) in enumerate(per)]
    text = ", ".join(parts) or "no nodes listed"
    if placement.get("fallback_ops"):
        text += f" ({_counts(placement['fallback_ops'])})"
    return text + f", {placement.get('memcpy', 0)} Memcpy"


def placement_notes(df: pd.DataFrame) -> list[str]:
    """One line per CUDA configuration whose samples carry a placement audit; those with
    compute operators on the CPU say they are not fully on CUDA."""
    if df.empty or "placement" not in df.columns:
        return []
    notes = []
    for (machine, model, config), g in df.groupby(["machine", "model", "config"], sort=True):
        audits = [p for p, prov in zip(g["placement"], g.get("provider", pd.Series("cuda", index=g.index)))
                  if isinstance(p, dict) and prov == "cuda"]
        if not audits:
            continue
        first = audits[0]
        line = f"{machine} / {model}: {config} placement: {placement_text(first)}"
        blamed: dict = {}
        for p in audits:
            for op, n in (p.get("compute_on_cpu") or {}).items():
                blamed[op] = max(blamed.get(op, 0), n)
        if blamed:
            line += f"; NOT FULLY ON CUDA: compute operators on the CPU ({_counts(blamed)})"
        else:
            line += "; every compute operator on CUDA (shape operators on the CPU are expected)"
        notes.append(line)
    return notes
