"""Plots for report.html, as inline base64 PNG data URIs (matplotlib's Agg backend).

* :func:`overview_plot`: the report's first figure, every model and configuration at once:
  energy per token against time per token, with the spread of the repetitions;
* :func:`box_plots`: per model, one box per configuration for each ``plotted`` metric of the
  registry (the built-ins: energy, time and utilisation, the paper's Figures 6–8);
* :func:`pareto_plot`: per model, median energy against median time with the Pareto front;
* :func:`load_curve_plot`: per model, energy per token and median latency against the offered
  request rate, where a configuration was measured at several open-loop rates (``--greenserve-load``).

Axis labels and titles say *estimated* whenever an energy value comes from an estimate.
"""

from __future__ import annotations

import base64
import io
from typing import Iterable

import pandas as pd

from ..analysis.loads import base_config
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


# ---------------------------------------------------------------- the overview: the answer at a glance

def overview_energy(samples: pd.DataFrame, energy_metric: str) -> tuple[pd.Series, str]:
    """Per sample, energy per generated token of the statistics' energy (net, else gross), and
    its axis words: ``"net J/token"`` or ``"gross J/token"``."""
    tokens = pd.to_numeric(samples.get("tokens_generated"), errors="coerce")
    if energy_metric in samples and samples[energy_metric].notna().any():
        energy = pd.to_numeric(samples[energy_metric], errors="coerce")
        words = "net J/token" if energy_metric == "energy_net_j" else "gross J/token"
    else:
        energy, words = pd.Series(float("nan"), index=samples.index), "J/token"
    return energy / tokens.where(tokens > 0), words


def overview_plot(samples: pd.DataFrame, energy_metric: str, flagged: set | None = None) -> tuple[str | None, str]:
    """One figure across every model (one panel per machine × model) and configuration: median
    time per token against median energy per token, each with bars from the fastest to the
    slowest repetition (and the cheapest to the dearest), so the answer and its spread are
    seen together.

    Quality marks: a configuration whose outputs disagreed with torch (``error_prone``) is a
    grey ×, excluded from every comparison; one with flagged samples (unsteady, low
    resolution: ``flagged`` holds their (machine, model, config)) has a ``!`` after its name.
    Estimated energy is drawn as such: hollow markers, dashed bars and "estimated" on the
    axis. Returns the data URI (None without any time per token) and the alt text.
    """
    if samples.empty or "ms_per_token" not in samples or samples["ms_per_token"].notna().sum() == 0:
        return None, ""
    flagged = flagged or set()
    plt = _pyplot()
    per_token, words = overview_energy(samples, energy_metric)
    df = samples.assign(_e=per_token, _t=pd.to_numeric(samples["ms_per_token"], errors="coerce"))
    panels = list(df[["machine", "model"]].drop_duplicates().sort_values(["machine", "model"]).itertuples(index=False))
    several = df["machine"].nunique() > 1
    configs = sort_configs(df["config"])
    colour = {c: f"C{i % 10}" for i, c in enumerate(configs)}
    ncols = min(3, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    any_estimated = False
    for ax, (machine, model) in zip(axes.flat, panels):
        g = df[(df["machine"] == machine) & (df["model"] == model)]
        no_energy, panel_estimated = [], False
        for c in sort_configs(g["config"]):
            s = g[g["config"] == c]
            t = s["_t"].dropna()
            if t.empty:
                continue
            e = s["_e"].dropna()
            bad = bool(s["error_prone"].any()) if "error_prone" in s else False
            estimated = any(is_estimated(row_energy_source(r)) for r in s.to_dict("records"))
            panel_estimated |= estimated and not e.empty
            label = c + (" !" if (machine, model, c) in flagged else "") + (" (error-prone)" if bad else "")
            if e.empty:  # no energy: on the time axis alone, at the bottom, and said so
                no_energy.append(c)
                continue
            x, y = t.median(), e.median()
            col = "0.55" if bad else colour[c]
            ax.errorbar([x], [y], xerr=[[x - t.min()], [t.max() - x]], yerr=[[y - e.min()], [e.max() - y]],
                        fmt="none", ecolor=col, elinewidth=1, capsize=2, linestyle="--" if estimated else "-",
                        alpha=0.8)
            ax.plot([x], [y], linestyle="none", marker="x" if bad else "o", markersize=7, color=col, zorder=3,
                    markerfacecolor=col if (bad or not estimated) else "none", markeredgewidth=1.5)
            ax.annotate(label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points", color=col)
        if no_energy:
            ax.text(0.02, 0.02, "no energy: " + ", ".join(no_energy), transform=ax.transAxes, fontsize=7,
                    color="0.3")
        ax.set_title(f"{model}" + (f" on {machine}" if several else ""), fontsize=9)
        ax.set_xlabel("ms per token (lower is faster)", fontsize=7)
        any_estimated |= panel_estimated
        ax.set_ylabel(words + (", estimated" if panel_estimated else "") + " (lower is cheaper)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.margins(0.15)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    key = "bars: fastest–slowest and cheapest–dearest repetition; × grey: error-prone (excluded); !: flagged samples"
    if any_estimated:
        key = "hollow markers, dashed bars: energy estimated from CPU time (a power model, not a meter); " + key
    fig.suptitle("Overview: energy per token against time per token, every model and configuration", fontsize=10)
    fig.text(0.5, 0.01, key, ha="center", fontsize=7, color="0.25", wrap=True)
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 0.7 / (3.4 * nrows), bottom=0.9 / (3.4 * nrows) + 0.03,
                        wspace=0.3, hspace=0.55)
    alt = (f"overview: {words}{' (estimated)' if any_estimated else ''} against ms per token for "
           f"{len(panels)} model panel(s) and {len(configs)} configuration(s)")
    return _to_uri(fig), alt


# ---------------------------------------------------------------- energy against load (--greenserve-load)


def load_series(samples: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per configuration without its rate (``torch-cpu@http`` for ``torch-cpu@http/poisson2.5``),
    its open-loop samples, where they offered at least two rates (a sweep, or several sessions'
    rates in one report). Error-prone ones are kept: the plot draws them grey, named so."""
    if samples.empty or "offered_rate_rps" not in samples:
        return {}
    rate = pd.to_numeric(samples["offered_rate_rps"], errors="coerce")
    df = samples.assign(_rate=rate)[rate.notna()]
    df = df.assign(_base=[base_config(c) for c in df["config"]])
    return {base: g for base, g in df.groupby("_base", sort=True) if g["_rate"].nunique() >= 2}


def load_curve_plot(samples: pd.DataFrame, energy_metric: str, title: str) -> tuple[str | None, str]:
    """Energy per token and median end-to-end latency against the offered request rate, one
    line per configuration (medians over repetitions, bars from the least to the most), for
    the configurations :func:`load_series` finds; an error-prone one grey with × markers. Energy from an estimate is labelled so;
    a configuration without energy is named under the left panel. Returns (URI or None, alt)."""
    series = load_series(samples)
    if not series:
        return None, ""
    plt = _pyplot()
    fig, (ax_e, ax_l) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    no_energy, estimated, words = [], False, "J/token"
    for i, (base, g) in enumerate(series.items()):
        per_token, words = overview_energy(g, energy_metric)
        g = g.assign(_e=per_token, _lat=pd.to_numeric(g.get("latency_p50_s"), errors="coerce"))
        est = any(is_estimated(row_energy_source(r)) for r in g.to_dict("records"))
        bad = bool(g["error_prone"].fillna(False).astype(bool).any()) if "error_prone" in g else False
        for ax, col, missing in ((ax_e, "_e", no_energy), (ax_l, "_lat", None)):
            by = g.dropna(subset=[col]).groupby("_rate")[col]
            if by.ngroups == 0:
                if missing is not None:
                    missing.append(base)
                continue
            med, lo, hi = by.median(), by.min(), by.max()
            dashed = est and col == "_e"
            estimated |= dashed
            ax.errorbar(med.index, med.values, yerr=[med - lo, hi - med], marker="x" if bad else "o", capsize=2,
                        color="0.55" if bad else f"C{i % 10}", linestyle="--" if dashed else "-",
                        label=base + (" (estimated)" if dashed else "") + (" (error-prone)" if bad else ""))
    ax_e.set_ylabel(words + (", estimated" if estimated else ""), fontsize=8)
    ax_e.set_title("energy per token against load", fontsize=9)
    if no_energy:
        ax_e.text(0.02, 0.02, "no energy measured: " + ", ".join(no_energy), transform=ax_e.transAxes, fontsize=7,
                  color="0.3")
    ax_l.set_ylabel("median end-to-end latency (s)", fontsize=8)
    ax_l.set_title("latency against load", fontsize=9)
    for ax in (ax_e, ax_l):
        ax.set_xlabel("offered rate (requests/s)", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.15, wspace=0.28)
    alt = (f"{title}: {words}{' (estimated)' if estimated else ''} and median latency against offered rate for "
           f"{', '.join(series)}")
    return _to_uri(fig), alt
