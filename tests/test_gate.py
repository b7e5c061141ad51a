"""The CI energy gate: thresholds, the decision (hand-checked against scipy), baselines and
their refusals, pytest-benchmark's entries; end to end (pytester, slow): A/A passes, a planted
regression fails with the table, the marker overrides the option, refusals are one line,
pytest-benchmark's own CLI reads the entries back."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_greenserve import baselines, gate
from pytest_greenserve.benchmark_interop import entries

# ---------------------------------------------------------------- thresholds


def test_thresholds_relative_absolute_and_aliases():
    t = gate.parse_thresholds("energy:5%, time:10%,energy_total_j:20J,ms_per_token:0.5ms,time_s:200ms")
    assert [(x.metric, x.value, x.relative) for x in t] == [
        ("energy", 5.0, True), ("time", 10.0, True), ("energy_total_j", 20.0, False),
        ("ms_per_token", 0.5, False), ("time_s", pytest.approx(0.2), False)]


@pytest.mark.parametrize("text, words", [
    ("ram_pct:5%", "is not gateable"), ("watts:5%", "is not a metric"), ("energy:5", "needs a unit"),
    ("energy", "is not METRIC:THRESHOLD"), ("energy:fast", "is not a number"), ("", "empty"),
    ("time:3J", "needs a unit")])
def test_threshold_errors_are_one_line(text, words):
    with pytest.raises(gate.GateError, match=words) as exc:
        gate.parse_thresholds(text)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------- the statistics, by hand


def test_one_sided_mann_whitney_by_hand_and_against_scipy():
    from scipy.stats import mannwhitneyu

    # 3 against 3, every "now" above every "baseline": 1 arrangement of C(6,3) = 20
    assert gate.one_sided_p([4, 5, 6], [1, 2, 3], "greater") == pytest.approx(1 / 20)
    assert gate.one_sided_p([4, 5, 6], [1, 2, 3], "less") == pytest.approx(1.0)
    assert gate.smallest_p(3, 3) == pytest.approx(0.05) and gate.smallest_p(5, 5) == pytest.approx(1 / 252)
    # one swap: U = 8 of 9; P(U >= 8) = 2/20
    assert gate.one_sided_p([2.5, 5, 6], [1, 2, 3], "greater") == pytest.approx(2 / 20)
    rng = random.Random(1)
    x, y = [rng.gauss(1.1, 0.1) for _ in range(7)], [rng.gauss(1.0, 0.1) for _ in range(6)]
    assert gate.one_sided_p(x, y, "greater") == pytest.approx(mannwhitneyu(x, y, alternative="greater").pvalue)


def test_welch_one_sided_against_scipy():
    from scipy.stats import ttest_ind

    x, y = [1.2, 1.3, 1.25, 1.31], [1.0, 1.1, 1.05]
    assert gate.one_sided_p(x, y, "greater", test="welch") == pytest.approx(
        ttest_ind(x, y, equal_var=False, alternative="greater").pvalue)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert gate.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert gate.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------- decisions


def rows(values, model="mini-gpt2", config="torch-cpu", metric="energy_total_j", **extra):
    return [{"model": model, "config": config, metric: v, "time_s": v / 10, **extra} for v in values]


def verdict(base, now, spec="energy:5%", **kw):
    result = gate.compare(base, now, gate.parse_thresholds(spec), **kw)
    assert len(result.comparisons) == 1
    return result.comparisons[0]


def test_regression_needs_both_the_threshold_and_the_test():
    base = rows([100, 101, 99, 100.5, 99.5])
    c = verdict(base, rows([110, 111, 109, 110.5, 109.5]))
    assert c.verdict == "regression" and c.change_pct == pytest.approx(10) and c.p_value == pytest.approx(1 / 252)
    # 2% worse, perfectly separated: significant but within the 5% threshold -> same
    assert verdict(base, rows([102, 103, 101, 102.5, 101.5])).verdict == "same"
    # 10% worse in the median but overlapping everywhere: not significant -> same
    assert verdict(base, rows([60, 110, 140, 111, 90])).verdict == "same"
    # better by 10%: improved
    assert verdict(base, rows([90, 91, 89, 90.5, 89.5])).verdict == "improved"


def test_higher_is_better_metrics_and_absolute_thresholds():
    from pytest_greenserve.metrics import Metric, builtin_metrics

    reg = builtin_metrics()
    reg["tokens_per_s"] = Metric("tokens_per_s", "tokens/s", "throughput", better="higher", gateable=True)
    base = rows([100, 101, 99, 100.5, 99.5], metric="tokens_per_s")
    now = rows([80, 81, 79, 80.5, 79.5], metric="tokens_per_s")
    c = gate.compare(base, now, gate.parse_thresholds("tokens_per_s:5%", reg), metrics=reg).comparisons[0]
    assert c.verdict == "regression" and c.change_pct == pytest.approx(-20)
    assert verdict(rows([100, 101, 99, 100.5, 99.5]), rows([110, 111, 109, 110.5, 109.5]),
                   "energy_total_j:20J").verdict == "same"
    assert verdict(rows([100, 101, 99, 100.5, 99.5]), rows([130, 131, 129, 130.5, 129.5]),
                   "energy_total_j:20J").verdict == "regression"


def test_energy_alias_falls_back_to_gross_energy():
    base = rows([100, 101, 99, 100.5, 99.5], metric="energy_total_j")
    c = verdict(base, rows([110, 111, 109, 110.5, 109.5], metric="energy_total_j"))
    assert c.metric == "energy_total_j" and c.verdict == "regression"


def test_undecided_says_why():
    base = rows([100, 101, 99, 100.5, 99.5])
    c = verdict(base, rows([110, 111]))
    assert c.verdict == "undecided" and "this run has 2 usable of 2 samples" in c.reason
    flagged = rows([110, 111, 109], unsteady=True) + rows([110.5, 109.5])
    c = verdict(base, flagged)
    assert c.verdict == "undecided" and "unsteady: 3" in c.reason
    c = verdict(base, rows([110, 111, 109, 110.5, 109.5], low_resolution=True))
    assert c.verdict == "undecided" and "low_resolution: 5" in c.reason
    c = verdict(base, rows([110, 111, 109, 110.5, 109.5], error_prone=True))
    assert c.verdict == "undecided" and "error-prone" in c.reason
    c = verdict(rows([100, 101, 99]), rows([110, 111, 109]))  # Mann-Whitney cannot reach 0.01 with 3+3
    assert c.verdict == "undecided" and "cannot reach p < 0.01" in c.reason
    assert verdict(rows([100, 101, 99]), rows([110, 111, 109]), test="welch").verdict == "regression"


def test_holm_across_items_and_overrides():
    base = rows([100, 101, 99, 100.5, 99.5]) + rows([100, 101, 99, 100.5, 99.5], config="onnx-cpu")
    now = rows([110, 111, 109, 110.5, 109.5]) + rows([110, 111, 109, 110.5, 109.5], config="onnx-cpu")
    result = gate.compare(base, now, gate.parse_thresholds("energy:5%"))
    assert [c.p_value for c in result.comparisons] == pytest.approx([2 / 252, 2 / 252]) and result.failed
    result = gate.compare(base, now, gate.parse_thresholds("energy:5%"),
                          overrides={("mini-gpt2", "onnx-cpu"): gate.parse_thresholds("energy:20%")})
    assert [c.verdict for c in result.comparisons] == ["regression", "same"]
    assert "baseline -> now" in gate.table_lines(result)[0]


def test_energy_is_gross_energy_and_the_table_says_how_it_was_obtained():
    # net energy unchanged, gross 10% worse: "energy" gates on gross (calibrated in docs/gate.md)
    src = {"energy_cpu_source": "estimated-cpu-time", "energy_gpu_source": "nvml-counter"}
    base = [dict(r, energy_net_j=50.0, **src) for r in rows([100, 101, 99, 100.5, 99.5])]
    now = [dict(r, energy_net_j=50.0, **src) for r in rows([110, 111, 109, 110.5, 109.5])]
    result = gate.compare(base, now, gate.parse_thresholds("energy:3%,energy_net_j:3%"))
    by_metric = {c.metric: c for c in result.comparisons}
    assert by_metric["energy_total_j"].verdict == "regression" and by_metric["energy_net_j"].verdict == "same"
    assert by_metric["energy_total_j"].source == "estimated-cpu-time+nvml-counter"
    line = next(row for row in gate.table_lines(result) if "energy_total_j" in row)
    assert "energy_total_j [estimated-cpu-time+nvml-counter] (fail" in line
    # a metric that is not an energy carries no source
    assert gate.compare(base, now, gate.parse_thresholds("time:3%")).comparisons[0].source is None


def test_a_a_draws_from_one_distribution_rarely_fail():
    rng = random.Random(7)
    trials, failed = 300, 0
    for _ in range(trials):
        draw = lambda: [100 * math.exp(rng.gauss(0, 0.05)) for _ in range(8)]  # noqa: E731
        failed += gate.compare(rows(draw()), rows(draw()), gate.parse_thresholds("energy:2%")).failed
    assert failed / trials <= 0.03  # alpha 0.01 plus binomial noise over 300 trials; the goal is <= 5%


def test_decided_for_runs_auto():
    base = rows([100, 101, 99, 100.5, 99.5])
    thresholds = gate.parse_thresholds("energy:5%")
    assert gate.decided(base, rows([130, 131, 129, 130.5, 129.5]), thresholds)  # a clear regression
    assert gate.decided(base, rows([100.2, 100.1, 99.9, 100.3, 99.8]), thresholds)  # clearly within 5%
    assert not gate.decided(base, rows([60, 140, 100, 150, 90]), thresholds)  # noise: add repetitions


# ---------------------------------------------------------------- baselines


META = {"run_id": "r1", "machine_info": {"hostname": "vm", "cpu_count": 2}, "versions": {"torch": "2"},
        "options": {"runs": 5}}


def test_baseline_round_trip_latest_and_atomic(tmp_path):
    path = baselines.save(tmp_path, "main", rows([1, 2, 3]), META, "vm (2 CPUs)")
    assert path == tmp_path / "baselines" / "main.json"
    assert [p.name for p in path.parent.iterdir()] == ["main.json"]  # no temporary left
    doc = baselines.load(baselines.resolve("main", tmp_path))
    assert doc["schema_version"] == baselines.BASELINE_SCHEMA and len(doc["samples"]) == 3
    assert doc["fingerprint"]["cpu_count"] == 2 and doc["versions"] == {"torch": "2"}
    assert baselines.resolve("latest", tmp_path) == path
    assert baselines.resolve(str(path), tmp_path) == path
    baselines.check_machine(doc, dict(doc["fingerprint"]))
    assert baselines.check_matching(doc, {("mini-gpt2", "torch-cpu"), ("x", "y")}) == {("mini-gpt2", "torch-cpu")}


def test_baseline_refusals_are_one_line(tmp_path):
    path = baselines.save(tmp_path, "main", rows([1, 2, 3]), META, "vm (2 CPUs)")
    good = path.read_text()
    cases = {"does not exist": None, "not valid JSON (truncated?)": good[: len(good) // 2],
             "not a pytest-greenserve baseline": json.dumps({"samples": []}),
             "newer than this": good.replace('"schema_version": 1', '"schema_version": 99'),
             "holds no samples": json.dumps({"kind": "greenserve-baseline", "schema_version": 1, "samples": []})}
    for words, text in cases.items():
        target = tmp_path / "b.json"
        if text is None:
            target.unlink(missing_ok=True)
        else:
            target.write_text(text)
        with pytest.raises(baselines.BaselineError, match=re.escape(words)) as exc:
            baselines.load(target)
        assert "\n" not in str(exc.value)
    doc = baselines.load(path)
    other = dict(doc["fingerprint"], cpu_count=64, gpu="NVIDIA H100 80GB HBM3")
    with pytest.raises(baselines.BaselineError, match="other hardware.*--greenserve-compare-any-machine"):
        baselines.check_machine(doc, other)
    baselines.check_machine(doc, other, any_machine=True)
    with pytest.raises(baselines.BaselineError, match="has no item of this session"):
        baselines.check_matching(doc, {("phi2", "onnx-cuda")})
    with pytest.raises(baselines.BaselineError, match="no baseline in"):
        baselines.resolve("latest", tmp_path / "empty")


def test_benchmark_entries_carry_rounds_and_energy():
    samples = [dict(r, energy_total_j=r["energy_net_j"] + 5, tokens_generated=64, order=i)
               for i, r in enumerate(rows([10, 12, 11], metric="energy_net_j"))]
    (e,) = entries(samples)
    assert e["name"] == "test_greenserve[mini-gpt2-torch-cpu]" and e["rounds"] == [1.0, 1.2, 1.1]
    assert e["extra_info"]["energy_net_j"] == 11 and e["extra_info"]["tokens_generated"] == 64
    assert e["extra_info"]["energy_net_j_per_repetition"] == [10, 12, 11]


# ------------------------------------------------------------------ the fingerprint lists every GPU (issue 18)

def _fp(gpu, gpus):
    from pytest_greenserve import baselines

    info = {"cpu_model": "X", "cpu_count": 16, "gpu": gpu}
    if gpus is not None:
        info["gpus"] = [{"index": i, "uuid": f"GPU-{i}", "name": n} for i, n in enumerate(gpus)]
    return baselines.fingerprint(info)


def test_fingerprint_gpu_models_decide_and_older_baselines_still_compare():
    from pytest_greenserve import baselines

    one_h200, two_h200 = _fp("H200", ["H200"]), _fp("H200", ["H200", "H200"])
    baselines.check_machine({"fingerprint": one_h200}, two_h200)  # each sample ran on one H200: alike
    old = {k: v for k, v in one_h200.items() if k != "gpus"}  # saved before the list existed
    baselines.check_machine({"fingerprint": old}, two_h200)
    with pytest.raises(baselines.BaselineError, match="GPU models: H200 there, A100, H200 here"):
        baselines.check_machine({"fingerprint": one_h200}, _fp("H200", ["H200", "A100"]))
