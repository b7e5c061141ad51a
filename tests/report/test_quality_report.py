"""The quality column, the exclusion's reason and the Pareto plot's marks (issue 19), from
synthetic samples that carry quality fields as a session writes them."""

from __future__ import annotations

from pytest_greenserve.report import terminal_summary, write_reports
from pytest_greenserve.report.tables import quality_cell

from report.synth import make_rows


def quality(rows, config, *, excess, native, low, matched):
    for r in rows:
        if r["config"] == config:
            r.update(nll_excess_nats_per_token=excess, native_nll_excess_nats_per_token=native,
                     nll_vs_native_nats_per_token=excess - native, nll_vs_native_low_nats_per_token=low,
                     quality_matched=matched, error_prone=None, dtype="bf16", match_rate=0.1,
                     match_rate_tie_aware=0.12)
    return rows


def rows_with_quality():
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu", "openvino-cpu"), reps=4)
    quality(rows, "torch-cpu", excess=-0.007, native=-0.007, low=0.0, matched=True)
    quality(rows, "onnx-cpu", excess=-0.010, native=-0.007, low=-0.02, matched=True)
    quality(rows, "openvino-cpu", excess=0.850, native=-0.007, low=0.61, matched=False)
    return rows


def test_the_quality_cell_says_the_figure_the_yardstick_and_the_verdict():
    assert quality_cell(0.0123, 0.0101, True) == "+0.012 (torch +0.010): matched"
    assert quality_cell(0.85, -0.007, False) == "+0.850 (torch -0.007): worse than torch"
    assert quality_cell(None) == "not scored"
    assert quality_cell(0.5) == "+0.500"


def test_reports_show_quality_and_exclude_only_what_is_worse_than_torch(tmp_path):
    rows = rows_with_quality()
    paths = write_reports(rows, tmp_path, {"run_id": "q"})
    summary = paths["summary"].read_text(encoding="utf-8")
    assert "quality (NLL excess, nats/token; torch in the same dtype)" in summary
    assert "-0.010 (torch -0.007): matched" in summary  # 10% exact match, yet kept: its quality matches
    assert "+0.850 (torch -0.007): worse than torch" in summary
    excluded = summary.split("## Excluded configurations")[1].split("##")[0]
    assert "openvino-cpu" in excluded and "onnx-cpu" not in excluded and "torch-cpu" not in excluded
    assert "NLL excess +0.850 nats/token against torch's -0.007" in excluded
    assert "lower bootstrap bound of the difference +0.610" in excluded
    html = paths["html"].read_text(encoding="utf-8")
    assert "grey crosses are not quality-matched (error-prone, off the front): openvino-cpu" in html
    lines = terminal_summary(rows)
    assert any("openvino-cpu !error-prone" in x and "worse than torch" in x for x in lines)


def test_samples_without_quality_fields_read_as_not_scored(tmp_path):
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu",), reps=3)
    summary = write_reports(rows, tmp_path, {"run_id": "old"})["summary"].read_text(encoding="utf-8")
    assert "not scored" in summary
