"""report.html: one self-contained file (inline CSS, inline PNG images, no network).

It leads with the answer: one overview picture across models and configurations (energy and
time per token with their spread, quality marks, estimated energy drawn as such), then the
guidelines, then the details (summary tables, savings, size categories, the roofline, one
section per model, the machines). The notes are folded under one line that says how many
there are and of what kind.
"""

from __future__ import annotations

import html
import math
from importlib import metadata

import pandas as pd

from ..analysis.formatting import fmt_p
from ..analysis.loads import model_of_unit
from ..analysis.metrics import Metric, metrics_or_builtin
from ..analysis.placement import placement_notes
from ..analysis.sources import source_note
from ..stats import Analysis, prepare, unit_column
from . import plots
from .guidelines import guideline_text
from .tables import (ROOFLINE_TITLE, SUMMARY_HEADERS, best_savings_lines, category_rows, html_table, power_model_lines,
                     roofline_notes, roofline_rows, savings_rows, summary_rows)

ANALYSIS_LIBS = ["pytest-greenserve", "pandas", "numpy", "scipy", "statsmodels", "pingouin", "scikit-posthocs",
                 "matplotlib"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2}.note{color:#8a5a00}.muted{color:#666}
img{max-width:100%;height:auto;border:1px solid #eee}
li{margin:.2em 0}details{margin:.5em 0}code{background:#f5f5f5;padding:0 3px}
.guideline{background:#f3f9f3;border-left:4px solid #3a3;padding:.4em .8em;margin:.6em 0}
details.notes>summary{cursor:pointer;color:#8a5a00}figure.overview{margin:1em 0}
"""

# Lets a headless browser (and the test) see that every image decoded and no script failed.
CHECK_SCRIPT = """
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e)); });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  document.body.setAttribute('data-errors', String(window.__errors.length));
});
"""


def esc(text) -> str:
    return html.escape(str(text))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _kv_table(d: dict) -> str:
    rows = [[k, v if not isinstance(v, (dict, list)) else ", ".join(f"{a}={b}" for a, b in v.items())
             if isinstance(v, dict) else ", ".join(map(str, v))] for k, v in d.items()]
    return html_table(["key", "value"], rows)


def _machines_section(meta: dict, df: pd.DataFrame) -> str:
    out = ["<h2>Machine and library versions</h2>"]
    infos: dict[str, dict] = {}
    if "machine_info" in df.columns:
        for r in df.to_dict("records"):
            mi = r.get("machine_info")
            if isinstance(mi, dict):
                infos.setdefault(str(r.get("machine") or mi.get("hostname") or "unknown"), mi)
    meta_mi = meta.get("machine_info")
    if isinstance(meta_mi, dict) and meta_mi:
        infos.setdefault(str(meta_mi.get("hostname", "this machine")), meta_mi)
    elif isinstance(meta_mi, list):  # merged runs: one per run
        for mi in meta_mi:
            if isinstance(mi, dict):
                infos.setdefault(str(mi.get("hostname", "unknown")), mi)
    if infos:
        for name, mi in infos.items():
            out.append(f"<h3>{esc(name)}</h3>" + _kv_table(mi))
    else:
        out.append('<p class="muted">No machine information was recorded.</p>')
    versions = {}
    if "versions" in df.columns:
        for v in df["versions"]:
            if isinstance(v, dict):
                versions.update(v)
    if isinstance(meta.get("versions"), dict):
        versions.update(meta["versions"])
    if versions:
        out.append("<h3>Serving libraries (as recorded by the run)</h3>" + _kv_table(versions))
    out.append("<h3>Analysis libraries (this report)</h3>" + _kv_table({d: _version(d) for d in ANALYSIS_LIBS}))
    return "\n".join(out)


#: the kinds of notes, in the order the folded line names them
NOTE_KINDS = ("not served", "flagged samples", "error-prone configurations", "how energy is counted",
              "metrics not recorded", "ONNX placement", "other")


def note_items(analysis: Analysis, df: pd.DataFrame, meta: dict | None = None) -> list[tuple[str, str]]:
    """Every note of the report as (kind, text); kinds from :data:`NOTE_KINDS`."""
    flagged = {f"{f.machine} / {f.model}: {f.config} {f.text}" for f in analysis.flags}
    placement = set(placement_notes(df))
    items: list[tuple[str, str]] = []
    for n in analysis.notes:
        kind = ("flagged samples" if n in flagged else "ONNX placement" if n in placement
                else "metrics not recorded" if "was not recorded in any sample" in n
                else "how energy is counted" if "energy" in n else "other")
        items.append((kind, n))
    for line in (meta or {}).get("not_served") or []:
        items.append(("not served", f"{line} (no samples: its values are missing, not 0)"))
    for e in analysis.exclusions:
        items.append(("error-prone configurations",
                      f"{e.machine} / {e.model}: {e.config} excluded as error-prone — {e.reason}"))
    srcs = analysis.summary["energy_source"].dropna().unique() if not analysis.summary.empty else []
    if any("estimated" in s for s in srcs):
        items.append(("how energy is counted",
                      "Some energy values are estimated from CPU time with a power model, not measured; they are "
                      "labelled estimated wherever they appear and are not comparable with measured values."))
        for line in power_model_lines(meta):
            items.append(("how energy is counted",
                          "The power model (idle W × wall time + W per busy core × the process tree's CPU-seconds), "
                          f"as the meters recorded it: {line}"))
    if analysis.summary["energy_net_j"].notna().any() if not analysis.summary.empty else False:
        items.append(("how energy is counted",
                      "Net energy = gross energy − idle energy over the same duration; the idle baseline is taken "
                      "for the whole machine, so net energy is reported for the total only, gross for CPU and GPU "
                      "apart."))
    return items


def notes_line(items: list[tuple[str, str]]) -> str:
    """``"9 notes: 3 flagged samples, 4 how energy is counted, 2 metrics not recorded"``."""
    counts = {k: sum(1 for kind, _ in items if kind == k) for k in NOTE_KINDS}
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return f"{len(items)} note{'s' if len(items) != 1 else ''}: {kinds}"


def _notes(analysis: Analysis, df: pd.DataFrame, meta: dict | None = None) -> str:
    """The notes, folded under one line that says how many there are and of what kind."""
    items = note_items(analysis, df, meta)
    if not items:
        return ""
    body = "".join(f"<h4>{esc(k)}</h4><ul>" + "".join(f'<li class="note">{esc(t)}</li>' for kind, t in items
                                                      if kind == k) + "</ul>"
                   for k in NOTE_KINDS if any(kind == k for kind, _ in items))
    return f'<details class="notes"><summary>{esc(notes_line(items))}</summary>{body}</details>'


def _overview(analysis: Analysis, df: pd.DataFrame) -> str:
    """The first figure: every model and configuration, energy and time per token."""
    # flags name comparison units; the overview draws models (a rate's configuration label is its own)
    flagged = {(f.machine, model_of_unit(f.model), f.config) for f in analysis.flags}
    uri, alt = plots.overview_plot(df, analysis.energy_metric, flagged)
    if uri is None:
        return '<p class="muted">No overview: no sample recorded a time per token.</p>'
    return (f'<figure class="overview"><img alt="{esc(alt)}" src="{uri}"><figcaption class="muted">Each point is a '
            "configuration's median over its repetitions; the bars span its repetitions. Lower and further left "
            "is better. The guidelines below say which differences are significant.</figcaption></figure>")


def _guidelines(analysis: Analysis) -> str:
    out = ["<h2>Guidelines: which configuration to pick</h2>"]
    if not analysis.guidelines:
        out.append("<p>No guidelines: no configuration could be compared in this run.</p>")
    for g in analysis.guidelines:
        head, lines = guideline_text(g)
        out.append(f'<div class="guideline"><b>{esc(g.shape)}</b> — {esc(head)}<ul>'
                   + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul></div>")
    return "\n".join(out)


def _stats_table(stats: pd.DataFrame) -> str:
    cols = ["metric", "test", "config_a", "config_b", "n", "statistic_name", "statistic", "df1", "df2", "p_value",
            "effect_name", "effect_size", "significant", "reason", "note"]
    rows = []
    for r in stats[cols + ["applicable"]].to_dict("records"):
        cells = []
        for c in cols:
            v = r[c]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("")
            elif c == "p_value":
                cells.append(fmt_p(v))
            elif isinstance(v, float):
                cells.append(f"{v:.4g}")
            else:
                cells.append(str(v))
        if r["applicable"] is False and r["p_value"] is None:
            cells[cols.index("p_value")] = "not applicable"
        rows.append(cells)
    return html_table(cols, rows, "stats")


def _model_section(analysis: Analysis, df: pd.DataFrame, machine: str, model: str,
                   metrics: dict[str, Metric], load_curve: bool = True) -> str:
    """One comparison unit's section (the model under one load, analysis/loads.py: ``df``'s
    ``_unit``); ``load_curve``: draw the model's energy against load here (its first unit)."""
    out = [f"<h3>{esc(model)}" + (f" <span class='muted'>on {esc(machine)}</span>" if len(analysis.machines) > 1 else "")
           + "</h3>"]
    g = df[(df["machine"] == machine) & (df["_unit"] == model)]
    good = g[~g["error_prone"]]
    excluded = sorted(set(g.loc[g["error_prone"], "config"]))
    if excluded:
        out.append(f'<p class="note">Excluded as error-prone (output quality worse than torch\'s in the same dtype, '
                   f'against the fp32 reference): {esc(", ".join(excluded))}</p>')
    every_load = df[(df["machine"] == machine) & (df["model"] == model_of_unit(model))]
    luri, lalt = plots.load_curve_plot(every_load, analysis.energy_metric,
                                       f"{model_of_unit(model)} — energy and latency against load") \
        if load_curve else (None, "")
    if luri:
        out.append(f'<figure><img alt="{esc(lalt)}" src="{luri}"><figcaption class="muted">Open-loop samples '
                   "(--greenserve-load): per offered rate, the median over repetitions and the range; each rate's "
                   "energy and latency are those of its measured window (warm-up and cool-down left out); grey: error-prone."
                   "</figcaption></figure>")
    if good.empty:
        out.append("<p>Every configuration of this model was error-prone: no other plots and no comparison.</p>")
        return "\n".join(out)
    uri, skipped = plots.box_plots(good, f"{model} — box plots per configuration", metrics)
    if uri:
        shown = ", ".join(f"{m.label} ({m.unit})" if m.unit else m.label for m in plots.box_metrics(good, metrics)[0])
        out.append(f'<figure><img alt="box plots for {esc(model)}: {esc(shown)}" src="{uri}">'
                   f"<figcaption class='muted'>Box plots: {esc(shown)}</figcaption></figure>")
    summ = analysis.summary[(analysis.summary["machine"] == machine) & (analysis.summary["model"] == model)
                            & (~analysis.summary["error_prone"])]
    srcs = {r["config"]: r["energy_source"] for r in summ.to_dict("records")}
    if any(srcs.values()):
        note = source_note(srcs)
        out.append("<p class='muted'>Energy sources: " + esc("; ".join(f"{c}: {s or 'unknown'}" for c, s in srcs.items()))
                   + (f" — <span class='note'>{esc(note)}</span>" if note else "") + "</p>")
    if skipped:
        out.append(f'<p class="muted">Not plotted: {esc("; ".join(skipped))}.</p>')
    every = analysis.summary[(analysis.summary["machine"] == machine) & (analysis.summary["model"] == model)]
    puri, front = plots.pareto_plot(g, every, analysis.energy_metric, f"{model} — energy vs time", metrics,
                                    unmatched=excluded)
    if puri:
        out.append(f'<figure><img alt="energy vs time for {esc(model)}" src="{puri}">'
                   f"<figcaption>Pareto front (no configuration is both cheaper and faster): "
                   f"{esc(', '.join(front))}"
                   + (f"; grey crosses are not quality-matched (error-prone, off the front): {esc(', '.join(excluded))}"
                      if excluded else "") + "</figcaption></figure>")
    else:
        out.append('<p class="muted">No energy-vs-time plot: energy or time was not recorded.</p>')
    words = analysis.findings.get((machine, model), [])
    if words:
        out.append("<h4>Significance, in words</h4><ul>"
                   + "".join(f"<li>{esc(w.strip())}</li>" for w in words) + "</ul>")
    dec_rows = [[metrics[d.metric].label if d.metric in metrics else d.metric, d.path, d.reason]
                for d in analysis.decisions
                if d.machine == machine and d.model == model]
    if dec_rows:
        out.append("<details><summary>Which test, and why</summary>"
                   + html_table(["metric", "path", "why"], dec_rows) + "</details>")
    st = analysis.stats[(analysis.stats["machine"] == machine) & (analysis.stats["model"] == model)]
    if not st.empty:
        out.append("<details><summary>All test results (stats.csv rows)</summary>" + _stats_table(st) + "</details>")
    return "\n".join(out)


def _paper_section(df: pd.DataFrame) -> str:
    """The paper's headline ratios against this run's, with their intervals (analysis/paper.py);
    empty when the run has none of the paper's pairs of configurations."""
    from ..analysis.paper import HEADERS, compare, disagreements, paper_facts, table_rows

    facts = paper_facts()
    rows, notes = compare(df.to_dict("records"), facts)
    if not rows:
        return ""
    out = ["<h2>The paper, side by side</h2>",
           f"<p>{esc(facts['citation'])}. Its setup: {esc(facts['setup'])}. Each ratio is A/B of medians; the "
           "paper's are over its 12 models (it publishes per-category figures for TORCH-CUDA only); energy is gross "
           "CPU + GPU energy; this run's 95% interval comes from resampling each model's samples "
           "(<code>greenserve paper RUN_DIR</code> prints the same).</p>",
           html_table(HEADERS, table_rows(rows), "paper")]
    words = disagreements(rows)
    out.append("<p><b>Where this run disagrees with the paper:</b></p><ul>" + "".join(f"<li>{esc(w)}</li>" for w in words)
               + "</ul>" if words else "<p>This run disagrees with none of the paper's ratios it could check.</p>")
    if notes:
        out.append("<ul class='muted'>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    return "\n".join(out)


def render(analysis: Analysis, df: pd.DataFrame, meta: dict, metrics: dict[str, Metric] | None = None) -> str:
    """The whole page; ``metrics`` is the registry the analysis used (None: the built-in metrics)."""
    metrics = metrics_or_builtin(metrics)
    df = prepare(df, metrics)
    run_id = meta.get("run_id") or ", ".join(sorted({str(x) for x in df.get("run_id", pd.Series(dtype=object)).dropna()})) \
        or "unknown run"
    parts = [f"<h1>pytest-greenserve report — {esc(run_id)}</h1>",
             f"<p class='muted'>{len(df)} sample(s), {df['model'].nunique()} model(s), "
             f"{df['config'].nunique()} configuration(s), machine(s): {esc(', '.join(analysis.machines) or 'none')}.</p>"]
    parts.append(_overview(analysis, df))  # the answer first
    parts.append(_guidelines(analysis))
    parts.append(_notes(analysis, df, meta))
    options = meta.get("options")
    if isinstance(options, dict) and options:
        parts.append("<details><summary>Options</summary>" + _kv_table(options) + "</details>")
    parts.append("<h2>Summary per model and configuration</h2>")
    for machine in analysis.machines:
        s = analysis.summary[analysis.summary["machine"] == machine]
        if len(analysis.machines) > 1:
            parts.append(f"<h3>{esc(machine)}</h3>")
        parts.append(html_table(SUMMARY_HEADERS, summary_rows(s)))
    lines = best_savings_lines(analysis)
    if lines:
        parts.append("<h2>Savings</h2><p>What the best configuration saves against each other one, as a range "
                     "across models (the paper's “from X% up to Y%”):</p><ul>"
                     + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul>")
        h, r = savings_rows(analysis.savings, metrics)
        parts.append("<details><summary>Every pair</summary>" + html_table(h, r) + "</details>")
    for metric, title in ((analysis.energy_metric, "Table 4: median energy by size category"),
                          ("time_s", "Table 5: median time by size category")):
        h, r = category_rows(analysis.category_medians, metric, metrics[metric].unit)
        if r:
            parts.append(f"<h3>{esc(title)}</h3>" + html_table(h, r))
    h, r = roofline_rows(df)
    if r:
        parts.append(f"<h2>{esc(ROOFLINE_TITLE)}</h2>" + html_table(h, r, "roofline") + "<ul class='muted'>"
                     + "".join(f"<li>{esc(n)}</li>" for n in roofline_notes(df)) + "</ul>")
    parts.append(_paper_section(df))
    parts.append("<h2>Per model</h2>")
    # one section per comparison unit (the model under one load), the model's closed:1 unit first
    units = df.assign(_unit=unit_column(df))
    order = units[["machine", "model", "_unit"]].drop_duplicates()
    order = order.assign(_open=order["_unit"] != order["model"]).sort_values(["machine", "model", "_open", "_unit"])
    if order.empty:
        parts.append("<p>No samples.</p>")
    curve_drawn = set()
    for machine, model, unit in order[["machine", "model", "_unit"]].itertuples(index=False):
        parts.append(_model_section(analysis, units, machine, unit, metrics,
                                    load_curve=(machine, model) not in curve_drawn))
        curve_drawn.add((machine, model))
    parts.append(_machines_section(meta, df))
    body = "\n".join(p for p in parts if p)
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>greenserve report {esc(run_id)}</title><style>{CSS}</style>"
            f"<script>{CHECK_SCRIPT}</script></head><body>\n{body}\n</body></html>\n")
