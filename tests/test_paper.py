"""The paper, side by side (issue 19): its headline ratios against a saved run's, with numbers,
intervals and directions; ``greenserve paper RUN_DIR``; the report.html section."""

from __future__ import annotations

import statistics
import subprocess
import sys

import numpy as np
import pytest

from pytest_greenserve.analysis.paper import compare, config_name, paper_facts, verdict
from pytest_greenserve.cli import main

from report.synth import sample, write_run

FACTS = paper_facts()
MEDIANS = FACTS["medians"]["configs"]


def paper_ratio(a, b, key):
    return MEDIANS[a][key] / MEDIANS[b][key]


def run_rows(reps=6):
    """torch-cuda as much faster than torch-cpu as in the paper; onnx-cpu *slower* than torch-cpu
    (the paper: faster); openvino-cpu saving a third of what the paper found; no onnx-cuda."""
    rng = np.random.default_rng(1)
    times = {"torch-cpu": 100.0, "torch-cuda": 100.0 / paper_ratio("torch-cpu", "torch-cuda", "time_s"),
             "onnx-cpu": 130.0, "openvino-cpu": 100.0 * paper_ratio("openvino-cpu", "torch-cpu", "time_s")}
    energy = {"torch-cpu": 2000.0, "torch-cuda": 2000.0 / paper_ratio("torch-cpu", "torch-cuda", "energy_j"),
              "onnx-cpu": 2000.0 * paper_ratio("onnx-cpu", "torch-cpu", "energy_j"),
              "openvino-cpu": 2000.0 * 0.95}
    rows = []
    for model, scale in (("codeparrot-small", 1.0), ("starcoderbase-1b", 3.0)):
        for config in times:
            for rep in range(reps):
                noise = rng.normal(1, 0.01)
                rows.append(sample(model, config, rep, time_s=times[config] * scale * noise,
                                   energy_j=energy[config] * scale * noise, cpu_source="rapl", gpu_source="nvml-counter"))
    return rows


def by(rows, scope, ratio, metric):
    (row,) = [r for r in rows if (r.scope, r.ratio, r.metric) == (scope, ratio, metric)]
    return row


def test_the_papers_figures_are_in_one_place_with_their_source():
    assert "arXiv:2412.15441" in FACTS["citation"]
    assert FACTS["medians"]["source"] and FACTS["by_category"]["source"]
    for a, b in FACTS["ratios"]:
        assert MEDIANS[a]["energy_j"] > 0 and MEDIANS[b]["time_s"] > 0
    assert [config_name(c) for c in ("torch-cpu", "openvino-cpu", "onnx-cuda")] == ["TORCH-CPU", "OV-CPU", "ONNX-CUDA"]


def test_numbers_and_directions_from_a_saved_run(tmp_path):
    from pytest_greenserve.results import read_run

    saved, _ = read_run(write_run(tmp_path, run_rows(), "run-p"))
    rows, notes = compare(saved)
    # the run's ratio is the median of A's samples over B's, both models pooled
    tc = [s["time_s"] for s in saved if s["config"] == "torch-cpu"]
    tg = [s["time_s"] for s in saved if s["config"] == "torch-cuda"]
    gpu = by(rows, "all models", "TORCH-CPU/TORCH-CUDA", "time")
    assert gpu.run == pytest.approx(statistics.median(tc) / statistics.median(tg))
    assert gpu.low < gpu.run < gpu.high and gpu.models == 2
    assert gpu.paper == pytest.approx(3009 / 184) and gpu.verdict == "agrees"
    # the paper: ONNX-CPU faster than TORCH-CPU; here slower: said so, with the direction
    onnx = by(rows, "all models", "ONNX-CPU/TORCH-CPU", "time")
    assert onnx.run == pytest.approx(1.3, rel=0.03) and onnx.low > 1
    assert onnx.verdict == "disagrees in direction"
    assert "the paper: ONNX-CPU faster than TORCH-CPU (×0.744)" in onnx.words
    assert "ONNX-CPU is slower than TORCH-CPU here" in onnx.words
    assert by(rows, "all models", "ONNX-CPU/TORCH-CPU", "energy").verdict == "agrees"
    # OV-CPU cheaper than TORCH-CPU in both, but by much less here
    ov = by(rows, "all models", "OV-CPU/TORCH-CPU", "energy")
    assert ov.verdict == "disagrees in size" and ov.high < 1 and "a narrower gap than the paper's" in ov.words
    assert not ov.estimated
    # per size category (codeparrot-small: 1, starcoderbase-1b: 2), each against the paper's all-model ratio
    cats = {r.scope for r in rows if r.ratio == "TORCH-CPU/TORCH-CUDA" and r.metric == "time"}
    assert cats == {"all models", "category 1 (under 1B parameters)", "category 2 (1-1.5B parameters)"}
    assert by(rows, "category 2 (1-1.5B parameters)", "TORCH-CPU/TORCH-CUDA", "time").paper_scope == "all 12 models"
    assert "run-p" not in notes and any("ONNX-CUDA/TORCH-CUDA not compared: onnx-cuda not in this run" in n
                                         for n in notes)


def test_verdicts_say_cannot_tell_when_the_run_cannot():
    assert verdict(2.0, 1.5, None, None, "A", "B", "energy")[0] == "cannot tell"
    assert verdict(2.0, None, None, None, "A", "B", "time") == ("cannot tell", "the paper: A slower than B (×2); "
                                                                              "not measured here")


def test_no_difference_shown_still_disagrees_with_a_paper_gap_outside_the_interval():
    """ONNX-CUDA/TORCH-CUDA on the H200: the paper's ×3.03, this run ×0.905 (0.61-1.04). No
    difference is shown, but a gap as large as the paper's is ruled out: a disagreement."""
    v, words = verdict(3.03, 0.905, 0.61, 1.04, "ONNX-CUDA", "TORCH-CUDA", "time")
    assert v == "disagrees in size" and "no difference shown here" in words
    assert "one as large as the paper's is outside the interval" in words
    # the interval spans 1 and holds the paper's ratio: that is agreement, not a disagreement
    assert verdict(1.1, 1.05, 0.9, 1.2, "A", "B", "time")[0] == "agrees"


def test_greenserve_paper_prints_the_table_and_the_disagreements(tmp_path, capsys):
    run = write_run(tmp_path, run_rows(), "run-p")
    assert main(["paper", str(run)]) == 0
    out = capsys.readouterr().out
    assert "arXiv:2412.15441" in out
    assert "ONNX-CPU/TORCH-CPU" in out and "×0.744 (all 12 models)" in out
    assert "Where this run disagrees with the paper:" in out
    assert "ONNX-CPU/TORCH-CPU time — disagrees in direction" in out
    assert "note: box-a: ONNX-CUDA/TORCH-CUDA not compared: onnx-cuda not in this run" in out


def test_greenserve_paper_on_a_missing_directory_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest_greenserve", "paper", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("greenserve: ")


def test_report_html_sets_the_paper_beside_the_run(tmp_path):
    from pytest_greenserve.report import write_reports

    html = write_reports(run_rows(reps=3), tmp_path, {"run_id": "p"})["html"].read_text(encoding="utf-8")
    assert "<h2>The paper, side by side</h2>" in html
    assert "ONNX-CPU is slower than TORCH-CPU here" in html


def test_a_run_with_nothing_the_paper_compared_says_so(tmp_path):
    rows = run_rows(reps=2)
    for r in rows:
        r["dtype"], r["config"] = "bf16", r["config"] + ":bf16"
    compared, notes = compare(rows)
    assert compared == [] and notes == ["no fp32, one-client samples: nothing to set against the paper"]
    from pytest_greenserve.report import write_reports

    html = write_reports(rows, tmp_path, {"run_id": "bf16"})["html"].read_text(encoding="utf-8")
    assert "The paper, side by side" not in html
    assert main(["paper", str(write_run(tmp_path / "runs", rows, "bf16"))]) == 0


def test_quantised_configurations_are_left_out_of_the_paper_ratios(tmp_path):
    """llamacpp-cpu:q8_0 is a quantisation, not a transport: the paper served unquantised
    weights, so it neither forms a comparison group of its own nor adds notes about one."""
    from pytest_greenserve.results import read_run

    rows = run_rows(reps=3)
    for config in ("llamacpp-cpu:q8_0", "llamacpp-cpu:f16"):
        for rep in range(3):  # as the engine saves them: the quantisation in the label, not the provider
            rows.append({**sample("codeparrot-small", config, rep, time_s=50.0, energy_j=900.0, cpu_source="rapl",
                                  gpu_source="nvml-counter"), "engine": "llamacpp", "provider": "cpu"})
    compared, notes = compare(read_run(write_run(tmp_path, rows, "run-q"))[0])
    assert {r.transport for r in compared} == {""}
    assert not [n for n in notes if "q8_0" in n or "f16" in n], notes
    assert by(compared, "all models", "TORCH-CPU/TORCH-CUDA", "time").verdict == "agrees"
