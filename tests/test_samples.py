"""The sample builder's consistency fields: strict and tie-aware match rates, error-prone, and
the placement audit (issue 8, §6 and §7)."""

from __future__ import annotations

import pytest

from pytest_greenserve.configs import ServingConfig
from pytest_greenserve.measure import Measurement
from pytest_greenserve.metrics import builtin_metrics
from pytest_greenserve.references import Reference
from pytest_greenserve.results import mark_error_prone
from pytest_greenserve.samples import (DEFAULT_TIE_TOLERANCE, build_sample, first_divergence, is_near_tie,
                                       match_rate, match_rate_tie_aware)

# four prompts of six tokens; the first prompt's reference nearly ties at step 3
REF_IDS = [[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6], [9, 9, 9, 9, 9, 9], [3, 1, 4, 1, 5, 9]]
WIDE, TIE = 2.5, 2e-5
MARGINS = [[WIDE, WIDE, WIDE, TIE, WIDE, WIDE]] + [[WIDE] * 6 for _ in range(3)]


def sample(outputs, reference, provider="cpu", placement=None, engine="onnx"):
    m = Measurement(outputs=[list(o) for o in outputs], latencies_s=[0.1] * len(outputs),
                    ttfts_s=[0.01] * len(outputs), time_s=0.4)
    return build_sample(run_id="r", machine="m", model="tiny", category=1, weights="w",
                        config=ServingConfig(engine, provider), repetition=1, order=1, new_tokens=6,
                        prompt_ids=[[1, 2]] * len(outputs), measurement=m, reference=reference,
                        versions={}, metrics=builtin_metrics(), placement=placement)


def test_a_divergence_at_a_near_tie_is_not_an_error():
    # prompt 0 departs at step 3, where the reference's top-2 gap is 2e-5; the continuation differs
    outputs = [[5, 6, 7, 11, 12, 13]] + REF_IDS[1:]
    s = sample(outputs, Reference(REF_IDS, MARGINS))
    assert s["match_rate"] == 0.75
    assert s["match_rate_tie_aware"] == 1.0
    assert s["error_prone"] is False


def test_a_divergence_at_a_wide_margin_is_an_error():
    outputs = [[5, 6, 42, 8, 9, 10]] + REF_IDS[1:]  # step 2: gap 2.5
    s = sample(outputs, Reference(REF_IDS, MARGINS))
    assert s["match_rate"] == 0.75 and s["match_rate_tie_aware"] == 0.75
    assert s["error_prone"] is True


def test_only_the_first_divergence_counts():
    # wrong at the wide step 4 only after agreeing through the tie: an error
    assert not is_near_tie([5, 6, 7, 8, 0, 10], REF_IDS[0], MARGINS[0])
    # departing at the tie (step 3): what follows is not compared
    assert is_near_tie([5, 6, 7, 0, 0, 0], REF_IDS[0], MARGINS[0])
    assert first_divergence(REF_IDS[0], REF_IDS[0]) is None
    assert first_divergence([5, 6], REF_IDS[0]) == 2  # a short output departs where it ends
    assert not is_near_tie([5, 6], [5, 6, 7], [1.0, 1.0, TIE])


def test_the_tolerance_is_a_bound_on_the_reference_margin():
    outputs = [[5, 6, 7, 11, 12, 13]]
    ref = Reference(REF_IDS[:1], [[WIDE, WIDE, WIDE, 5e-4, WIDE, WIDE]])
    assert match_rate_tie_aware(outputs, ref) == 1.0 and 5e-4 < DEFAULT_TIE_TOLERANCE
    assert match_rate_tie_aware(outputs, ref, tolerance=1e-4) == 0.0


def test_without_margins_the_strict_rate_decides():
    outputs = [[5, 6, 7, 11, 12, 13]] + REF_IDS[1:]
    s = sample(outputs, [list(r) for r in REF_IDS])  # a plain list: no margins recorded
    assert s["match_rate_tie_aware"] is None and s["error_prone"] is True
    assert match_rate(outputs, None) is None and match_rate_tie_aware(outputs, None) is None
    nothing = sample(outputs, None)
    assert nothing["match_rate"] is None and nothing["match_rate_tie_aware"] is None and nothing["error_prone"] is None


def test_mark_error_prone_uses_the_tie_aware_rate_where_there_is_one():
    tie = {"machine": "m", "model": "tiny", "config": "onnx-cuda", "match_rate": 31 / 32,
           "match_rate_tie_aware": 1.0, "error_prone": False}
    wrong = {"machine": "m", "model": "tiny", "config": "jit-cuda", "match_rate": 31 / 32,
             "match_rate_tie_aware": 31 / 32, "error_prone": False}
    old = {"machine": "m", "model": "tiny", "config": "openvino-cpu", "match_rate": 31 / 32}  # older run
    rows = mark_error_prone([tie, dict(tie, repetition=2), wrong, old])
    assert [r["error_prone"] for r in rows] == [False, False, True, True]


def test_the_registry_knows_the_tie_aware_rate():
    metric = builtin_metrics()["match_rate_tie_aware"]
    assert metric.better == "higher" and metric.kind == "quality" and not metric.analysed


def test_the_placement_is_stored_and_compute_on_cpu_flags_a_cuda_configuration():
    clean = {"nodes_per_provider": {"CUDAExecutionProvider": 9, "CPUExecutionProvider": 6}, "memcpy": 2,
             "fallback_ops": {"Gather": 2, "Shape": 1}, "compute_on_cpu": {}}
    s = sample(REF_IDS, Reference(REF_IDS, MARGINS), provider="cuda", placement=clean)
    assert s["placement"] == clean and s["not_fully_on_cuda"] is False
    blamed = dict(clean, compute_on_cpu={"MatMul": 1})
    assert sample(REF_IDS, None, provider="cuda", placement=blamed)["not_fully_on_cuda"] is True
    # no audit, or not a CUDA configuration: no flag
    assert sample(REF_IDS, None, provider="cuda")["not_fully_on_cuda"] is None
    cpu = sample(REF_IDS, None, provider="cpu", placement=dict(clean, compute_on_cpu={}))
    assert cpu["not_fully_on_cuda"] is None and cpu["placement"]["memcpy"] == 2


def test_placement_stays_out_of_samples_csv():
    from pytest_greenserve.results import sample_columns

    cols = sample_columns(builtin_metrics())
    assert "placement" not in cols and "not_fully_on_cuda" not in cols and "match_rate_tie_aware" in cols


@pytest.mark.parametrize("strict,tie,text", [(0.96875, 1.0, "97% / 100%"), (1.0, None, "100%"), (None, None, "—")])
def test_the_summary_shows_both_rates(strict, tie, text):
    from pytest_greenserve.report.tables import match_cell

    assert match_cell(strict, tie) == text


def test_the_report_notes_the_placement_and_flags_not_fully_on_cuda():
    from pytest_greenserve.results import samples_frame
    from pytest_greenserve.stats import analyze

    clean = {"nodes_per_provider": {"CUDAExecutionProvider": 900, "CPUExecutionProvider": 40}, "memcpy": 2,
             "fallback_ops": {"Gather": 20, "Shape": 20}, "compute_on_cpu": {}}
    blamed = dict(clean, fallback_ops={"Gather": 20, "MatMul": 1}, compute_on_cpu={"MatMul": 1})
    rows = [sample(REF_IDS, None, provider="cuda", placement=clean),
            sample(REF_IDS, None, provider="cuda", placement=blamed, engine="other"),
            sample(REF_IDS, None, provider="cpu", placement=clean, engine="torch")]
    notes = analyze(samples_frame(rows)).notes
    onnx = [n for n in notes if "onnx-cuda placement" in n]
    assert onnx == ["m / tiny: onnx-cuda placement: 900 nodes on CUDAExecutionProvider, 40 on CPUExecutionProvider "
                    "(Gather×20, Shape×20), 2 Memcpy; every compute operator on CUDA (shape operators on the CPU "
                    "are expected)"]
    other = [n for n in notes if "other-cuda placement" in n]
    assert len(other) == 1 and "NOT FULLY ON CUDA: compute operators on the CPU (MatMul×1)" in other[0]
    assert not any("torch-cpu placement" in n for n in notes)
