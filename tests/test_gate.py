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
    assert gate.one_sided_p([4, 5, 6], [1, 2, 3], "greater", test="mwu") == pytest.approx(1 / 20)
    assert gate.one_sided_p([4, 5, 6], [1, 2, 3], "less", test="mwu") == pytest.approx(1.0)
    assert gate.smallest_p(3, 3, "mwu") == pytest.approx(0.05) and gate.smallest_p(5, 5, "mwu") == pytest.approx(1 / 252)
    assert gate.smallest_p(5, 5, "logt") == 0.0  # a t-test's p-values are continuous
    # one swap: U = 8 of 9; P(U >= 8) = 2/20
    assert gate.one_sided_p([2.5, 5, 6], [1, 2, 3], "greater", test="mwu") == pytest.approx(2 / 20)
    rng = random.Random(1)
    x, y = [rng.gauss(1.1, 0.1) for _ in range(7)], [rng.gauss(1.0, 0.1) for _ in range(6)]
    assert gate.one_sided_p(x, y, "greater", test="mwu") == pytest.approx(
        mannwhitneyu(x, y, alternative="greater").pvalue)


def test_welch_one_sided_against_scipy_and_the_default_is_on_log_values():
    from scipy.stats import ttest_ind

    x, y = [1.2, 1.3, 1.25, 1.31], [1.0, 1.1, 1.05]
    assert gate.one_sided_p(x, y, "greater", test="welch") == pytest.approx(
        ttest_ind(x, y, equal_var=False, alternative="greater").pvalue)
    assert gate.DEFAULT_TEST == "logt"
    assert gate.one_sided_p(x, y, "greater") == pytest.approx(
        ttest_ind([math.log(v) for v in x], [math.log(v) for v in y], equal_var=False, alternative="greater").pvalue)


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
    assert c.verdict == "regression" and c.change_pct == pytest.approx(10) and c.p_value < 1e-4
    # 2% worse, perfectly separated: significant but within the 5% threshold -> same, and the
    # gate could have seen 5% (its detectable change at this spread is below the threshold)
    c = verdict(base, rows([102, 103, 101, 102.5, 101.5]))
    assert c.verdict == "same" and c.detectable_pct < 5
    # 10% worse in the median but overlapping everywhere: the gate cannot tell -> undecided, with
    # how small a change it could see and how many runs the threshold would need
    c = verdict(base, rows([60, 110, 140, 111, 90]))
    assert c.verdict == "undecided" and c.detectable_pct > 5 and c.runs_needed > 5
    assert f"sees only changes of {c.detectable_pct:.1f}% or more at 5 against 5 runs" in c.reason
    assert f"about {c.runs_needed} runs per side" in c.reason
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
    assert c.verdict == "undecided" and "this run has 2 measured of 2 samples (needs 3)" in c.reason
    c = verdict(rows([100, 101, 99]), rows([110, 111, 109]), test="mwu")  # Mann-Whitney cannot reach 0.01 with 3+3
    assert c.verdict == "undecided" and "cannot reach p < 0.01" in c.reason and c.detectable_pct is None
    assert verdict(rows([100, 101, 99]), rows([110, 111, 109])).verdict == "regression"  # the t-test can
    c = verdict(rows([100, 101, 99, 100.5, 99.5]), rows([100, 101, 99, 100.5, 99.5]), test="mwu",
                family_size=3)  # 5+5: p >= 1/252, and 0.01 / 3 is below it: Holm could never flag it
    assert c.verdict == "undecided" and "cannot reach p < 0.0033 (alpha 0.01 over 3 comparisons)" in c.reason


def test_flagged_samples_are_tested_and_count_against_the_candidate():
    base = rows([100, 101, 99, 100.5, 99.5])
    # a regression whose own samples are flagged unsteady is still a regression (nothing left out)
    c = verdict(base, rows([110, 111, 109], unsteady=True) + rows([110.5, 109.5]))
    assert c.verdict == "regression" and c.flags == {"this run": {"unsteady": 3}}
    # an occasional stall: the median moved worse beyond the threshold, the test cannot decide,
    # the candidate is flagged: never "same"
    stalled = rows([100, 108, 180], unsteady=True) + rows([107, 99.5])
    c = verdict(base, stalled)
    assert c.verdict == "undecided" and "3 unsteady of 5 samples flagged" in c.reason
    # low_resolution concerns only coarse meters: time and estimated CPU energy are never flagged
    short = rows([110, 111, 109, 110.5, 109.5], low_resolution=True, energy_cpu_source="estimated-cpu-time")
    c = verdict(base, short, "energy:5%,time:5%".split(",")[0])
    assert c.verdict == "regression" and c.flags == {}
    result = gate.compare(base, short, gate.parse_thresholds("time:5%"))
    assert result.comparisons[0].flags == {} and result.comparisons[0].verdict == "regression"
    nvml = rows([110, 111, 109, 110.5, 109.5], low_resolution=True, energy_gpu_source="nvml-counter")
    c = verdict(base, nvml)
    assert c.verdict == "regression" and c.flags == {"this run": {"low_resolution": 5}}
    assert "[flagged this run: 5 low_resolution]" in gate.table_lines(gate.compare(
        base, nvml, gate.parse_thresholds("energy:5%")))[1]


def test_changed_outputs_are_a_failure_of_their_own():
    base = rows([100, 101, 99, 100.5, 99.5])
    result = gate.compare(base, rows([100, 101, 99, 100.5, 99.5], error_prone=True, match_rate_tie_aware=0.9),
                          gate.parse_thresholds("energy:5%"))
    (c,) = result.comparisons
    assert c.verdict == "outputs-changed" and "match rate 90%" in c.reason
    assert result.exit_status() == gate.EXIT_OUTPUTS_CHANGED == 8
    c = verdict(rows([100, 101, 99], error_prone=True), rows([100, 101, 99]))
    assert c.verdict == "undecided" and "save a new baseline" in c.reason


def test_exit_status_of_each_verdict_and_the_undecided_policy():
    base = rows([100, 101, 99, 100.5, 99.5])
    spec = gate.parse_thresholds("energy:5%")
    assert gate.compare(base, rows([110, 111, 109, 110.5, 109.5]), spec).exit_status() == gate.EXIT_REGRESSION == 6
    undecided = gate.compare(base, rows([60, 110, 140, 111, 90]), spec)
    assert undecided.exit_status() == gate.EXIT_UNDECIDED == 7 and undecided.exit_status("pass") == 0
    assert gate.compare(base, rows([100, 100.5, 99.6, 100.2, 99.8]), spec).exit_status() == 0
    nothing = gate.compare(base, rows([100, 101, 99], config="other"), spec)
    assert not nothing.comparisons and nothing.exit_status() == gate.EXIT_UNDECIDED
    assert nothing.unmatched_base == [("mini-gpt2", "torch-cpu")] and nothing.unmatched_now == [("mini-gpt2", "other")]
    assert "FAILED (could not judge)" in gate.summary_line(undecided, "main")
    assert "passed" in gate.summary_line(undecided, "main", undecided="pass")


def test_a_default_multi_item_session_can_fail_one_planted_item_among_15():
    rng = random.Random(11)
    noisy = lambda factor: [100 * factor * math.exp(rng.gauss(0, 0.01)) for _ in range(5)]  # noqa: E731
    base = [r for i in range(15) for r in rows(noisy(1.0), config=f"cfg{i}")]
    planted = [r for i in range(15) for r in rows(noisy(1.3 if i == 7 else 1.0), config=f"cfg{i}")]
    result = gate.compare(base, planted, gate.parse_thresholds(gate.DEFAULT_FAIL))
    assert result.family_size == 15
    assert [c.config for c in result.comparisons if c.verdict == "regression"] == ["cfg7"]
    assert result.exit_status() == 6
    aa = [r for i in range(15) for r in rows(noisy(1.0), config=f"cfg{i}")]
    result = gate.compare(base, aa, gate.parse_thresholds(gate.DEFAULT_FAIL))
    assert not result.failed and "regression" not in result.verdicts()


def test_detectable_change_agrees_with_a_simulation_of_the_same_spread():
    import numpy as np
    from scipy.stats import ttest_ind

    rng = np.random.default_rng(5)
    for n, spread, family in ((5, 0.02, 1), (5, 0.02, 15), (8, 0.05, 3)):
        z = rng.standard_normal(n)
        z = (z - z.mean()) / z.std(ddof=1)  # exactly the spread asked for
        values = list(100 * np.exp(spread * z))
        alpha_m = gate.adjusted_alpha(gate.DEFAULT_ALPHA, family)
        detectable = gate.detectable_pct(values, values, alpha_m)
        trials = 1500
        a = rng.normal(0, spread, (trials, n))
        b = rng.normal(math.log1p(detectable / 100), spread, (trials, n))
        power = float(np.mean(ttest_ind(b, a, axis=1, equal_var=False, alternative="greater").pvalue < alpha_m))
        assert 0.72 <= power <= 0.92, (n, spread, family, detectable, power)  # the goal: 80%
        # the runs the threshold needs make the detectable change reach it
        need = gate.runs_needed(values, values, 3.0, alpha_m)
        at_need = gate._detectable_log(spread, need, spread, need, alpha_m, "logt")
        before = gate._detectable_log(spread, need - 1, spread, need - 1, alpha_m, "logt")
        assert math.expm1(at_need) * 100 <= 3.0 and (need == gate.MIN_RUNS or math.expm1(before) * 100 > 3.0)


def test_holm_across_items_and_overrides():
    base = rows([100, 101, 99, 100.5, 99.5]) + rows([100, 101, 99, 100.5, 99.5], config="onnx-cpu")
    now = rows([110, 111, 109, 110.5, 109.5]) + rows([110, 111, 109, 110.5, 109.5], config="onnx-cpu")
    result = gate.compare(base, now, gate.parse_thresholds("energy:5%"), test="mwu")
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


def test_decided_and_auto_runs_use_the_sessions_family():
    base = rows([100, 101, 99, 100.5, 99.5])
    thresholds = gate.parse_thresholds("energy:5%")
    assert gate.decided(base, rows([130, 131, 129, 130.5, 129.5]), thresholds)  # a clear regression
    assert gate.decided(base, rows([100.2, 100.1, 99.9, 100.3, 99.8]), thresholds)  # clearly within 5%
    assert not gate.decided(base, rows([60, 140, 100, 150, 90]), thresholds)  # noise: add repetitions
    # the same evidence is not enough once the family is large: the verdict could not follow
    within = rows([102.6, 103.4, 101.9, 103.1, 102.2])
    assert gate.decided(base, within, thresholds) and not gate.decided(base, within, thresholds, family_size=200)
    # the cap moves with the number of comparisons
    spread = rows([100 * math.exp(0.02 * z) for z in (-1.2, -0.5, 0.0, 0.4, 1.3)])
    caps = [gate.auto_runs(spread, gate.parse_thresholds("energy:3%"), m) for m in (1, 15, 200)]
    assert gate.MIN_RUNS <= caps[0] < caps[1] < caps[2] <= gate.AUTO_RUNS_MAX


def test_gate_json_holds_every_field_and_the_exit_status():
    base = rows([100, 101, 99, 100.5, 99.5])
    result = gate.compare(base, rows([110, 111, 109, 110.5, 109.5]), gate.parse_thresholds("energy:5%"))
    doc = json.loads(json.dumps(gate.gate_json(result, "main", "fail", exit_status=6)))
    (c,) = doc["comparisons"]
    for key in ("model", "config", "metric", "baseline_median", "current_median", "change_pct", "p_value",
                "p_adjusted", "verdict", "reason", "detectable_pct", "runs_needed", "flags"):
        assert key in c
    assert doc["exit_status"] == 6 and c["verdict"] == "regression" and c["config"] == "torch-cpu"


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


def test_a_baseline_of_another_workload_is_refused_naming_the_option(tmp_path):
    meta = dict(META, options={"runs": 5, "prompts": 40, "new_tokens": 32, "dtype": "fp32", "threads": None})
    doc = baselines.load(baselines.save(tmp_path, "main", rows([1, 2, 3]), meta, "vm"))
    baselines.check_workload(doc, {"prompts": 40, "new_tokens": 32, "dtype": "fp32", "threads": None, "seed": 1})
    with pytest.raises(baselines.BaselineError) as exc:
        baselines.check_workload(doc, {"prompts": 164, "new_tokens": 32})
    assert "--greenserve-prompts=40, this session has --greenserve-prompts=164" in str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(baselines.BaselineError, match="--greenserve-threads=[(]library default[)], this session has "
                                                      "--greenserve-threads=2"):
        baselines.check_workload(doc, {"threads": 2})


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
