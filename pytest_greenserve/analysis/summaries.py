"""Per-configuration medians, the paper's savings ranges and the per-size-category medians (Tables 4 and 5)."""

from __future__ import annotations

import pandas as pd

from .categories import category_label, group_category
from .floats import as_float
from .formatting import pct_text
from .metrics import Metric, analysed
from .ordering import config_sort_key, sort_configs
from .sources import group_energy_source, is_estimated, source_note


#: the quality figures of a configuration (quality.py): mean NLL excess over the fp32 reference's
#: own output, the native path's (torch in the same dtype), and whether every sample was matched
QUALITY_SUMMARY = ["nll_excess_nats_per_token", "native_nll_excess_nats_per_token", "quality_matched"]


def quality_summary(g: pd.DataFrame) -> dict:
    """A configuration's quality figures: the means over its samples; ``quality_matched`` False
    when any sample was not, True when every scored sample was, None when none was scored."""
    out = {c: (as_float(pd.to_numeric(g[c], errors="coerce").mean()) if c in g else None)
           for c in QUALITY_SUMMARY[:2]}
    verdicts = [bool(v) for v in g["quality_matched"] if not pd.isna(v)] if "quality_matched" in g else []
    out["quality_matched"] = None if not verdicts else all(verdicts)
    return out


def summarise(df: pd.DataFrame, metrics: dict[str, Metric] | None = None) -> pd.DataFrame:
    """One row per machine × model × configuration: medians of the analysed metrics (registry order)."""
    names = [m.name for m in analysed(metrics)]
    out = []
    category = df.groupby("model", sort=False)["category"].agg(group_category) if "category" in df else {}
    for (machine, model, config), g in df.groupby(["machine", "model", "config"], sort=False):
        row = dict(machine=machine, model=model, config=config, category=category.get(model),
                   n=len(g), error_prone=bool(g["error_prone"].any()),
                   match_rate=as_float(g["match_rate"].mean()),
                   match_rate_tie_aware=(as_float(pd.to_numeric(g["match_rate_tie_aware"], errors="coerce").mean())
                                         if "match_rate_tie_aware" in g else None),
                   **quality_summary(g),
                   energy_source=group_energy_source(g, "total"),
                   energy_cpu_source=group_energy_source(g, "cpu"),
                   energy_gpu_source=group_energy_source(g, "gpu"))
        for name in names:
            row[name] = as_float(g[name].median())
        for col in ("rss_peak_mb", "gpu_mem_peak_mb", "energy_idle_j"):
            row[col] = as_float(g[col].median())
        row["estimated"] = is_estimated(row["energy_source"])
        out.append(row)
    cols = ["machine", "model", "config", "category", "n", "error_prone", "match_rate", "match_rate_tie_aware",
            *QUALITY_SUMMARY, "energy_source",
            "energy_cpu_source", "energy_gpu_source", "estimated"] + names + \
        ["rss_peak_mb", "gpu_mem_peak_mb", "energy_idle_j"]
    s = pd.DataFrame(out, columns=cols)
    if not s.empty:
        s["_k"] = s["config"].map(config_sort_key)
        s = s.sort_values(["machine", "model", "_k"]).drop(columns="_k").reset_index(drop=True)
    return s


def pick_energy_metric(summary: pd.DataFrame) -> str:
    for name in ("energy_net_j", "energy_total_j"):
        if name in summary and summary[name].notna().any():
            return name
    return "energy_net_j"


def savings_tables(valid: pd.DataFrame, energy_metric: str,
                   metrics: dict[str, Metric] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per machine: the paper's 'X% to Y% less' ranges across models, and per-category medians.

    The category medians are of the per-sample values (``_samples_<metric>`` columns of
    ``valid``), for every analysed metric.
    """
    names = [m.name for m in analysed(metrics)]
    sav_rows, cat_rows = [], []
    for machine, m in valid.groupby("machine", sort=False):
        for metric in (energy_metric, "time_s"):
            configs = sort_configs(m["config"])
            for a in configs:
                for b in configs:
                    if a == b:
                        continue
                    pcts, models, srcs = [], [], {}
                    for model, g in m.groupby("model"):
                        ra, rb = g[g["config"] == a], g[g["config"] == b]
                        if ra.empty or rb.empty:
                            continue
                        va, vb = ra[metric].iloc[0], rb[metric].iloc[0]
                        if va is None or vb is None or pd.isna(va) or pd.isna(vb) or vb == 0:
                            continue
                        pcts.append((vb - va) / vb * 100.0)
                        models.append(model)
                        srcs[a], srcs[b] = ra["energy_source"].iloc[0], rb["energy_source"].iloc[0]
                    if not pcts:
                        continue
                    lo, hi = min(pcts), max(pcts)
                    estimated = metric != "time_s" and any(is_estimated(x) for x in srcs.values())
                    what = "time" if metric == "time_s" else ("estimated energy" if estimated else "energy")
                    if lo >= 0:
                        text = f"{a} uses from {pct_text(lo)} up to {pct_text(hi)} less {what} than {b}"
                    elif hi <= 0:
                        text = f"{a} uses from {pct_text(-hi)} up to {pct_text(-lo)} more {what} than {b}"
                    else:
                        text = (f"{a} uses from {pct_text(-lo)} more up to {pct_text(hi)} less {what} than {b}"
                                " (depends on the model)")
                    text += f" ({len(pcts)} model{'s' if len(pcts) != 1 else ''})"
                    note = source_note(srcs) if metric != "time_s" else ""
                    sav_rows.append(dict(machine=machine, metric=metric, config=a, other=b, n_models=len(pcts),
                                         min_pct=lo, max_pct=hi, models=",".join(models), text=text, note=note,
                                         estimated=estimated))
        # Tables 4 and 5: per size-category medians of the per-sample values
        for cat_key, g in m.groupby(m["category"].map(category_label), sort=True):
            med = {}
            for config, gc in g.groupby("config"):
                med[config] = dict(machine=machine, category=cat_key, config=config, models=gc["model"].nunique())
                for metric in names:
                    med[config][metric] = (as_float(gc[f"_samples_{metric}"].iloc[0])
                                           if f"_samples_{metric}" in gc else None)
                med[config]["energy_source"] = " / ".join(sorted({s for s in gc["energy_source"] if s})) or None
                med[config]["estimated"] = any(is_estimated(s) for s in gc["energy_source"] if s)
                cat_rows.append(med[config])
    sav = pd.DataFrame(sav_rows, columns=["machine", "metric", "config", "other", "n_models", "min_pct", "max_pct",
                                          "models", "text", "note", "estimated"])
    cat = pd.DataFrame(cat_rows)
    if not cat.empty:
        cat["_k"] = cat["config"].map(config_sort_key)
        cat = cat.sort_values(["machine", "category", "_k"]).drop(columns="_k").reset_index(drop=True)
    return sav, cat
