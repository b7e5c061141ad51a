"""Plots for report.html, as inline base64 PNG data URIs (matplotlib's Agg backend).

* :func:`box_plots`: per model, one box per configuration for each ``plotted`` metric of the
  registry (the built-ins: energy, time and utilisation, the paper's Figures 6–8);
* :func:`pareto_plot`: per model, median energy against median time with the Pareto front.

Axis labels and titles say *estimated* whenever an energy value comes from an estimate.
"""

from __future__ import annotations

import base64
import io
from typing import Iterable

import pandas as pd

from ..analysis.metrics import Metric, metrics_or_builtin, plotted
from ..analysis.ordering import sort_configs
from ..analysis.pareto import pareto_front
from ..analysis.sources import is_estimated, row_energy_source

# A plotted metric never recorded in a run is drawn from its stand-in (gross for net energy).
STAND_INS = {"energy_net_j": "energy_total_j"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _to_uri(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)  # fixed margins: one draw, no tight-bbox pass
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def energy_label(metric: str, sources, metrics: dict[str, Metric] | None = None) -> str:
    m = metrics_or_builtin(metrics)[metric]
    label = f"{m.label} ({m.unit})"
    srcs = sorted({s for s in sources if s})
    if any(is_estimated(s) for s in srcs):
        label += "\nestimated: " + ", ".join(srcs)
    elif len(srcs) > 1:
        label += "\nsources differ: " + ", ".join(srcs)
    return label


def _label(m: Metric, samples: pd.DataFrame, registry: dict[str, Metric]) -> str:
    if not m.energy_source:
        return f"{m.label} ({m.unit})" if m.unit else m.label
    return energy_label(m.name, [row_energy_source(r, m.energy_source) for r in samples.to_dict("records")], registry)


def _recorded(samples: pd.DataFrame, name: str) -> bool:
    return name in samples and samples[name].notna().any()


def box_metrics(samples: pd.DataFrame, metrics: dict[str, Metric] | None = None) -> tuple[list[Metric], list[str]]:
    """The metrics :func:`box_plots` draws for these samples, and those left out, with why."""
    registry = metrics_or_builtin(metrics)
    skipped: list[str] = []
    drawn: list[Metric] = []
    for m in plotted(registry):
        stand_in = STAND_INS.get(m.name)
        if not _recorded(samples, m.name) and stand_in in registry:
            m = registry[stand_in]
        if m in drawn:
            continue
        if _recorded(samples, m.name):
            drawn.append(m)
        else:
            skipped.append(f"{m.label}: not recorded")
    return drawn, skipped


def box_plots(samples: pd.DataFrame, title: str,
              metrics: dict[str, Metric] | None = None) -> tuple[str | None, list[str]]:
    """One figure of box plots for one model's samples (error-prone configurations already removed).

    One box plot per ``plotted`` metric of the registry (None: the built-in metrics), in its
    order. Returns the data URI (None when nothing can be drawn) and the metrics left out, with why.
    """
    registry = metrics_or_builtin(metrics)
    drawn, skipped = box_metrics(samples, registry)
    if not drawn or samples.empty:
        return None, skipped
    plt = _pyplot()
    configs = sort_configs(samples["config"])
    ncols = min(3, len(drawn))
    nrows = (len(drawn) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, drawn):
        data, labels = [], []
        for c in configs:
            v = samples.loc[samples["config"] == c, m.name].dropna().to_numpy(float)
            if len(v):
                data.append(v)
                labels.append(c)
        if data:
            ax.boxplot(data, tick_labels=labels)
        else:
            ax.text(0.5, 0.5, 'no values', ha='center', va='center', transform=ax.transAxes)
        label = _label(m, samples, registry)
        short = label.split("\n")[0] + (", estimated" if "\nestimated" in label else
                                         ", sources differ" if "\nsources differ" in label else "")
        ax.set_title(short.replace(", estimated", " — estimated"), fontsize=9)
        ax.set_ylabel(short, fontsize=7)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.8 / (2.9 * nrows), bottom=0.75 / (2.9 * nrows) + 0.02,
                        wspace=0.32, hspace=0.75)
    return _to_uri(fig), skipped


def pareto_plot(samples: pd.DataFrame, summary: pd.DataFrame, energy_metric: str, title: str,
                metrics: dict[str, Metric] | None = None,
                unmatched: Iterable[str] = ()) -> tuple[str | None, list[str]]:
    """Energy against time, one colour per configuration; medians joined along the Pareto front.

    ``unmatched``: configurations whose output is not quality-matched (error-prone): drawn as a
    grey cross, labelled so, and never on the front. Returns the data URI (None without energy
    or time) and the names on the front.
    """
    rows = summary.dropna(subset=[energy_metric, "time_s"])
    if rows.empty:
        return None, []
    points = {r["config"]: (r[energy_metric], r["time_s"]) for r in rows.to_dict("records")}
    unmatched = set(unmatched)
    front = pareto_front({c: p for c, p in points.items() if c not in unmatched})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, c in enumerate(sort_configs(points)):
        s = samples[samples["config"] == c]
        color = "0.55" if c in unmatched else f"C{i % 10}"
        ax.scatter(s[energy_metric], s["time_s"], s=10, alpha=0.35, color=color)
        e, t = points[c]
        if c in unmatched:
            ax.scatter([e], [t], s=60, color=color, zorder=3, marker="X", label=c + " (not quality-matched)")
        else:
            ax.scatter([e], [t], s=60, color=color, edgecolor="black", zorder=3,
                       marker="*" if c in front else "o", label=c + (" (Pareto)" if c in front else ""))
        ax.annotate(c, (e, t), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if len(front) > 1:
        ax.plot([points[c][0] for c in front], [points[c][1] for c in front], "k--", lw=1, label="Pareto front")
    xlabel = energy_label(energy_metric, rows["energy_source"], metrics)
    ax.set_xlabel(xlabel.split("\n")[0] + (", estimated" if "\nestimated" in xlabel else
                                           ", sources differ" if "\nsources differ" in xlabel else ""), fontsize=8)
    ax.set_ylabel("time (s)", fontsize=8)
    est = " (energy estimated)" if any(is_estimated(s) for s in rows["energy_source"] if s) else ""
    ax.set_title(title + est, fontsize=9)
    ax.legend(fontsize=6, loc="best")
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.14)
    return _to_uri(fig), front
