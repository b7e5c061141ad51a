"""The hypothesis tests for one (machine, model, metric) across serving configurations.

The path, as in the paper's Analysis section:

* configurations with fewer than ``MIN_REPS`` values are left out of the comparison with a
  "not applicable" row saying so; with fewer than two configurations left nothing is tested;
* Shapiro-Wilk per configuration and Levene across them; every configuration normal →
  Welch's ANOVA + Games-Howell, otherwise Kruskal-Wallis + Dunn (Holm-adjusted);
* effect sizes: omega² (Welch) or epsilon² (Kruskal-Wallis); Hedges' g for each pair.

p-values that do not exist are ``None`` (empty in stats.csv), never NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .effect_sizes import epsilon_squared_kw, hedges_g, omega_squared_welch
from .floats import as_float
from .formatting import fmt_p, fmt_value
from .metrics import Metric
from .ordering import sort_configs
from .sources import is_estimated, source_note

ALPHA = 0.05
MIN_REPS = 3

STATS_COLUMNS = [
    "machine", "model", "metric", "test", "config_a", "config_b", "n", "statistic_name", "statistic",
    "df1", "df2", "p_value", "p_adjust", "effect_name", "effect_size", "center_a", "center_b",
    "significant", "applicable", "path", "reason", "energy_source", "note",
]


@dataclass
class Decision:
    machine: str
    model: str
    metric: str
    path: str  # "welch+games-howell" | "kruskal+dunn-holm" | "not applicable"
    reason: str
    configs: list[str] = field(default_factory=list)


def stats_row(**kw) -> dict:
    """One stats.csv row (``STATS_COLUMNS``); columns not given are ``None``."""
    row = {c: None for c in STATS_COLUMNS}
    row.update(kw)
    return row


def compare(machine: str, model: str, metric: Metric, data: pd.DataFrame,
            sources: dict[str, str | None]) -> tuple[list[dict], Decision, list[str]]:
    """All rows for one (machine, model, metric); data has columns config and value (non-error-prone)."""
    base = dict(machine=machine, model=model, metric=metric.name)
    rows: list[dict] = []
    words: list[str] = []
    energy_source = None
    note = ""
    if metric.energy_source:
        sub = {c: s for c, s in sources.items() if c in set(data["config"])}
        energy_source = " | ".join(f"{c}: {s or 'unknown'}" for c, s in sub.items()) or None
        note = source_note(sub)
    base.update(energy_source=energy_source)

    def not_applicable(test: str, reason: str, **kw):
        rows.append(stats_row(**base, test=test, applicable=False, path="not applicable", reason=reason,
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
        rows.append(stats_row(**base_rows, test="omnibus", applicable=False, path="not applicable", reason=reason,
                              n=n_total))
        words.append(f"{metric.label}: the same in every configuration ({reason}).")
        return rows, Decision(machine, model, metric.name, "not applicable", reason, kept), words

    assumption_rows, path, why = _check_assumptions(base_rows, sub, groups, kept, n_total)
    rows += assumption_rows
    decision = Decision(machine, model, metric.name, path, why, kept)
    centers = {c: (float(np.mean(v)) if path.startswith("welch") else float(np.median(v))) for c, v in groups.items()}
    center_name = "mean" if path.startswith("welch") else "median"

    omni, p, stat_text, eff_text = _omnibus(base_rows, sub, path, why, n_total)
    rows.append(omni)
    pairs = _post_hoc(base_rows, sub, groups, kept, centers, path)
    if not omni["significant"]:
        # a pair is claimed different only where the omnibus test is: its p-value is kept, not its claim
        for r in pairs:
            if r["significant"]:
                r["significant"] = False
                r["reason"] = (f"p ≤ {ALPHA} for this pair, but the omnibus test is not significant "
                               f"({fmt_p(p)}); not claimed")
    rows += pairs
    words += _findings(metric, sources, kept, path, omni, p, stat_text, eff_text, pairs, centers, center_name)
    return rows, decision, words


def _check_assumptions(base_rows: dict, sub: pd.DataFrame, groups: dict[str, np.ndarray], kept: list[str],
                       n_total: int) -> tuple[list[dict], str, str]:
    """Shapiro-Wilk per configuration and Levene across them; the rows, the path and why it was taken."""
    import pingouin as pg

    rows: list[dict] = []
    normal = {}
    constant = [c for c, v in groups.items() if np.ptp(v) == 0]
    for c, v in groups.items():
        if c in constant:
            normal[c] = False
            rows.append(stats_row(**base_rows, test="shapiro", config_a=c, n=len(v), applicable=False,
                                  reason="constant values; normality cannot be assessed (treated as not normal)"))
            continue
        # scipy directly: pingouin.normality refuses n == 3, which Shapiro-Wilk (and the paper) allow
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = scipy_stats.shapiro(v)
        W, p = as_float(res.statistic), as_float(res.pvalue)
        normal[c] = p is not None and p > ALPHA
        rows.append(stats_row(**base_rows, test="shapiro", config_a=c, n=len(v), statistic_name="W", statistic=W,
                              p_value=p, significant=(p is not None and p <= ALPHA), applicable=True,
                              reason="normal" if normal[c] else "not normal"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lev = pg.homoscedasticity(sub, dv="value", group="config", method="levene")
    lw, lp = as_float(lev["W"].iloc[0]), as_float(lev["pval"].iloc[0])
    equal_var = lp is not None and lp > ALPHA
    rows.append(stats_row(**base_rows, test="levene", n=n_total, statistic_name="W", statistic=lw, p_value=lp,
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
    return rows, path, why


def _omnibus(base_rows: dict, sub: pd.DataFrame, path: str, why: str,
             n_total: int) -> tuple[dict, float | None, str, str]:
    """Welch's ANOVA or Kruskal-Wallis: the row, its p-value and the words for the statistic and effect size."""
    import pingouin as pg

    if path.startswith("welch"):
        res = pg.welch_anova(data=sub, dv="value", between="config")
        F, p = as_float(res["F"].iloc[0]), as_float(res["p_unc"].iloc[0])
        df1, df2 = as_float(res["ddof1"].iloc[0]), as_float(res["ddof2"].iloc[0])
        eff = omega_squared_welch(F, df1, n_total) if F is not None else None
        omni = stats_row(**base_rows, test="welch_anova", n=n_total, statistic_name="F", statistic=F, df1=df1,
                         df2=df2, p_value=p, effect_name="omega2", effect_size=eff, applicable=p is not None,
                         path=path, reason=why)
        stat_text = f"Welch's ANOVA F({df1:.0f}, {df2:.1f}) = {F:.2f}" if F is not None else "Welch's ANOVA"
        eff_text = f"ω² = {eff:.2f}" if eff is not None else ""
    else:
        res = pg.kruskal(data=sub, dv="value", between="config")
        H, p = as_float(res["H"].iloc[0]), as_float(res["p_unc"].iloc[0])
        df1 = as_float(res["ddof1"].iloc[0])
        eff = as_float(epsilon_squared_kw(H, n_total)) if H is not None else None
        omni = stats_row(**base_rows, test="kruskal", n=n_total, statistic_name="H", statistic=H, df1=df1,
                         p_value=p, effect_name="epsilon2", effect_size=eff, applicable=p is not None, path=path,
                         reason=why)
        stat_text = f"Kruskal-Wallis H({df1:.0f}) = {H:.2f}" if H is not None else "Kruskal-Wallis"
        eff_text = f"ε² = {eff:.2f}" if eff is not None else ""
    omni["significant"] = p is not None and p <= ALPHA
    if p is None:
        omni["reason"] = why + "; the test returned no p-value"
    return omni, p, stat_text, eff_text


def _post_hoc(base_rows: dict, sub: pd.DataFrame, groups: dict[str, np.ndarray], kept: list[str],
              centers: dict[str, float], path: str) -> list[dict]:
    """Games-Howell (Welch path) or Dunn, Holm-adjusted (Kruskal path): one row per pair of configurations."""
    pairs: list[dict] = []
    if path.startswith("welch"):
        import pingouin as pg

        gh = pg.pairwise_gameshowell(data=sub, dv="value", between="config")
        for r in gh.to_dict("records"):
            a, b = str(r["A"]), str(r["B"])
            pairs.append(stats_row(**base_rows, test="games_howell", config_a=a, config_b=b,
                                   n=len(groups[a]) + len(groups[b]), statistic_name="T", statistic=as_float(r["T"]),
                                   df1=as_float(r["df"]), p_value=as_float(r["pval"]), p_adjust="games-howell",
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
                pairs.append(stats_row(**base_rows, test="dunn", config_a=a, config_b=b,
                                       n=len(groups[a]) + len(groups[b]), statistic_name="",
                                       p_value=as_float(dunn.loc[a, b]), p_adjust="holm", effect_name="hedges_g",
                                       effect_size=hedges_g(groups[a], groups[b]),
                                       center_a=centers[a], center_b=centers[b], applicable=True, path=path))
    for r in pairs:
        r["significant"] = r["p_value"] is not None and r["p_value"] <= ALPHA
        r["applicable"] = r["p_value"] is not None
        if r["p_value"] is None:
            r["reason"] = "the post-hoc test returned no p-value"
    return pairs


def _findings(metric: Metric, sources: dict[str, str | None], kept: list[str], path: str, omni: dict,
              p: float | None, stat_text: str, eff_text: str, pairs: list[dict], centers: dict[str, float],
              center_name: str) -> list[str]:
    """The sentences for one (machine, model, metric): the omnibus result, then each significant pair."""
    words: list[str] = []
    est = " (estimated energy)" if metric.energy_source and any(is_estimated(sources.get(c)) for c in kept) else ""
    mixed = " [energy sources differ across configurations]" if metric.energy_source and \
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
    return words


def _verb(metric: Metric, higher: bool) -> str:
    if metric.name == "time_s":
        return "is significantly slower than" if higher else "is significantly faster than"
    if metric.kind == "time" and metric.better == "lower":  # durations (a rate like tokens/s is "higher")
        return f"has a significantly {'longer' if higher else 'shorter'} {metric.label} than"
    if metric.kind == "energy" and metric.better == "lower":
        return f"uses significantly {'more' if higher else 'less'} {metric.label} than"
    return f"has significantly {'higher' if higher else 'lower'} {metric.label} than"

