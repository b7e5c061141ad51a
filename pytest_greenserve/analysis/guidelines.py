"""The energy-, latency- and resource-constrained guidelines, with the evidence behind each pick."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .formatting import fmt_p, fmt_value
from .hypothesis import ALPHA
from .metrics import Metric, metrics_or_builtin, process_tree_metrics, resource_metrics
from .ordering import config_sort_key
from .sources import source_note


@dataclass
class Guideline:
    shape: str  # energy-constrained | latency-constrained | resource-constrained
    machine: str
    best_config: str | None
    per_model: dict[str, str]
    evidence: list[str]
    caveats: list[str] = field(default_factory=list)
    #: model -> the runner-up its best configuration was tested against and found not
    #: significantly different from: the two are tied there, and neither is "the" answer
    ties: dict[str, str] = field(default_factory=dict)

    @property
    def tied_with(self) -> list[str]:
        """The configurations ``best_config`` is tied with in the models where it came first."""
        return sorted({other for model, other in self.ties.items() if self.per_model.get(model) == self.best_config},
                      key=config_sort_key)

    @property
    def tied_everywhere(self) -> bool:
        """Whether ``best_config`` is tied with its runner-up in every model where it came first."""
        won = [m for m, c in self.per_model.items() if c == self.best_config]
        return bool(won) and all(m in self.ties for m in won)


def _pair_p(stats: pd.DataFrame, machine, model, metric, a, b):
    r = stats[(stats["machine"] == machine) & (stats["model"] == model) & (stats["metric"] == metric)
              & (stats["test"].isin(["games_howell", "dunn"]))
              & (((stats["config_a"] == a) & (stats["config_b"] == b)) | ((stats["config_a"] == b) & (stats["config_b"] == a)))]
    if r.empty:
        return None, None, False, ""
    significant = r["significant"].iloc[0]
    return (r["p_value"].iloc[0], r["test"].iloc[0], bool(significant) if significant is not None else False,
            str(r["reason"].iloc[0] or ""))


def _not_tested_reason(stats: pd.DataFrame, machine, model, metric) -> str:
    r = stats[(stats["machine"] == machine) & (stats["model"] == model) & (stats["metric"] == metric)
              & (stats["test"] == "omnibus")]
    return str(r["reason"].iloc[0]) if not r.empty and r["reason"].iloc[0] else "see the statistics table"


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def build_guidelines(valid: pd.DataFrame, stats: pd.DataFrame, energy_metric: str,
                     metrics: dict[str, Metric] | None = None) -> list[Guideline]:
    """One guideline per machine and shape; the resource shape ranks :func:`~..metrics.resource_metrics`."""
    registry = metrics_or_builtin(metrics)
    resources = [m.name for m in resource_metrics(registry)]
    # a process-tree metric is ranked in its system-wide metric's place (per model, where recorded)
    proc_of = {system: proc for system, proc in process_tree_metrics(registry).items()
               if system in resources and proc in resources}
    resources = [x for x in resources if x not in proc_of.values()]
    out = []
    ranked_words = [registry[proc_of[x]].label + " (else " + registry[x].label + ")" if x in proc_of
                    else registry[x].label for x in resources]
    shapes = [("energy-constrained", [energy_metric], "lowest median energy"),
              ("latency-constrained", ["time_s"], "lowest median time"),
              ("resource-constrained", resources,
               "lowest mean rank of " + _words(ranked_words) if resources else "")]
    for machine, m in valid.groupby("machine", sort=False):
        for shape, names, rule in shapes:
            if not names:  # a registry without resource metrics
                continue
            per_model, evidence, caveats, ranks, ties, alone = {}, [], [], {}, {}, {}
            for model, g in m.groupby("model", sort=True):
                # the process tree's own CPU/RAM where every configuration has it; the system-wide
                # figure (other processes included) is then context only
                context = [x for x in names if x in proc_of and proc_of[x] in g and g[proc_of[x]].notna().all()]
                ranked = [proc_of[x] if x in context else x for x in names]
                # rank only on metrics every configuration has (GPU memory is absent on CPU runs)
                usable = [x for x in ranked if g[x].notna().all()] or [x for x in ranked if g[x].notna().any()]
                if not usable:
                    caveats.append(f"{model}: no " + ", ".join(registry[x].label for x in names) + " recorded")
                    continue
                rank = pd.concat([g.set_index("config")[x].rank(method="average") for x in usable], axis=1).mean(axis=1)
                rank = rank.dropna()
                if rank.empty:
                    continue
                ordered = sorted(rank.index, key=lambda c: (rank[c], config_sort_key(c)))
                best = ordered[0]
                if len(ordered) == 1:
                    # nothing beaten: a win only where nothing else was compared (a load of its own)
                    alone[model] = best
                    evidence.append(f"{model}: {best} is the only configuration measured")
                    continue
                per_model[model] = best
                for c in rank.index:
                    ranks.setdefault(c, []).append(rank[c])
                second = ordered[1]
                key = usable[0]
                gi = g.set_index("config")
                vb, vs = gi.loc[best, key], gi.loc[second, key]
                metric = registry[key]
                p, test, significant, why = _pair_p(stats, machine, model, key, best, second)
                est = " (estimated)" if metric.energy_source and (gi.loc[best, "estimated"]
                                                                  or gi.loc[second, "estimated"]) else ""
                tied = p is not None and not pd.isna(p) and not significant
                if tied:
                    ties[model] = second
                if p is not None and not pd.isna(p):
                    if significant:
                        sig = f"significantly lower ({'Games-Howell' if test == 'games_howell' else 'Dunn-Holm'} {fmt_p(p)})"
                    elif p <= ALPHA:  # the pair alone, but the omnibus test was not significant
                        sig = f"not significantly different ({why or 'the omnibus test is not significant'})"
                    else:
                        sig = f"not significantly different ({fmt_p(p)})"
                else:
                    sig = "not tested: " + _not_tested_reason(stats, machine, model, key)
                diff = ""
                if pd.notna(vb) and pd.notna(vs) and vs:
                    change = (vs - vb) / vs * 100
                    # the resource rule ranks several metrics, so its pick can be higher on this one
                    diff = f", {change:.1f}% less" if change >= 0 else f", {-change:.1f}% more"
                    if change < 0:
                        sig = sig.replace("significantly lower", "significantly higher")
                who = f"{best} and {second} tied" if tied else best
                line = (f"{model}: {who} — median {metric.label}{est} {fmt_value(vb, metric.unit)} vs "
                        f"{fmt_value(vs, metric.unit)} for the runner-up {second}{diff}; {sig}")
                if context:
                    line += "; system-wide, other processes included (context, not ranked): " + ", ".join(
                        f"{registry[x].label} {fmt_value(gi.loc[best, x], registry[x].unit)} vs "
                        f"{fmt_value(gi.loc[second, x], registry[x].unit)}" for x in context)
                evidence.append(line)
            if not ranks and alone:  # no model had two configurations: each lone one stands
                per_model = dict(alone)
                ranks = {c: [1.0] for c in alone.values()}
            if ranks:
                wins = pd.Series(per_model).value_counts()
                best_config = sorted(ranks, key=lambda c: (-wins.get(c, 0), np.mean(ranks[c]), config_sort_key(c)))[0]
                evidence.insert(0, f"{best_config} has the {rule} for {wins.get(best_config, 0)} of "
                                   f"{len(per_model)} model(s) on {machine}")
            else:
                best_config = None
            if any(m[x].notna().any() for x in names if registry[x].energy_source):
                srcs = {c: s for c, s in zip(m["config"], m["energy_source"])}
                n = source_note(srcs)
                if n:
                    caveats.append(n)
            out.append(Guideline(shape, machine, best_config, per_model, evidence, caveats, ties))
    return out
