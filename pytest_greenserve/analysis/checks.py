"""The sample checks: samples flagged unsteady, low-resolution or concurrent (``metrics.SAMPLE_FLAGS``), in words.

A flagged sample stays in the statistics, but never silently: each (machine, model,
configuration) with a flagged sample gets a stats.csv row (``test`` = the flag), a note on the
rows that compare it, a line in the run's notes (summary.md, report.html) and a mark in the
summary table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .floats import as_float
from .metrics import SAMPLE_FLAGS, Metric, metrics_or_builtin


@dataclass
class SampleFlag:
    machine: str
    model: str
    config: str
    flag: str  # unsteady | low_resolution | concurrent
    n_flagged: int
    n: int
    text: str  # "unsteady in 2 of 3 samples (r1: slowest request 35.2x the median, drift +3%; ...)"


def _flagged(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").fillna(0).astype(float) > 0


def _detail(flag: str, r: dict) -> str:
    rep = r.get("repetition")
    who = f"r{int(rep)}" if as_float(rep) is not None else "a sample"
    if flag == "unsteady":
        parts = []
        ratio, drift = as_float(r.get("slowest_over_median")), as_float(r.get("drift_pct"))
        if ratio is not None:
            parts.append(f"slowest request {ratio:.1f}x the median")
        if drift is not None:
            parts.append(f"drift {drift:+.0f}% first to last quarter")
        return f"{who}: " + ", ".join(parts) if parts else who
    if flag == "low_resolution":
        t = as_float(r.get("time_s"))
        floor = as_float(r.get("min_sample_s"))
        return f"{who}: {t:.2f} s" + (f" < {floor:g} s" if floor is not None else "") if t is not None else who
    if flag == "concurrent":
        return f"{who}: beside {r.get('concurrent_with') or 'another worker'}"
    return who


WHAT = {
    "unsteady": "unsteady (compilation, a warm-up left over or a drift inside the measured window)",
    "low_resolution": "shorter than the energy counter's resolution allows (--greenserve-min-sample-s)",
    "concurrent": "measured while other pytest-xdist workers ran (--greenserve-cpu-overlap=yes)",
}


def sample_flags(df: pd.DataFrame, metrics: dict[str, Metric] | None = None) -> list[SampleFlag]:
    """Every (machine, model, configuration, flag) with at least one flagged sample."""
    registry = metrics_or_builtin(metrics)
    out: list[SampleFlag] = []
    flags = [f for f in SAMPLE_FLAGS if f in registry and f in df.columns]
    if df.empty or not flags:
        return out
    for (machine, model, config), g in df.groupby(["machine", "model", "config"], sort=True):
        for flag in flags:
            bad = g[_flagged(g[flag])]
            if bad.empty:
                continue
            details = "; ".join(_detail(flag, r) for r in bad.to_dict("records"))
            text = f"{WHAT.get(flag, flag)} in {len(bad)} of {len(g)} sample(s) ({details})"
            out.append(SampleFlag(str(machine), str(model), str(config), flag, len(bad), len(g), text))
    return out


def flags_by_config(flags: list[SampleFlag]) -> dict[tuple[str, str, str], str]:
    """(machine, model, config) -> a short mark for tables: ``"2/3 unsteady, 3/3 low-resolution"``."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for f in flags:
        out.setdefault((f.machine, f.model, f.config), []).append(
            f"{f.n_flagged}/{f.n} {f.flag.replace('_', '-')}")
    return {k: ", ".join(v) for k, v in out.items()}
