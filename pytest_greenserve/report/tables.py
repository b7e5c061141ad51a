"""Tables: the per model × configuration summary (summary.md, the terminal, report.html).

Every energy value carries its source; a source starting with ``estimated`` is written out,
so estimated numbers are labelled *estimated* wherever they appear.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from ..analysis.formatting import fmt_value
from ..analysis.metrics import Metric, metrics_or_builtin
from ..analysis.ordering import config_sort_key, sort_configs
from ..analysis.sources import is_estimated
from ..roofline import HOST_BUSY_PCT, NEAR_FLOOR, bound_by


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def energy_cell(value, source, unit: str = "J") -> str:
    """``"1,234 J (rapl)"``; ``"1,234 J (estimated: estimated-cpu-time)"``; ``"not measured"``."""
    if _missing(value):
        return "not measured"
    if not source:
        return f"{fmt_value(value, unit)} (source unknown)"
    if is_estimated(source):
        return f"{fmt_value(value, unit)} (estimated: {source})"
    return f"{fmt_value(value, unit)} ({source})"


def per_token_cell(value, source) -> str:
    if _missing(value):
        return "not measured"
    return fmt_value(value) + (" (estimated)" if is_estimated(source) else "")


def plain(value, unit: str = "") -> str:
    return "not measured" if _missing(value) else fmt_value(value, unit)


def rate(value) -> str:
    return "—" if _missing(value) else f"{value:.0%}"


QUALITY_HEADER = "quality (NLL excess, nats/token; torch in the same dtype)"
SUMMARY_HEADERS = ["model", "configuration", "n", "median time", "ms per token", "match rate (strict / tie-aware)",
                   QUALITY_HEADER, "median net energy (source)", "J/token"]


def quality_cell(excess, native_excess=None, matched=None) -> str:
    """``"+0.012 (torch +0.010): matched"``: the mean NLL excess over the fp32 reference's own
    output, torch eager's in the same dtype, and the verdict (quality.py); ``"not scored"``."""
    if _missing(excess):
        return "not scored"
    text = f"{excess:+.3f}" + ("" if _missing(native_excess) else f" (torch {native_excess:+.3f})")
    if matched is True:
        return text + ": matched"
    if matched is False:
        return text + ": worse than torch"
    return text


def match_cell(strict, tie_aware=None) -> str:
    """``"97% / 100%"``: strict match rate, then the one allowing divergences at near-ties
    (what decides error-prone); the strict rate alone where no tie-aware rate exists."""
    return rate(strict) if _missing(tie_aware) else f"{rate(strict)} / {rate(tie_aware)}"


def summary_rows(summary: pd.DataFrame) -> list[list[str]]:
    """One list of cells per machine × model × configuration (machine column left to the caller)."""
    out = []
    for r in summary.to_dict("records"):
        config = r["config"] + (" (error-prone: excluded)" if r["error_prone"] else "")
        flags = r.get("flags")
        if isinstance(flags, str) and flags:  # samples flagged unsteady / low-resolution (analysis/checks.py)
            config += f" (flagged: {flags})"
        out.append([r["model"], config, str(r["n"]), plain(r["time_s"], "s"), plain(r["ms_per_token"]),
                    match_cell(r["match_rate"], r.get("match_rate_tie_aware")),
                    quality_cell(r.get("nll_excess_nats_per_token"), r.get("native_nll_excess_nats_per_token"),
                                 r.get("quality_matched")),
                    energy_cell(r["energy_net_j"], r["energy_source"]),
                    per_token_cell(r["j_per_token"], r["energy_source"])])
    return out


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(c):
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def text_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*headers), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return [line.rstrip() for line in lines]


def category_rows(cat: pd.DataFrame, metric: str, unit: str) -> tuple[list[str], list[list[str]]]:
    """The paper's Tables 4 (energy) and 5 (time): per size category × configuration medians."""
    if cat is None or cat.empty:
        return [], []
    configs = sort_configs(cat["config"])
    headers = ["machine", "size category"] + configs
    rows = []
    for (machine, category), g in cat.groupby(["machine", "category"], sort=True):
        gi = g.set_index("config")
        cells = [machine, category]
        for c in configs:
            if c not in gi.index:
                cells.append("—")
            elif metric.startswith("energy"):
                cells.append(energy_cell(gi.loc[c, metric], gi.loc[c, "energy_source"]) if not _missing(gi.loc[c, metric])
                             else "not measured")
            else:
                cells.append(plain(gi.loc[c, metric], unit))
        rows.append(cells)
    return headers, rows


def savings_rows(savings: pd.DataFrame, metrics: dict[str, Metric] | None = None) -> tuple[list[str], list[list[str]]]:
    registry = metrics_or_builtin(metrics)
    headers = ["machine", "metric", "configuration", "compared with", "models", "saving from", "up to", "note"]
    rows = []
    for r in savings.to_dict("records"):
        metric = registry.get(r["metric"])
        label = metric.label if metric else r["metric"]
        if r.get("estimated"):
            label += " (estimated)"
        rows.append([r["machine"], label,
                     r["config"], r["other"], str(r["n_models"]), f"{r['min_pct']:.2f}%", f"{r['max_pct']:.2f}%",
                     r["note"] or ""])
    return headers, rows


def power_model_lines(meta: dict | None) -> list[str]:
    """The CPU power model behind estimated energy, as the meters recorded it in run.json's
    ``meter_notes`` (``... estimated from CPU time at 10 W/core + 20 W idle``)."""
    notes = (meta or {}).get("meter_notes") or []
    return [str(n) for n in dict.fromkeys(notes) if "estimated" in str(n) and "W" in str(n)]


def best_savings_lines(analysis) -> list[str]:
    """For each machine and metric: what the best configuration saves against every other, in words."""
    lines = []
    sav = analysis.savings
    if sav is None or sav.empty:
        return lines
    for (machine, metric), g in sav.groupby(["machine", "metric"], sort=False):
        # the configuration whose worst-case saving is highest
        best = g.groupby("config")["min_pct"].min().sort_values(ascending=False).index[0]
        b = g[g["config"] == best]
        what = "time" if metric == "time_s" else "energy"
        if what == "energy" and "estimated" in b and b["estimated"].any():
            what = "estimated energy"
        if len(b) > 1 and b["min_pct"].min() >= 0:
            lines.append(f"{machine}: {best} uses from {b['min_pct'].min():.2f}% up to {b['max_pct'].max():.2f}% "
                         f"less {what} than the other configurations")
        for r in g[g["config"] == best].to_dict("records"):
            lines.append(f"{machine}: {r['text']}" + (f" — {r['note']}" if r["note"] else ""))
    return lines


# ---------------------------------------------------------------- the per-token roofline (GPU samples)

ROOFLINE_TITLE = "Distance from the card's limit (GPU samples)"
ROOFLINE_HEADERS = ["model", "configuration", "n", "ms per token", "memory floor (ms/token)",
                    "launch floor (ms/token)", "× memory floor", "kernels per token", "launches per token", "bound by"]
# the medians roofline.bound_by reads
_ROOFLINE_MEDIANS = ("ms_per_token", "memory_floor_ms_per_token", "launch_floor_ms_per_token", "x_memory_floor",
                     "kernels_per_token", "launches_per_token", "gpu_busy_ms_per_token", "gpu_busy_pct_profiled",
                     "gpu_pct", "bandwidth_gb_s", "launch_latency_us")


def _roofline_medians(df: pd.DataFrame | None) -> pd.DataFrame:
    """Per machine × model × configuration of samples with a roofline: the medians of its fields."""
    if df is None or df.empty or "memory_floor_ms_per_token" not in df.columns:
        return pd.DataFrame()
    num = {c: pd.to_numeric(df[c], errors="coerce") if c in df.columns else pd.Series(float("nan"), index=df.index)
           for c in _ROOFLINE_MEDIANS}
    frame = pd.DataFrame({"machine": df["machine"].fillna("unknown").astype(str), "model": df["model"].astype(str),
                          "config": df["config"].astype(str), **num})
    frame = frame[num["memory_floor_ms_per_token"].notna() | num["kernels_per_token"].notna()]
    if frame.empty:
        return frame
    out = frame.groupby(["machine", "model", "config"], sort=False).median()
    out["n"] = frame.groupby(["machine", "model", "config"], sort=False).size()
    out = out.reset_index()
    out["_k"] = out["config"].map(config_sort_key)
    return out.sort_values(["machine", "model", "_k"]).drop(columns="_k").reset_index(drop=True)


def times(value) -> str:
    """``"7.5×"``, ``"120×"``; ``"—"`` where missing."""
    return "—" if _missing(value) else f"{fmt_value(value)}×"


def roofline_rows(df: pd.DataFrame | None) -> tuple[list[str], list[list[str]]]:
    """The roofline table (summary.md, report.html): per model × configuration of GPU samples,
    the medians of ms/token, the two floors, ms/token over the memory floor, kernels and
    launches per token, and what binds (``roofline.bound_by`` of the medians). With several
    machines, a machine column first. No rows without GPU samples measured with a roofline."""
    med = _roofline_medians(df)
    if med.empty:
        return list(ROOFLINE_HEADERS), []
    several = med["machine"].nunique() > 1
    rows = []
    for r in med.to_dict("records"):
        r = {k: (None if _missing(v) else v) for k, v in r.items()}
        cells = [r["model"], r["config"], str(int(r["n"])), plain(r["ms_per_token"]),
                 plain(r["memory_floor_ms_per_token"]), plain(r["launch_floor_ms_per_token"]),
                 times(r["x_memory_floor"]), plain(r["kernels_per_token"]), plain(r["launches_per_token"]),
                 bound_by(r) or "—"]
        rows.append(([r["machine"]] if several else []) + cells)
    return (["machine"] if several else []) + list(ROOFLINE_HEADERS), rows


def roofline_notes(df: pd.DataFrame | None) -> list[str]:
    """How each floor was obtained, with the card's measured values, for under the roofline table."""
    med = _roofline_medians(df)
    if med.empty:
        return []
    cards = med.groupby("machine", sort=False)[["bandwidth_gb_s", "launch_latency_us"]].median()
    several = len(cards) > 1

    def measured(col: str, unit: str) -> str:
        known = [(m, v) for m, v in cards[col].items() if not _missing(v)]
        if not known:
            return "not measured"
        return "; ".join(f"{m}: {fmt_value(v, unit)}" if several else fmt_value(v, unit) for m, v in known)

    return [
        "Memory floor: the bytes read per generated token — the weights (every parameter once; an embedding table "
        "one row, unless it is tied to the output layer) and the KV cache at the mean context (prompt plus half "
        "the new tokens) — over the card's copy bandwidth, measured once per run with a device-to-device copy "
        f"(what the card achieves, not its spec sheet): {measured('bandwidth_gb_s', 'GB/s')} (GB = 10^9 bytes).",
        "Launch floor: kernel launch calls per generated token, counted by the PyTorch profiler in one generation "
        "per configuration, in a child process so that the profiler's cost never reaches a measured sample (a CUDA "
        "graph is one call), × the host time of one launch, measured once per run with "
        f"back-to-back one-element adds: {measured('launch_latency_us', 'µs')}.",
        f"Bound by: memory or launches: within {NEAR_FLOOR:g}× of that floor, the higher of the two; further "
        f"above both: host when the GPU is busy less than {HOST_BUSY_PCT:g}% of the time (Python, the framework, "
        "the engine between kernels), kernels when it is busy (kernels slower than the bandwidth allows).",
    ]
