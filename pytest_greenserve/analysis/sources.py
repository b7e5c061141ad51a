"""Energy-source labels (``rapl``, ``estimated-cpu-time+nvml-counter``...) and the notes they call for."""

from __future__ import annotations

import math

import pandas as pd


def _src(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def row_energy_source(row, which: str = "total") -> str | None:
    """The source label of one sample's energy: ``rapl``, ``estimated-cpu-time+nvml-counter``...

    ``which`` is a metric's ``energy_source``: ``total`` joins the CPU and GPU sources; any other
    (``cpu``, ``gpu``, ``wall``...) reads the sample's ``energy_<which>_source``.
    """
    if which == "total":
        parts = [_src(row.get("energy_cpu_source")), _src(row.get("energy_gpu_source"))]
    else:
        parts = [_src(row.get(f"energy_{which}_source"))]
    parts = [p for p in parts if p]
    return "+".join(parts) or None


def is_estimated(source: str | None) -> bool:
    return bool(source) and any(p.startswith("estimated") for p in str(source).split("+"))


def group_energy_source(df: pd.DataFrame, which: str = "total") -> str | None:
    """One label for a group of samples; several labels are joined with ' / '."""
    labels = sorted({s for s in (row_energy_source(r, which) for r in df.to_dict("records")) if s})
    return " / ".join(labels) or None


def source_note(sources: dict[str, str | None]) -> str:
    """Words for a comparison whose configurations have these energy sources ('' if all alike)."""
    labels = {s or "unknown" for s in sources.values()}
    notes = []
    if len(labels) > 1:
        notes.append("energy sources differ across configurations, so estimated and measured values "
                     "are not alike: " + "; ".join(f"{c}: {s or 'unknown'}" for c, s in sources.items()))
    if any(is_estimated(s) for s in sources.values()):
        notes.append("estimated energy (from a power model, not a meter)")
    return "; ".join(notes)
