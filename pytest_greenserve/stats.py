"""The paper's statistics, per machine, model and metric, across serving configurations.

Pure: takes the samples DataFrame (``results.samples_frame``) and returns an :class:`Analysis`.
No pytest, no plotting, no files.

The path for each (machine, model, metric), as in the paper's Analysis section:

* configurations marked error-prone by the consistency check are excluded (and listed);
* configurations with fewer than ``MIN_REPS`` values are left out of the comparison with a
  "not applicable" row saying so; with fewer than two configurations left nothing is tested;
* Shapiro-Wilk per configuration and Levene across them; every configuration normal →
  Welch's ANOVA + Games-Howell, otherwise Kruskal-Wallis + Dunn (Holm-adjusted);
* effect sizes: omega² (Welch) or epsilon² (Kruskal-Wallis); Hedges' g for each pair.

p-values that do not exist are ``None`` (empty in stats.csv), never NaN.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

ALPHA = 0.05
MIN_REPS = 3


@dataclass(frozen=True)
class Metric:
    name: str  # column in the samples
    label: str  # words, e.g. "net energy"
    unit: str
    kind: str  # energy | time | use
    source: str | None = None  # cpu | gpu | total: which energy sources feed it


METRICS: list[Metric] = [
    Metric("energy_net_j", "net energy", "J", "energy", "total"),
    Metric("energy_total_j", "gross energy", "J", "energy", "total"),
    Metric("energy_cpu_j", "gross CPU energy", "J", "energy", "cpu"),
    Metric("energy_gpu_j", "gross GPU energy", "J", "energy", "gpu"),
    Metric("time_s", "time", "s", "time"),
    Metric("j_per_token", "energy per token", "J/token", "energy", "total"),
    Metric("ms_per_token", "time per token", "ms/token", "time"),
    Metric("ttft_mean_s", "time to first token", "s", "time"),
    Metric("cpu_pct", "CPU use", "%", "use"),
    Metric("ram_pct", "RAM use", "%", "use"),
    Metric("gpu_pct", "GPU use", "%", "use"),
    Metric("gpu_mem_util_pct", "GPU memory utilisation", "%", "use"),
    Metric("gpu_mem_used_pct", "GPU memory used", "%", "use"),
]
METRIC_BY_NAME = {m.name: m for m in METRICS}
# Resource metrics behind the resource-constrained guideline (lower is better).
RESOURCE_METRICS = ["ram_pct", "cpu_pct", "gpu_mem_used_pct"]

STATS_COLUMNS = [
    "machine", "model", "metric", "test", "config_a", "config_b", "n", "statistic_name", "statistic",
    "df1", "df2", "p_value", "p_adjust", "effect_name", "effect_size", "center_a", "center_b",
    "significant", "applicable", "path", "reason", "energy_source", "note",
]

_ENGINE_ORDER = {"torch": 0, "onnx": 1, "openvino": 2, "jit": 3}
_PROVIDER_ORDER = {"cpu": 0, "cuda": 1}


def config_sort_key(name: str):
    engine, _, provider = str(name).rpartition("-")
    return (_PROVIDER_ORDER.get(provider, 9), _ENGINE_ORDER.get(engine, 9), str(name))


def sort_configs(names) -> list[str]:
    return sorted({str(n) for n in names}, key=config_sort_key)


# ---------------------------------------------------------------- energy sources

def _src(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def row_energy_source(row, which: str = "total") -> str | None:
    """The source label of one sample's energy: ``rapl``, ``estimated-cpu-time+nvml-counter``..."""
    cpu, gpu = _src(row.get("energy_cpu_source")), _src(row.get("energy_gpu_source"))
    parts = {"cpu": [cpu], "gpu": [gpu], "total": [cpu, gpu]}[which]
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


# ---------------------------------------------------------------- small helpers

def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def omega_squared_welch(F: float, df1: float, n_total: int) -> float:
    """Estimated omega² for Welch's ANOVA: df1(F-1) / (df1(F-1) + N), floored at 0."""
    num = df1 * (F - 1.0)
    return max(0.0, num / (num + n_total)) if (num + n_total) > 0 else 0.0


def epsilon_squared_kw(H: float, n_total: int) -> float:
    """Epsilon² for Kruskal-Wallis: H / ((N² - 1) / (N + 1)) = H / (N - 1)."""
    return H / (n_total - 1) if n_total > 1 else float("nan")


def hedges_g(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return None
    pooled = math.sqrt(((nx - 1) * x.var(ddof=1) + (ny - 1) * y.var(ddof=1)) / (nx + ny - 2))
    if pooled == 0:
        return None
    d = (x.mean() - y.mean()) / pooled
    return float(d * (1 - 3 / (4 * (nx + ny) - 9)))


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (energy, time) no other point beats on both (ties on both count as not beaten)."""
    front = []
    for name, (e, t) in points.items():
        dominated = any(
            (e2 <= e and t2 <= t) and (e2 < e or t2 < t)
            for other, (e2, t2) in points.items() if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


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


def _pct_text(x: float) -> str:
    return f"{x:.2f}%"


# ---------------------------------------------------------------- result types

@dataclass
class Decision:
    machine: str
    model: str
    metric: str
    path: str  # "welch+games-howell" | "kruskal+dunn-holm" | "not applicable"
    reason: str
    configs: list[str] = field(default_factory=list)


@dataclass
class Exclusion:
    machine: str
    model: str
    config: str
    reason: str


@dataclass
class Guideline:
    shape: str  # energy-constrained | latency-constrained | resource-constrained
    machine: str
    best_config: str | None
    per_model: dict[str, str]
    evidence: list[str]
    caveats: list[str] = field(default_factory=list)

    @property
    def headline(self) -> str:
        if not self.best_config:
            return f"{self.shape}: no recommendation ({'; '.join(self.caveats) or 'no data'})"
        return f"{self.shape}: use {self.best_config}"


@dataclass
class Analysis:
    stats: pd.DataFrame  # stats.csv layout (STATS_COLUMNS)
    summary: pd.DataFrame  # one row per machine × model × configuration
    decisions: list[Decision]
    exclusions: list[Exclusion]
    savings: pd.DataFrame  # machine, metric, config, other, n_models, min_pct, max_pct, text, note
    category_medians: pd.DataFrame  # machine, category, config, medians of energy and time
    category_savings: pd.DataFrame  # machine, category, metric, config, other, saving_pct
    guidelines: list[Guideline]
    findings: dict[tuple[str, str], list[str]]  # (machine, model) -> sentences
    notes: list[str]
    machines: list[str]
    energy_metric: str = "energy_net_j"

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


# ---------------------------------------------------------------- preparation

def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Normalise a samples frame: machine/config as strings, metrics numeric, error_prone bool."""
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
    for m in METRICS:
        df[m.name] = _numeric(df[m.name]) if m.name in df.columns else np.nan
    for col in ("match_rate", "rss_peak_mb", "gpu_mem_peak_mb", "energy_idle_j", "tokens_generated"):
        df[col] = _numeric(df[col]) if col in df.columns else np.nan
    ep = df["error_prone"] if "error_prone" in df.columns else pd.Series(False, index=df.index)
    df["error_prone"] = ep.map(
        lambda v: bool(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else False).astype(bool)
    for col in ("energy_cpu_source", "energy_gpu_source"):
        if col not in df.columns:
            df[col] = None
    return df


def model_category(model: str):
    from .models import REGISTRY

    spec = REGISTRY.get(model)
    return spec.category if spec else None


def category_label(cat) -> str:
    return f"category {int(cat)}" if cat is not None and not (isinstance(cat, float) and math.isnan(cat)) \
        else "uncategorised"


# ---------------------------------------------------------------- the tests

def _row(**kw) -> dict:
    row = {c: None for c in STATS_COLUMNS}
    row.update(kw)
    return row


def _compare(machine: str, model: str, metric: Metric, data: pd.DataFrame,
             sources: dict[str, str | None]) -> tuple[list[dict], Decision, list[str]]:
    """All rows for one (machine, model, metric); data has columns config and value (non-error-prone)."""
    import pingouin as pg

    base = dict(machine=machine, model=model, metric=metric.name)
    rows: list[dict] = []
    words: list[str] = []
    energy_source = None
    note = ""
    if metric.source:
        sub = {c: s for c, s in sources.items() if c in set(data["config"])}
        energy_source = " | ".join(f"{c}: {s or 'unknown'}" for c, s in sub.items()) or None
        note = source_note(sub)
    base.update(energy_source=energy_source)

    def not_applicable(test: str, reason: str, **kw):
        rows.append(_row(**base, test=test, applicable=False, path="not applicable", reason=reason,
                         note=note or None, **kw))

    data = data.dropna(subset=["value"])
    configs = sort_configs(data["config"])
    if data.empty:
        reason = f"no {metric.label} values were recorded for this model (the meter did not run here)"
        not_applicable("omnibus", reason)
        return rows, Decision(machine, model, metric.name, "not applicable", reason), words

    groups = {c: data.loc[data["config"] == c, "value"].to_numpy(float) for c in configs}
    small = [c for c, v in groups.items() if len(v) < MIN_REPS]
    for c in small:
        not_applicable("shapiro", f"{c} has {len(groups[c])} repetition(s); at least {MIN_REPS} are needed",
                       config_a=c, n=len(groups[c]))
    kept = [c for c in configs if c not in small]
    left_out = ""
    if small:
        left_out = "left out (fewer than %d repetitions): %s" % (
            MIN_REPS, ", ".join(f"{c} (n={len(groups[c])})" for c in small))
    if len(configs) == 1:
        reason = f"only one configuration ({configs[0]}) ran for this model; nothing to compare"
    elif len(kept) < 2:
        reason = (f"fewer than two configurations have at least {MIN_REPS} repetitions ("
                  + ", ".join(f"{c}: n={len(groups[c])}" for c in configs) + ")")
    else:
        reason = ""
    if reason:
        not_applicable("omnibus", reason, n=int(sum(len(v) for v in groups.values())))
        return rows, Decision(machine, model, metric.name, "not applicable", reason, configs), words

    sub = data[data["config"].isin(kept)].copy()
    sub["config"] = pd.Categorical(sub["config"], categories=kept)
    groups = {c: groups[c] for c in kept}
    n_total = int(sum(len(v) for v in groups.values()))
    note_all = "; ".join(x for x in (note, left_out) if x) or None
    base_rows = dict(base, note=note_all)

    all_values = np.concatenate(list(groups.values()))
    if np.ptp(all_values) == 0:
        reason = f"every value is identical ({fmt_value(float(all_values[0]), metric.unit)}); no test can separate the configurations"
        rows.append(_row(**base_rows, test="omnibus", applicable=False, path="not applicable", reason=reason, n=n_total))
        words.append(f"{metric.label}: the same in every configuration ({reason}).")
        return rows, Decision(machine, model, metric.name, "not applicable", reason, kept), words

    # --- assumptions
    normal = {}
    constant = [c for c, v in groups.items() if np.ptp(v) == 0]
    for c, v in groups.items():
        if c in constant:
            normal[c] = False
            rows.append(_row(**base_rows, test="shapiro", config_a=c, n=len(v), applicable=False,
                             reason="constant values; normality cannot be assessed (treated as not normal)"))
            continue
        # scipy directly: pingouin.normality refuses n == 3, which Shapiro-Wilk (and the paper) allow
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = scipy_stats.shapiro(v)
        W, p = _num(res.statistic), _num(res.pvalue)
        normal[c] = p is not None and p > ALPHA
        rows.append(_row(**base_rows, test="shapiro", config_a=c, n=len(v), statistic_name="W", statistic=W,
                         p_value=p, significant=(p is not None and p <= ALPHA), applicable=True,
                         reason="normal" if normal[c] else "not normal"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lev = pg.homoscedasticity(sub, dv="value", group="config", method="levene")
    lw, lp = _num(lev["W"].iloc[0]), _num(lev["pval"].iloc[0])
    equal_var = lp is not None and lp > ALPHA
    rows.append(_row(**base_rows, test="levene", n=n_total, statistic_name="W", statistic=lw, p_value=lp,
                     df1=len(kept) - 1, df2=n_total - len(kept), significant=(lp is not None and lp <= ALPHA),
                     applicable=lp is not None,
                     reason=("equal variances" if equal_var else "unequal variances") if lp is not None
                     else "Levene's test is undefined here (zero spread)"))

    not_normal = [c for c in kept if not normal[c]]
    var_words = ("variances equal by Levene" if equal_var else
                 "variances unequal by Levene, which Welch's ANOVA tolerates") if lp is not None else \
        "Levene undefined"
    if not not_normal:
        path = "welch+games-howell"
        why = f"Shapiro-Wilk: every configuration is normal (p > {ALPHA}); {var_words}"
    else:
        path = "kruskal+dunn-holm"
        why = ("Shapiro-Wilk: not normal in " + ", ".join(not_normal) + f" (p ≤ {ALPHA} or constant)")
    decision = Decision(machine, model, metric.name, path, why, kept)
    centers = {c: (float(np.mean(v)) if path.startswith("welch") else float(np.median(v))) for c, v in groups.items()}
    center_name = "mean" if path.startswith("welch") else "median"

    # --- omnibus
    if path.startswith("welch"):
        res = pg.welch_anova(data=sub, dv="value", between="config")
        F, p = _num(res["F"].iloc[0]), _num(res["p_unc"].iloc[0])
        df1, df2 = _num(res["ddof1"].iloc[0]), _num(res["ddof2"].iloc[0])
        eff = omega_squared_welch(F, df1, n_total) if F is not None else None
        omni = _row(**base_rows, test="welch_anova", n=n_total, statistic_name="F", statistic=F, df1=df1, df2=df2,
                    p_value=p, effect_name="omega2", effect_size=eff, applicable=p is not None, path=path, reason=why)
        stat_text = f"Welch's ANOVA F({df1:.0f}, {df2:.1f}) = {F:.2f}" if F is not None else "Welch's ANOVA"
        eff_text = f"ω² = {eff:.2f}" if eff is not None else ""
    else:
        res = pg.kruskal(data=sub, dv="value", between="config")
        H, p = _num(res["H"].iloc[0]), _num(res["p_unc"].iloc[0])
        df1 = _num(res["ddof1"].iloc[0])
        eff = _num(epsilon_squared_kw(H, n_total)) if H is not None else None
        omni = _row(**base_rows, test="kruskal", n=n_total, statistic_name="H", statistic=H, df1=df1,
                    p_value=p, effect_name="epsilon2", effect_size=eff, applicable=p is not None, path=path, reason=why)
        stat_text = f"Kruskal-Wallis H({df1:.0f}) = {H:.2f}" if H is not None else "Kruskal-Wallis"
        eff_text = f"ε² = {eff:.2f}" if eff is not None else ""
    omni["significant"] = p is not None and p <= ALPHA
    if p is None:
        omni["reason"] = why + "; the test returned no p-value"
    rows.append(omni)

    # --- post-hoc pairs
    pairs: list[dict] = []
    if path.startswith("welch"):
        gh = pg.pairwise_gameshowell(data=sub, dv="value", between="config")
        for r in gh.to_dict("records"):
            a, b = str(r["A"]), str(r["B"])
            pairs.append(_row(**base_rows, test="games_howell", config_a=a, config_b=b,
                              n=len(groups[a]) + len(groups[b]), statistic_name="T", statistic=_num(r["T"]),
                              df1=_num(r["df"]), p_value=_num(r["pval"]), p_adjust="games-howell",
                              effect_name="hedges_g", effect_size=hedges_g(groups[a], groups[b]),
                              center_a=centers[a], center_b=centers[b], applicable=True, path=path))
    else:
        import scikit_posthocs as sp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dunn = sp.posthoc_dunn(sub.assign(config=sub["config"].astype(str)), val_col="value",
                                   group_col="config", p_adjust="holm")
        for i, a in enumerate(kept):
            for b in kept[i + 1:]:
                pairs.append(_row(**base_rows, test="dunn", config_a=a, config_b=b,
                                  n=len(groups[a]) + len(groups[b]), statistic_name="", p_value=_num(dunn.loc[a, b]),
                                  p_adjust="holm", effect_name="hedges_g", effect_size=hedges_g(groups[a], groups[b]),
                                  center_a=centers[a], center_b=centers[b], applicable=True, path=path))
    for r in pairs:
        r["significant"] = r["p_value"] is not None and r["p_value"] <= ALPHA
        r["applicable"] = r["p_value"] is not None
        if r["p_value"] is None:
            r["reason"] = "the post-hoc test returned no p-value"
    rows += pairs

    # --- words
    est = " (estimated energy)" if metric.source and any(is_estimated(sources.get(c)) for c in kept) else ""
    mixed = " [energy sources differ across configurations]" if metric.source and \
        len({sources.get(c) or "unknown" for c in kept}) > 1 else ""
    post = "Games-Howell" if path.startswith("welch") else "Dunn, Holm-adjusted"
    if omni["significant"]:
        chosen = "every configuration normal" if path.startswith("welch") else "not normal"
        words.append(f"{metric.label}{est}: differs significantly across configurations ({stat_text}, {fmt_p(p)}, "
                     f"{eff_text}; {chosen}).{mixed}")
    else:
        words.append(f"{metric.label}{est}: no significant difference across configurations "
                     f"({stat_text}, {fmt_p(p)}).{mixed}")
    for r in pairs:
        if not r["significant"]:
            continue
        a, b = r["config_a"], r["config_b"]
        hi, lo = (a, b) if centers[a] >= centers[b] else (b, a)
        words.append(f"  {hi} {_verb(metric, True)} {lo} ({center_name} {fmt_value(centers[hi], metric.unit)} "
                     f"vs {fmt_value(centers[lo], metric.unit)}; {post} {fmt_p(r['p_value'])}"
                     + (f", g = {abs(r['effect_size']):.2f}" if r["effect_size"] is not None else "") + ")." + mixed)
    return rows, decision, words


def _verb(metric: Metric, higher: bool) -> str:
    if metric.kind == "time":
        return ("is significantly slower than" if higher else "is significantly faster than") if metric.name == "time_s" \
            else f"has a significantly {'longer' if higher else 'shorter'} {metric.label} than"
    if metric.kind == "energy":
        return f"uses significantly {'more' if higher else 'less'} {metric.label} than"
    return f"has significantly {'higher' if higher else 'lower'} {metric.label} than"


# ---------------------------------------------------------------- summaries

def _summary(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (machine, model, config), g in df.groupby(["machine", "model", "config"], sort=False):
        row = dict(machine=machine, model=model, config=config, category=model_category(model),
                   n=len(g), error_prone=bool(g["error_prone"].any()),
                   match_rate=_num(g["match_rate"].mean()),
                   energy_source=group_energy_source(g, "total"),
                   energy_cpu_source=group_energy_source(g, "cpu"),
                   energy_gpu_source=group_energy_source(g, "gpu"))
        for m in METRICS:
            row[m.name] = _num(g[m.name].median())
        for col in ("rss_peak_mb", "gpu_mem_peak_mb", "energy_idle_j"):
            row[col] = _num(g[col].median())
        row["estimated"] = is_estimated(row["energy_source"])
        out.append(row)
    cols = ["machine", "model", "config", "category", "n", "error_prone", "match_rate", "energy_source",
            "energy_cpu_source", "energy_gpu_source", "estimated"] + [m.name for m in METRICS] + \
        ["rss_peak_mb", "gpu_mem_peak_mb", "energy_idle_j"]
    s = pd.DataFrame(out, columns=cols)
    if not s.empty:
        s["_k"] = s["config"].map(config_sort_key)
        s = s.sort_values(["machine", "model", "_k"]).drop(columns="_k").reset_index(drop=True)
    return s


def _pick_energy_metric(summary: pd.DataFrame) -> str:
    for name in ("energy_net_j", "energy_total_j"):
        if name in summary and summary[name].notna().any():
            return name
    return "energy_net_j"


def _savings(valid: pd.DataFrame, energy_metric: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per machine: the paper's 'X% to Y% less' ranges across models, and per-category medians."""
    sav_rows, cat_rows, cat_sav = [], [], []
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
                    what = "energy" if metric != "time_s" else "time"
                    if lo >= 0:
                        text = f"{a} uses from {_pct_text(lo)} up to {_pct_text(hi)} less {what} than {b}"
                    elif hi <= 0:
                        text = f"{a} uses from {_pct_text(-hi)} up to {_pct_text(-lo)} more {what} than {b}"
                    else:
                        text = (f"{a} uses from {_pct_text(-lo)} more up to {_pct_text(hi)} less {what} than {b}"
                                " (depends on the model)")
                    text += f" ({len(pcts)} model{'s' if len(pcts) != 1 else ''})"
                    note = source_note(srcs) if metric != "time_s" else ""
                    sav_rows.append(dict(machine=machine, metric=metric, config=a, other=b, n_models=len(pcts),
                                         min_pct=lo, max_pct=hi, models=",".join(models), text=text, note=note))
        # Tables 4 and 5: per size-category medians of the per-sample values
        for cat_key, g in m.groupby(m["category"].map(category_label), sort=True):
            med = {}
            for config, gc in g.groupby("config"):
                med[config] = dict(machine=machine, category=cat_key, config=config, models=gc["model"].nunique())
                for metric in ("energy_net_j", "energy_total_j", "energy_cpu_j", "energy_gpu_j", "time_s",
                               "j_per_token", "ms_per_token"):
                    med[config][metric] = _num(gc[f"_samples_{metric}"].iloc[0]) if f"_samples_{metric}" in gc else None
                med[config]["energy_source"] = " / ".join(sorted({s for s in gc["energy_source"] if s})) or None
                med[config]["estimated"] = any(is_estimated(s) for s in gc["energy_source"] if s)
                cat_rows.append(med[config])
            for metric in (energy_metric, "time_s"):
                for a in med:
                    for b in med:
                        va, vb = med[a].get(metric), med[b].get(metric)
                        if a == b or va is None or vb is None or vb == 0:
                            continue
                        cat_sav.append(dict(machine=machine, category=cat_key, metric=metric, config=a, other=b,
                                            saving_pct=(vb - va) / vb * 100.0))
    sav = pd.DataFrame(sav_rows, columns=["machine", "metric", "config", "other", "n_models", "min_pct", "max_pct",
                                          "models", "text", "note"])
    cat = pd.DataFrame(cat_rows)
    if not cat.empty:
        cat["_k"] = cat["config"].map(config_sort_key)
        cat = cat.sort_values(["machine", "category", "_k"]).drop(columns="_k").reset_index(drop=True)
    return sav, cat, pd.DataFrame(cat_sav, columns=["machine", "category", "metric", "config", "other", "saving_pct"])


def _pair_p(stats: pd.DataFrame, machine, model, metric, a, b):
    r = stats[(stats["machine"] == machine) & (stats["model"] == model) & (stats["metric"] == metric)
              & (stats["test"].isin(["games_howell", "dunn"]))
              & (((stats["config_a"] == a) & (stats["config_b"] == b)) | ((stats["config_a"] == b) & (stats["config_b"] == a)))]
    if r.empty:
        return None, None
    return r["p_value"].iloc[0], r["test"].iloc[0]


def _not_tested_reason(stats: pd.DataFrame, machine, model, metric) -> str:
    r = stats[(stats["machine"] == machine) & (stats["model"] == model) & (stats["metric"] == metric)
              & (stats["test"] == "omnibus")]
    return str(r["reason"].iloc[0]) if not r.empty and r["reason"].iloc[0] else "see the statistics table"


def _guidelines(valid: pd.DataFrame, stats: pd.DataFrame, energy_metric: str) -> list[Guideline]:
    out = []
    shapes = [("energy-constrained", [energy_metric], "lowest median energy"),
              ("latency-constrained", ["time_s"], "lowest median time"),
              ("resource-constrained", RESOURCE_METRICS, "lowest mean rank of RAM, CPU and GPU-memory use")]
    for machine, m in valid.groupby("machine", sort=False):
        for shape, metrics, rule in shapes:
            per_model, evidence, caveats, ranks = {}, [], [], {}
            for model, g in m.groupby("model", sort=True):
                # rank only on metrics every configuration has (GPU memory is absent on CPU runs)
                usable = [x for x in metrics if g[x].notna().all()] or [x for x in metrics if g[x].notna().any()]
                if not usable:
                    caveats.append(f"{model}: no " + ", ".join(METRIC_BY_NAME[x].label for x in metrics) + " recorded")
                    continue
                rank = pd.concat([g.set_index("config")[x].rank(method="average") for x in usable], axis=1).mean(axis=1)
                rank = rank.dropna()
                if rank.empty:
                    continue
                ordered = sorted(rank.index, key=lambda c: (rank[c], config_sort_key(c)))
                best = ordered[0]
                per_model[model] = best
                for c in rank.index:
                    ranks.setdefault(c, []).append(rank[c])
                if len(ordered) == 1:
                    evidence.append(f"{model}: {best} is the only configuration measured")
                    continue
                second = ordered[1]
                key = usable[0]
                gi = g.set_index("config")
                vb, vs = gi.loc[best, key], gi.loc[second, key]
                metric = METRIC_BY_NAME[key]
                p, test = _pair_p(stats, machine, model, key, best, second)
                est = " (estimated)" if metric.source and (gi.loc[best, "estimated"] or gi.loc[second, "estimated"]) else ""
                if p is not None and not pd.isna(p):
                    sig = (f"significantly lower ({'Games-Howell' if test == 'games_howell' else 'Dunn-Holm'} {fmt_p(p)})"
                           if p <= ALPHA else f"not significantly different ({fmt_p(p)})")
                else:
                    sig = "not tested: " + _not_tested_reason(stats, machine, model, key)
                diff = ""
                if pd.notna(vb) and pd.notna(vs) and vs:
                    change = (vs - vb) / vs * 100
                    # the resource rule ranks several metrics, so its pick can be higher on this one
                    diff = f", {change:.1f}% less" if change >= 0 else f", {-change:.1f}% more"
                    if change < 0:
                        sig = sig.replace("significantly lower", "significantly higher")
                evidence.append(f"{model}: {best} — median {metric.label}{est} {fmt_value(vb, metric.unit)} vs "
                                f"{fmt_value(vs, metric.unit)} for the runner-up {second}{diff}; {sig}")
            if ranks:
                wins = pd.Series(per_model).value_counts()
                best_config = sorted(ranks, key=lambda c: (-wins.get(c, 0), np.mean(ranks[c]), config_sort_key(c)))[0]
                evidence.insert(0, f"{best_config} has the {rule} for {wins.get(best_config, 0)} of "
                                   f"{len(per_model)} model(s) on {machine}")
            else:
                best_config = None
            if any(m[x].notna().any() for x in metrics if METRIC_BY_NAME[x].source):
                srcs = {c: s for c, s in zip(m["config"], m["energy_source"])}
                n = source_note(srcs)
                if n:
                    caveats.append(n)
            out.append(Guideline(shape, machine, best_config, per_model, evidence, caveats))
    return out


# ---------------------------------------------------------------- entry point

def analyze(df: pd.DataFrame) -> Analysis:
    """Answer the paper's questions for the samples in ``df`` (see the module docstring)."""
    df = prepare(df)
    stats_rows: list[dict] = []
    decisions: list[Decision] = []
    exclusions: list[Exclusion] = []
    findings: dict[tuple[str, str], list[str]] = {}
    notes: list[str] = []
    summary = _summary(df)
    machines = list(dict.fromkeys(df["machine"]))
    if df.empty:
        notes.append("no samples: nothing to analyse")

    for (machine, model), g in df.groupby(["machine", "model"], sort=True):
        words = findings.setdefault((machine, model), [])
        bad = sort_configs(g.loc[g["error_prone"], "config"])
        for c in bad:
            mr = _num(g.loc[g["config"] == c, "match_rate"].mean())
            why = "outputs disagreed with the torch reference" + (f" (match rate {mr:.0%})" if mr is not None else "")
            exclusions.append(Exclusion(machine, model, c, why))
        if bad:
            words.append("Excluded as error-prone: " + ", ".join(bad) + " (outputs disagreed with the torch reference).")
        good = g[~g["error_prone"]]
        sources = {c: group_energy_source(gc, "total") for c, gc in good.groupby("config")}
        cpu_sources = {c: group_energy_source(gc, "cpu") for c, gc in good.groupby("config")}
        gpu_sources = {c: group_energy_source(gc, "gpu") for c, gc in good.groupby("config")}
        for metric in METRICS:
            srcs = {"total": sources, "cpu": cpu_sources, "gpu": gpu_sources}.get(metric.source or "total", sources)
            if good.empty:
                reason = "every configuration of this model was error-prone (outputs disagreed with torch); nothing to compare"
                stats_rows.append(_row(machine=machine, model=model, metric=metric.name, test="omnibus",
                                       applicable=False, path="not applicable", reason=reason))
                decisions.append(Decision(machine, model, metric.name, "not applicable", reason))
                continue
            data = pd.DataFrame({"config": good["config"], "value": good[metric.name]})
            rows, decision, w = _compare(machine, model, metric, data, srcs)
            stats_rows += rows
            decisions.append(decision)
            words += w
        if good.empty:
            words.append("No comparison: every configuration of this model was error-prone.")

    stats = pd.DataFrame(stats_rows, columns=STATS_COLUMNS, dtype=object)
    stats = stats.where(stats.notna(), None)

    valid = summary[~summary["error_prone"]].copy() if not summary.empty else summary
    energy_metric = _pick_energy_metric(valid) if not valid.empty else "energy_net_j"
    if energy_metric != "energy_net_j":
        notes.append("net energy was not recorded; savings, Pareto fronts and guidelines use gross energy")
    # per-sample medians per category need the samples, not per-model medians
    cat_samples = df[~df["error_prone"]].copy()
    cat_samples["category"] = cat_samples["model"].map(model_category)
    if not valid.empty:
        for metric in ("energy_net_j", "energy_total_j", "energy_cpu_j", "energy_gpu_j", "time_s", "j_per_token",
                       "ms_per_token"):
            med = cat_samples.groupby(["machine", cat_samples["category"].map(category_label), "config"])[metric].median()
            valid[f"_samples_{metric}"] = [
                med.get((r.machine, category_label(r.category), r.config)) for r in valid.itertuples()]
        savings, cat_medians, cat_savings = _savings(valid, energy_metric)
        valid = valid.drop(columns=[c for c in valid.columns if c.startswith("_samples_")])
        guidelines = _guidelines(valid, stats, energy_metric)
    else:
        savings, cat_medians, cat_savings = _savings(valid, energy_metric)
        guidelines = []
        if not df.empty:
            notes.append("every configuration was error-prone or no samples remain: no savings or guidelines")
    for metric in METRICS:
        if df[metric.name].isna().all() and not df.empty:
            notes.append(f"{metric.label} ({metric.name}) was not recorded in any sample; its tests are skipped")
    if len(machines) > 1:
        notes.append("samples from several machines: each machine is analysed on its own ("
                     + ", ".join(machines) + ")")
    return Analysis(stats=stats, summary=summary, decisions=decisions, exclusions=exclusions, savings=savings,
                    category_medians=cat_medians, category_savings=cat_savings, guidelines=guidelines,
                    findings=findings, notes=notes, machines=machines, energy_metric=energy_metric)
