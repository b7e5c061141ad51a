"""The paper's statistics, per machine, model and metric, across serving configurations.

Pure: takes the samples DataFrame (``results.samples_frame``) and returns an :class:`Analysis`.
No pytest, no plotting, no files.

The path for each (machine, model, metric), as in the paper's Analysis section (a "model" is a
comparison unit: the model under one load and one workload, :mod:`pytest_greenserve.analysis.loads`;
closed:1 on one workload keeps the bare model name):

* configurations marked error-prone by the consistency check are excluded (and listed);
* configurations with fewer than ``MIN_REPS`` values are left out of the comparison with a
  "not applicable" row saying so; with fewer than two configurations left nothing is tested;
* Shapiro-Wilk per configuration and Levene across them; every configuration normal →
  Welch's ANOVA + Games-Howell, otherwise Kruskal-Wallis + Dunn (Holm-adjusted);
* effect sizes: omega² (Welch) or epsilon² (Kruskal-Wallis); Hedges' g for each pair.

p-values that do not exist are ``None`` (empty in stats.csv), never NaN.

This module is the entry point (:func:`analyze`, :class:`Analysis`); the parts live in
:mod:`pytest_greenserve.analysis` (one job per module) and their public names are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis.categories import category_label, group_category
from .analysis.checks import SampleFlag, flags_by_config, sample_flags
from .analysis.effect_sizes import epsilon_squared_kw, hedges_g, omega_squared_welch
from .analysis.floats import as_float, as_numeric
from .analysis.formatting import fmt_p, fmt_value
from .analysis.guidelines import Guideline, build_guidelines
from .analysis.hypothesis import ALPHA, MIN_REPS, STATS_COLUMNS, Decision, compare, stats_row
from .analysis.loads import comparison_units, workload
from .analysis.ordering import config_sort_key, sort_configs
from .analysis.pareto import pareto_front
from .analysis.placement import placement_notes
from .analysis.sources import group_energy_source, is_estimated, row_energy_source, source_note
from .analysis.summaries import pick_energy_metric, savings_tables, summarise
from .metrics import Metric, analysed, builtin_metrics, metrics_or_builtin

__all__ = [
    # entry point and results
    "analyze", "prepare", "Analysis", "Decision", "Exclusion", "Guideline",
    # metrics (the registry: pytest_greenserve.metrics), test parameters, stats.csv layout
    "Metric", "builtin_metrics", "ALPHA", "MIN_REPS", "STATS_COLUMNS",
    # configuration order, energy sources, categories
    "config_sort_key", "sort_configs", "row_energy_source", "is_estimated", "group_energy_source", "source_note",
    "group_category", "category_label",
    # effect sizes, Pareto front, formatting, summaries
    "omega_squared_welch", "epsilon_squared_kw", "hedges_g", "pareto_front", "fmt_p", "fmt_value", "summarise",
]


# ---------------------------------------------------------------- result types

@dataclass
class Exclusion:
    machine: str
    model: str
    config: str
    reason: str


@dataclass
class Analysis:
    stats: pd.DataFrame  # stats.csv layout (STATS_COLUMNS)
    summary: pd.DataFrame  # one row per machine × model × configuration
    decisions: list[Decision]
    exclusions: list[Exclusion]
    savings: pd.DataFrame  # machine, metric, config, other, n_models, min_pct, max_pct, text, note, estimated
    category_medians: pd.DataFrame  # machine, category, config, medians of energy and time
    guidelines: list[Guideline]
    findings: dict[tuple[str, str], list[str]]  # (machine, model) -> sentences
    notes: list[str]
    machines: list[str]
    energy_metric: str = "energy_net_j"
    flags: list[SampleFlag] = None  # samples flagged unsteady or low-resolution (analysis/checks.py)

    def __post_init__(self):
        if self.flags is None:
            self.flags = []

    def decision(self, model: str, metric: str, machine: str | None = None) -> Decision | None:
        for d in self.decisions:
            if d.model == model and d.metric == metric and (machine is None or d.machine == machine):
                return d
        return None

    def rows(self, **where) -> pd.DataFrame:
        df = self.stats
        for k, v in where.items():
            df = df[df[k] == v]
        return df


# ---------------------------------------------------------------- conventions

def idle_convention_note(df: pd.DataFrame) -> str:
    """Which energy the statistics use, and how steady the idle windows were."""
    how = set(df["energy_idle_source"].dropna()) if "energy_idle_source" in df.columns else set()
    if how and all(h == "model-constant" for h in how):
        # no meter read power: the idle is the CPU power model's constant, the same in every sample
        return ("net energy (gross minus the CPU power model's idle constant times the sample's window: no meter "
                "here reads power, so no idle window was measured; estimated) is what savings, Pareto fronts and "
                "guidelines use; MLPerf Power, ML.ENERGY and AI Energy Score subtract no idle, so gross energy is "
                "in every table too")
    note = ("net energy (gross minus the idle power measured next to each sample, with its target loaded, "
            "times the sample's window) is what savings, Pareto fronts and guidelines use; MLPerf Power, "
            "ML.ENERGY and AI Energy Score subtract no idle, so gross energy is in every table too")
    if "model-constant+idle-window" in how or "model-constant" in how:
        note += "; the estimated CPU part's idle is its power model's constant, not measured"
    if "idle_power_w" in df.columns:
        idle = pd.to_numeric(df["idle_power_w"], errors="coerce").dropna()
        if len(idle) > 1:
            note += (f"; idle power ranged {idle.min():.3g}–{idle.max():.3g} W across {len(idle)} samples "
                     f"(median {idle.median():.3g} W)")
    return note


# ---------------------------------------------------------------- preparation

def error_prone_reason(g: pd.DataFrame) -> str:
    """Why one configuration's samples were excluded: its quality against torch in the same
    dtype where it was scored (quality.py), else its match rate."""
    mr = as_float(g["match_rate"].mean())
    rate = f"match rate {mr:.0%}" if mr is not None else None
    num = {c: as_float(pd.to_numeric(g[c], errors="coerce").mean()) if c in g else None
           for c in ("nll_excess_nats_per_token", "native_nll_excess_nats_per_token")}
    # the worst sample's bound: one sample beyond it makes the configuration error-prone
    num["nll_vs_native_low_nats_per_token"] = (as_float(pd.to_numeric(g["nll_vs_native_low_nats_per_token"],
                                                                      errors="coerce").max())
                                               if "nll_vs_native_low_nats_per_token" in g else None)
    if num["nll_vs_native_low_nats_per_token"] is not None and num["nll_vs_native_low_nats_per_token"] > 0:
        native = num["native_nll_excess_nats_per_token"]
        return ("outputs disagreed with the torch reference beyond torch's own in the same dtype: the fp32 "
                f"reference's NLL excess {num['nll_excess_nats_per_token']:+.3f} nats/token against torch's "
                + (f"{native:+.3f}" if native is not None else "(not scored)")
                + f", lower bootstrap bound of the difference {num['nll_vs_native_low_nats_per_token']:+.3f}"
                + (f"; {rate}" if rate else ""))
    return "outputs disagreed with the torch reference" + (f" ({rate})" if rate else "")


def prepare(df: pd.DataFrame, metrics: dict[str, Metric] | None = None) -> pd.DataFrame:
    """Normalise a samples frame: machine/config as strings, metrics and category numeric, error_prone bool."""
    df = df.copy()
    for col in ("machine", "model", "config"):
        if col not in df.columns:
            df[col] = None
    df["machine"] = df["machine"].where(df["machine"].notna(), "unknown").astype(str)
    if df["config"].isna().any() and {"engine", "provider"} <= set(df.columns):
        filled = df["engine"].astype(str) + "-" + df["provider"].astype(str)
        df["config"] = df["config"].where(df["config"].notna(), filled)
    df["config"] = df["config"].astype(str)
    df["model"] = df["model"].astype(str)
    for name in metrics_or_builtin(metrics):
        df[name] = as_numeric(df[name]) if name in df.columns else np.nan
    for col in ("match_rate", "rss_peak_mb", "gpu_mem_peak_mb", "energy_idle_j", "tokens_generated", "category"):
        df[col] = as_numeric(df[col]) if col in df.columns else np.nan
    ep = df["error_prone"] if "error_prone" in df.columns else pd.Series(False, index=df.index)
    df["error_prone"] = ep.map(
        lambda v: bool(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else False).astype(bool)
    for col in ("energy_cpu_source", "energy_gpu_source"):
        if col not in df.columns:
            df[col] = None
    return df


def workload_column(df: pd.DataFrame) -> list[str]:
    """Each sample's workload in words (analysis/loads.workload): its prompts (an open loop's
    ``requests_sent``, else ``requests``) and new tokens per request."""
    sent = df["requests_sent"] if "requests_sent" in df else pd.Series(np.nan, index=df.index)
    requests = df["requests"] if "requests" in df else pd.Series(np.nan, index=df.index)
    tokens = df["new_tokens"] if "new_tokens" in df else pd.Series(np.nan, index=df.index)
    prompts = pd.to_numeric(sent, errors="coerce").fillna(pd.to_numeric(requests, errors="coerce"))
    return [workload(p, t) for p, t in zip(prompts, pd.to_numeric(tokens, errors="coerce"))]


def unit_column(df: pd.DataFrame) -> list[str]:
    """Each sample's comparison unit (analysis/loads.py): its model under its load, and its
    workload where its machine and model hold more than one."""
    return comparison_units(zip(df["machine"], df["model"], df["config"], workload_column(df)))


# ---------------------------------------------------------------- entry point

def analyze(df: pd.DataFrame, metrics: dict[str, Metric] | None = None) -> Analysis:
    """Answer the paper's questions for the samples in ``df`` (see the module docstring).

    ``metrics``: the metric registry (None: the built-in metrics); its ``analysed`` metrics are tested.
    """
    metrics = metrics_or_builtin(metrics)
    tested = analysed(metrics)
    df = prepare(df, metrics)
    # configurations are compared only under the same load and workload: a Poisson rate's time
    # and energy are the offered load's as much as the configuration's (analysis/loads.py)
    workloads = pd.Series(workload_column(df), index=df.index)
    mixed = [(machine, model, sorted(set(w))) for (machine, model), w in
             workloads.groupby([df["machine"], df["model"]], sort=True) if w.nunique() > 1]
    df["model"] = comparison_units(zip(df["machine"], df["model"], df["config"], workloads))
    stats_rows: list[dict] = []
    decisions: list[Decision] = []
    exclusions: list[Exclusion] = []
    findings: dict[tuple[str, str], list[str]] = {}
    notes: list[str] = [f"{machine} / {model}: samples of different workloads ({', '.join(w)}), as when runs are "
                        "merged: a sample's time and energy are totals over its requests, so configurations are "
                        "compared only within one workload" for machine, model, w in mixed]
    summary = summarise(df, metrics)
    machines = list(dict.fromkeys(df["machine"]))
    if df.empty:
        notes.append("no samples: nothing to analyse")

    for (machine, model), g in df.groupby(["machine", "model"], sort=True):
        words = findings.setdefault((machine, model), [])
        bad = sort_configs(g.loc[g["error_prone"], "config"])
        for c in bad:
            exclusions.append(Exclusion(machine, model, c, error_prone_reason(g[g["config"] == c])))
        if bad:
            words.append("Excluded as error-prone: " + ", ".join(bad) + " (outputs disagreed with the torch reference).")
        good = g[~g["error_prone"]]
        # per energy source (total, cpu, gpu...): configuration -> source label
        sources = {which: {c: group_energy_source(gc, which) for c, gc in good.groupby("config")}
                   for which in dict.fromkeys(["total", *(m.energy_source for m in tested if m.energy_source)])}
        for metric in tested:
            srcs = sources[metric.energy_source or "total"]
            if good.empty:
                reason = "every configuration of this model was error-prone (outputs disagreed with torch); nothing to compare"
                stats_rows.append(stats_row(machine=machine, model=model, metric=metric.name, test="omnibus",
                                            applicable=False, path="not applicable", reason=reason))
                decisions.append(Decision(machine, model, metric.name, "not applicable", reason))
                continue
            data = pd.DataFrame({"config": good["config"], "value": good[metric.name]})
            rows, decision, w = compare(machine, model, metric, data, srcs)
            stats_rows += rows
            decisions.append(decision)
            words += w
        if good.empty:
            words.append("No comparison: every configuration of this model was error-prone.")

    flags = sample_flags(df[~df["error_prone"]], metrics)  # an excluded configuration is not compared at all
    stats_rows = _flag_rows(stats_rows, flags)
    for f in flags:
        notes.append(f"{f.machine} / {f.model}: {f.config} {f.text}")
    notes += placement_notes(df)  # the ONNX placement audit: nodes per provider, not fully on CUDA
    marks = flags_by_config(flags)
    if not summary.empty:
        # object dtype: pandas 3 would make a string column whose missing values are NaN ("flagged: nan")
        summary["flags"] = pd.Series([marks.get((r.machine, r.model, r.config)) for r in summary.itertuples()],
                                     index=summary.index, dtype=object)
    stats = pd.DataFrame(stats_rows, columns=STATS_COLUMNS, dtype=object)
    stats = stats.where(stats.notna(), None)

    valid = summary[~summary["error_prone"]].copy() if not summary.empty else summary
    energy_metric = pick_energy_metric(valid) if not valid.empty else "energy_net_j"
    if energy_metric != "energy_net_j":
        notes.append("net energy was not recorded; savings, Pareto fronts and guidelines use gross energy")
    else:
        notes.append(idle_convention_note(df))
    # per-sample medians per category need the samples, not per-model medians
    cat_samples = df[~df["error_prone"]].copy()
    cat_samples["category"] = cat_samples["model"].map(df.groupby("model")["category"].agg(group_category))
    if not valid.empty:
        for metric in (m.name for m in tested):
            med = cat_samples.groupby(["machine", cat_samples["category"].map(category_label), "config"])[metric].median()
            valid[f"_samples_{metric}"] = [
                med.get((r.machine, category_label(r.category), r.config)) for r in valid.itertuples()]
        savings, cat_medians = savings_tables(valid, energy_metric, metrics)
        valid = valid.drop(columns=[c for c in valid.columns if c.startswith("_samples_")])
        guidelines = build_guidelines(valid, stats, energy_metric, metrics)
    else:
        savings, cat_medians = savings_tables(valid, energy_metric, metrics)
        guidelines = []
        if not df.empty:
            notes.append("every configuration was error-prone or no samples remain: no savings or guidelines")
    for metric in tested:
        if df[metric.name].isna().all() and not df.empty:
            notes.append(f"{metric.label} ({metric.name}) was not recorded in any sample; its tests are skipped")
    if len(machines) > 1:
        notes.append("samples from several machines: each machine is analysed on its own ("
                     + ", ".join(machines) + ")")
    return Analysis(stats=stats, summary=summary, decisions=decisions, exclusions=exclusions, savings=savings,
                    category_medians=cat_medians, guidelines=guidelines,
                    findings=findings, notes=notes, machines=machines, energy_metric=energy_metric, flags=flags)


def _flag_rows(rows: list[dict], flags: list[SampleFlag]) -> list[dict]:
    """One stats.csv row per flagged (machine, model, configuration, flag), and the flag noted on
    every row that compares that configuration (its pairs, and the omnibus/Levene rows)."""
    if not flags:
        return rows
    by_group: dict[tuple[str, str], dict[str, list[str]]] = {}
    for f in flags:
        by_group.setdefault((f.machine, f.model), {}).setdefault(f.config, []).append(
            f"{f.n_flagged}/{f.n} {f.flag.replace('_', '-')}")
    for r in rows:
        flagged = by_group.get((r["machine"], r["model"]))
        if not flagged:
            continue
        involved = [c for c in (r.get("config_a"), r.get("config_b")) if c]
        hit = [c for c in (involved or list(flagged)) if c in flagged]
        if hit:
            words = "flagged samples: " + "; ".join(f"{c} {', '.join(flagged[c])}" for c in hit)
            r["note"] = f"{r['note']}; {words}" if r.get("note") else words
    for f in flags:
        rows.append(stats_row(machine=f.machine, model=f.model, metric="", test=f.flag, config_a=f.config,
                              n=f.n_flagged, significant=None, applicable=False, path="sample check",
                              reason=f.text))
    return rows
