"""Reports of one run (or several merged): samples.csv, stats.csv, summary.md, report.html,
and the terminal summary printed at the end of a pytest session.

No pytest here: the plugin calls :func:`write_reports` and :func:`terminal_summary`.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis.summaries import summarise
from ..metrics import Metric, builtin_metrics, metrics_from_json
from ..results import mark_error_prone, samples_frame, write_csv
from ..stats import Analysis, analyze, prepare
from .guidelines import guideline_markdown
from .tables import (ROOFLINE_TITLE, SUMMARY_HEADERS, best_savings_lines, category_rows, energy_cell, markdown_table,
                     match_cell, per_token_cell, plain, power_model_lines, quality_cell, roofline_notes, roofline_rows,
                     summary_rows,
                     text_table)

__all__ = ["write_reports", "terminal_summary", "summary_markdown", "run_metrics"]


def summary_markdown(analysis: Analysis, meta: dict, metrics: dict[str, Metric] | None = None,
                     samples=None) -> str:
    """summary.md; ``samples``: the samples frame, for the roofline table of GPU samples (None: no table)."""
    run_id = meta.get("run_id") or "merged runs"
    out = [f"# pytest-greenserve summary — {run_id}", ""]
    if analysis.summary.empty:
        out.append("No samples were recorded.")
        return "\n".join(out) + "\n"
    for machine in analysis.machines:
        s = analysis.summary[analysis.summary["machine"] == machine]
        out += [f"## {machine}", "", markdown_table(SUMMARY_HEADERS, summary_rows(s)), ""]
    if meta.get("not_served"):
        out += ["## Not served (no samples)", ""] + [f"- {line}" for line in meta["not_served"]] + [""]
    if analysis.exclusions:
        out += ["## Excluded configurations", ""]
        out += [f"- {e.machine} / {e.model}: {e.config} — {e.reason}" for e in analysis.exclusions] + [""]
    lines = best_savings_lines(analysis)
    if lines:
        out += ["## Savings (range across models)", ""] + [f"- {x}" for x in lines] + [""]
    registry = metrics if metrics is not None else builtin_metrics()
    for metric, title in ((analysis.energy_metric, "Median energy by size category (Table 4)"),
                          ("time_s", "Median time by size category (Table 5)")):
        h, r = category_rows(analysis.category_medians, metric, registry[metric].unit)
        if r:
            out += [f"## {title}", "", markdown_table(h, r), ""]
    h, r = roofline_rows(samples)
    if r:
        out += [f"## {ROOFLINE_TITLE}", "", markdown_table(h, r), ""] + [f"- {n}" for n in roofline_notes(samples)] + [""]
    out += ["## Guidelines", "", guideline_markdown(analysis), ""]
    if analysis.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in analysis.notes] + [""]
    model = power_model_lines(meta)
    if model and analysis.summary["estimated"].any():
        out += ["## Estimated CPU energy: the power model", ""] + [f"- {n}" for n in model] + [
            "", "Estimated energy = idle W × wall time + W per busy core × the process tree's CPU-seconds; "
            "spinning threads count as busy, and a loaded machine changes it.", ""]
    out += ["Energy marked *estimated* comes from a power model, not a meter. Full test results: stats.csv; "
            "plots and the words behind every test: report.html.", ""]
    return "\n".join(out)


def run_metrics(meta: dict | None) -> dict[str, Metric]:
    """The metric registry of a saved run: the built-ins, plus (or replaced by) those in ``meta["metrics"]``."""
    saved = (meta or {}).get("metrics")
    return {**builtin_metrics(), **metrics_from_json(saved)} if isinstance(saved, list) else builtin_metrics()


def write_reports(rows: list[dict], run_dir: Path, meta: dict | None = None,
                  metrics: dict[str, Metric] | None = None) -> dict[str, Path]:
    """Write samples.csv, stats.csv, summary.md and report.html into ``run_dir``; return their paths.

    ``metrics``: the metric registry; None: the run's (``meta["metrics"]``, see :func:`run_metrics`).
    """
    from .html import render

    meta = dict(meta or {})
    metrics = run_metrics(meta) if metrics is None else dict(metrics)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_error_prone(rows)  # per sample as measured -> per configuration, for samples.csv too
    df = samples_frame(rows, metrics)
    analysis = analyze(df, metrics)
    paths = {"samples": run_dir / "samples.csv", "stats": run_dir / "stats.csv",
             "summary": run_dir / "summary.md", "html": run_dir / "report.html"}
    write_csv(rows, paths["samples"], metrics)
    analysis.stats.to_csv(paths["stats"], index=False)
    paths["summary"].write_text(summary_markdown(analysis, meta, metrics, df), encoding="utf-8")
    paths["html"].write_text(render(analysis, df, meta, metrics), encoding="utf-8")
    return paths


TERMINAL_HEADERS = ["model", "config", "net energy (source)", "time", "J/token", "ms/token", "match", "quality"]


def terminal_summary(rows: list[dict], report_path: Path | None = None) -> list[str]:
    """Lines for pytest's terminal reporter: model × configuration medians, then the report's path."""
    if not rows:
        return ["greenserve: no samples were recorded"]
    s = summarise(prepare(samples_frame(rows)))
    machines = list(dict.fromkeys(s["machine"]))
    lines = []
    for machine in machines:
        sm = s[s["machine"] == machine]
        table = []
        for r in sm.to_dict("records"):
            config = r["config"] + (" !error-prone" if r["error_prone"] else "")
            table.append([r["model"], config, energy_cell(r["energy_net_j"], r["energy_source"]),
                          plain(r["time_s"], "s"), per_token_cell(r["j_per_token"], r["energy_source"]),
                          plain(r["ms_per_token"]), match_cell(r["match_rate"], r.get("match_rate_tie_aware")),
                          quality_cell(r.get("nll_excess_nats_per_token"), r.get("native_nll_excess_nats_per_token"),
                                       r.get("quality_matched"))])
        lines.append(f"greenserve medians on {machine} ({int(sm['n'].sum())} samples):")
        lines += text_table(TERMINAL_HEADERS, table)
    if s["error_prone"].any():
        lines.append("!error-prone: outputs disagreed with torch; excluded from the statistics")
    if report_path is not None:
        lines.append(f"greenserve report: {report_path}")
    return lines
