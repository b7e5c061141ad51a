"""The metric registry: one entry makes a metric reach samples.csv, stats.csv and report.html."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from pytest_greenserve.cli import main
from pytest_greenserve.metrics import (Metric, builtin_metrics, derive_fields, metrics_from_json, metrics_to_json,
                                       pytest_greenserve_register_metrics, resource_metrics)
from pytest_greenserve.report import write_reports
from report.synth import make_rows, write_run


def tokens_per_s(sample):
    tokens, time_s = sample.get("tokens_generated"), sample.get("time_s")
    return tokens / time_s if tokens is not None and time_s else None


THROUGHPUT = Metric("tokens_per_s", "tokens/s", "throughput", better="higher", kind="time", analysed=True,
                    plotted=True, derive=tokens_per_s)


def registry_with_throughput() -> dict[str, Metric]:
    registry = builtin_metrics()
    registry["tokens_per_s"] = THROUGHPUT
    return registry


@pytest.fixture(scope="module")
def throughput_run(tmp_path_factory):
    registry = registry_with_throughput()
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu", "openvino-cpu"), reps=4)
    for r in rows:
        derive_fields(r, registry)
    out = tmp_path_factory.mktemp("throughput")
    return rows, write_reports(rows, out, {"run_id": "run-a"}, metrics=registry)


def test_an_added_metric_gets_a_samples_csv_column_with_its_values(throughput_run):
    rows, paths = throughput_run
    samples = pd.read_csv(paths["samples"])
    assert "tokens_per_s" in samples.columns
    expected = [r["tokens_generated"] / r["time_s"] for r in rows]
    assert samples["tokens_per_s"].tolist() == pytest.approx(expected)


def test_an_added_analysed_metric_gets_stats_csv_rows(throughput_run):
    _, paths = throughput_run
    stats = pd.read_csv(paths["stats"], keep_default_na=False, dtype=str)
    mine = stats[stats["metric"] == "tokens_per_s"]
    assert {"shapiro", "levene"} <= set(mine["test"])
    assert {"welch_anova", "kruskal"} & set(mine["test"])
    assert len(mine[mine["test"] == "shapiro"]) == 3  # one per configuration


def test_an_added_metric_is_named_by_its_label_in_report_html(throughput_run):
    _, paths = throughput_run
    html = paths["html"].read_text()
    assert "Box plots: " in html and "throughput (tokens/s)" in html  # its box plot's caption
    assert "<td>throughput</td>" in html  # the "which test, and why" table
    assert "tokens_per_s" not in paths["summary"].read_text()  # summary.md's tables are fixed


def test_greenserve_report_rerenders_a_run_with_the_metrics_in_its_run_json(tmp_path, capsys):
    registry = registry_with_throughput()
    rows = make_rows(models=("mini-gpt2",), configs=("torch-cpu", "onnx-cpu"), reps=3)
    for r in rows:
        derive_fields(r, registry)
    run = write_run(tmp_path / "reports", rows, "run-a")
    (run / "run.json").write_text(json.dumps({"run_id": "run-a", "metrics": metrics_to_json(registry)}))
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    stats = pd.read_csv(tmp_path / "out" / "stats.csv")
    assert "tokens_per_s" in set(stats["metric"])
    assert "tokens_per_s" in pd.read_csv(tmp_path / "out" / "samples.csv").columns


def test_a_derive_missing_an_input_gives_none_never_zero():
    registry = registry_with_throughput()
    sample = {"time_s": None, "tokens_generated": 0, "energy_total_j": None, "latencies_s": [],
              "ttfts_s": [None, None]}
    derive_fields(sample, registry)
    for name in ("tokens_per_s", "ms_per_token", "j_per_token", "latency_mean_s", "latency_p50_s",
                 "latency_p95_s", "ttft_mean_s"):
        assert sample[name] is None, name
    no_tokens = {"time_s": 2.0, "energy_total_j": 10.0}  # tokens_generated absent
    derive_fields(no_tokens, registry)
    assert no_tokens["ms_per_token"] is None and no_tokens["j_per_token"] is None
    assert no_tokens["tokens_per_s"] is None


def test_derive_fields_fills_every_metric_and_reproduces_the_sample_builder():
    latencies = [0.1 * k for k in range(20, 0, -1)]  # 2.0 ... 0.1, unsorted
    sample = {"time_s": 3.0, "tokens_generated": 600, "energy_total_j": 30.0, "latencies_s": latencies,
              "ttfts_s": [0.2, None, 0.4]}
    derive_fields(sample, builtin_metrics())
    assert sample["ms_per_token"] == pytest.approx(5.0)
    assert sample["j_per_token"] == pytest.approx(0.05)
    assert sample["ttft_mean_s"] == pytest.approx(0.3)
    assert sample["latency_mean_s"] == pytest.approx(1.05)
    assert sample["latency_p50_s"] == pytest.approx(1.05)
    assert sample["latency_p95_s"] == pytest.approx(1.905)  # linear: 1.9 + 0.05 * (2.0 - 1.9), not the maximum
    assert set(builtin_metrics()) <= set(sample)
    assert sample["energy_wall_j"] is None and sample["cpu_pct"] is None  # missing: None, not 0


def test_metrics_survive_the_run_json_round_trip():
    registry = registry_with_throughput()
    items = json.loads(json.dumps(metrics_to_json(registry)))
    assert all("derive" not in item for item in items)
    back = metrics_from_json(items)
    assert list(back) == list(registry)
    assert back == {name: dataclasses.replace(m, derive=None) for name, m in registry.items()}


def test_metrics_from_json_ignores_unknown_keys_and_unusable_entries():
    items = [{"name": "tokens_per_s", "unit": "tokens/s", "label": "throughput", "analysed": True, "colour": "red"},
             {"unit": "J"}, "not a dict", {"name": "bad", "unit": "", "label": "bad", "better": "sideways"}]
    assert metrics_from_json(items) == {
        "tokens_per_s": Metric("tokens_per_s", "tokens/s", "throughput", analysed=True)}


def test_the_hook_keeps_a_users_metric_and_lists_the_builtins_first():
    mine_first = {"tokens_per_s": THROUGHPUT, "time_s": Metric("time_s", "s", "wall time")}
    pytest_greenserve_register_metrics(mine_first)  # the user's hook ran before the built-ins'
    assert list(mine_first) == [*builtin_metrics(), "tokens_per_s"]
    assert mine_first["time_s"].label == "wall time"
    builtins_first: dict = {}
    pytest_greenserve_register_metrics(builtins_first)
    builtins_first["tokens_per_s"] = THROUGHPUT  # the user's hook ran after
    assert list(builtins_first) == list(mine_first)


def test_builtin_flags_match_what_the_reports_analysed_and_plotted():
    metrics = builtin_metrics()
    assert [m.name for m in metrics.values() if m.analysed] == [
        "energy_net_j", "energy_total_j", "energy_cpu_j", "energy_gpu_j", "time_s", "j_per_token", "ms_per_token",
        "ttft_mean_s", "ram_pct", "cpu_pct", "gpu_pct", "gpu_mem_util_pct", "gpu_mem_used_pct",
        "ttft_p50_s", "tpot_mean_s", "itl_p50_s", "goodput_rps", "proc_cpu_pct", "proc_ram_pct"]
    assert {m.name for m in metrics.values() if m.plotted} == {
        "energy_net_j", "energy_cpu_j", "energy_gpu_j", "time_s", "cpu_pct", "ram_pct", "gpu_pct",
        "gpu_mem_util_pct", "gpu_mem_used_pct"}
    assert {"energy_net_j", "energy_total_j", "energy_cpu_j", "energy_gpu_j", "j_per_token", "time_s",
            "ms_per_token", "ttft_mean_s"} <= {m.name for m in metrics.values() if m.gateable}
    assert [m.name for m in resource_metrics(metrics)] == [
        "ram_pct", "cpu_pct", "gpu_mem_used_pct", "proc_cpu_pct", "proc_ram_pct"]
    assert metrics["proc_cpu_pct"].ranks_instead_of == "cpu_pct"
    assert metrics["proc_ram_pct"].ranks_instead_of == "ram_pct"
    assert metrics["match_rate"].better == "higher" and not metrics["match_rate"].analysed
    for m in metrics.values():
        assert m.kind in ("energy", "time", "use", "quality", "other"), m.name
        assert not (m.gateable and m.better is None), m.name


def test_a_metric_with_an_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="better"):
        Metric("x", "", "x", better="Lower")


# ---------------------------------------------------------------- p95, steady state, window length

def _derived(**sample):
    out = dict(sample)
    derive_fields(out, builtin_metrics())
    return out


def test_p95_is_a_proper_quantile_not_the_maximum():
    # 1..20: the 95th percentile by linear interpolation lies at rank 0.95 * 19 = 18.05 -> 19.05;
    # index int(0.95 * 20) = 19 gave 20, the maximum
    assert _derived(latencies_s=[float(x) for x in range(1, 21)])["latency_p95_s"] == pytest.approx(19.05)
    # 0.1, 0.2, 0.3, 0.4, 1.0: rank 0.95 * 4 = 3.8 -> 0.4 + 0.8 * (1.0 - 0.4) = 0.88
    assert _derived(latencies_s=[0.3, 1.0, 0.1, 0.4, 0.2])["latency_p95_s"] == pytest.approx(0.88)
    assert _derived(latencies_s=[0.5])["latency_p95_s"] == 0.5
    assert _derived(latencies_s=[])["latency_p95_s"] is None


def test_a_compilation_inside_the_window_makes_the_sample_unsteady():
    steady = [0.05, 0.052, 0.049, 0.051] * 7 + [0.05, 0.052, 0.049, 0.13]  # one neighbour's hiccup: 2.6x
    s = _derived(latencies_s=steady, time_s=sum(steady))
    assert s["slowest_over_median"] == pytest.approx(0.13 / 0.0505)
    assert s["unsteady"] is False
    compiled = [0.05] * 32
    compiled[3] = 2.5  # TorchScript specialising for a new prompt length, 50x the median
    s = _derived(latencies_s=compiled, time_s=sum(compiled))
    assert s["slowest_over_median"] == pytest.approx(50.0)
    assert s["unsteady"] is True


def test_a_drift_from_the_first_to_the_last_quarter_makes_the_sample_unsteady():
    drifting = [0.05] * 8 + [0.06] * 8 + [0.07] * 8 + [0.08] * 8  # each step below the 3x ratio
    s = _derived(latencies_s=drifting, time_s=sum(drifting))
    assert s["drift_pct"] == pytest.approx(60.0)
    assert s["slowest_over_median"] < 3
    assert s["unsteady"] is True
    assert _derived(latencies_s=[0.05] * 7)["drift_pct"] is None  # too few requests for quarters


def test_a_sample_shorter_than_min_sample_s_is_low_resolution_only_where_a_coarse_meter_read_it():
    nvml = {"energy_gpu_source": "nvml-counter"}
    assert _derived(time_s=0.4, **nvml)["low_resolution"] is True  # the default, 1 s
    assert _derived(time_s=1.5, **nvml)["low_resolution"] is False
    assert _derived(time_s=1.5, min_sample_s=2.0, **nvml)["low_resolution"] is True
    assert _derived(time_s=None, **nvml)["low_resolution"] is None
    # RAPL's microjoules and the CPU-time estimate resolve a short window: never low-resolution
    assert _derived(time_s=0.4, energy_cpu_source="estimated-cpu-time")["low_resolution"] is False
    assert _derived(time_s=0.4, energy_cpu_source="rapl")["low_resolution"] is False
    assert _derived(time_s=0.4, energy_wall_source="wattmeter")["low_resolution"] is True
    assert _derived()["unsteady"] is None  # no latencies: not known, not steady


def _serving_sample(**kw):
    base = {"latencies_s": [0.30, 0.50, 0.40, 1.00], "ttfts_s": [0.10, 0.30, 0.15, 0.20], "new_tokens": 5,
            "time_s": 2.0, "requests": 4, "slo": {"ttft_s": 0.2, "tpot_s": 0.1}}
    return {**base, **kw}


def test_the_fields_serving_metrics_follow_their_definitions():
    from pytest_greenserve.metrics import derive_fields

    sample = _serving_sample()
    derive_fields(sample, builtin_metrics())
    # TPOT excludes the first token: (e2e - ttft) / (tokens - 1)
    tpots = [(0.30 - 0.10) / 4, (0.50 - 0.30) / 4, (0.40 - 0.15) / 4, (1.00 - 0.20) / 4]
    assert sample["tpot_mean_s"] == pytest.approx(sum(tpots) / 4)
    assert sample["ttft_p50_s"] == pytest.approx(0.175)
    # met: request 1 (0.10, 0.05) and 3 (0.15, 0.0625); 2's TTFT and 4's TPOT (0.2) miss
    assert sample["goodput_rps"] == pytest.approx(2 / 2.0)
    assert sample["slo_met_pct"] == pytest.approx(50.0)


def test_serving_metrics_say_cannot_tell_rather_than_guess():
    from pytest_greenserve.metrics import derive_fields

    one_unknown = _serving_sample(ttfts_s=[0.10, None, 0.15, 0.20])  # a request whose first token was not timed
    derive_fields(one_unknown, builtin_metrics())
    assert one_unknown["ttft_p50_s"] is None and one_unknown["tpot_mean_s"] is None
    assert one_unknown["goodput_rps"] is None
    no_slo = _serving_sample(slo=None)
    derive_fields(no_slo, builtin_metrics())
    assert no_slo["goodput_rps"] is None and no_slo["slo_met_pct"] is None and no_slo["ttft_p50_s"] is not None


def test_the_slo_option_parses_to_seconds_and_refuses_in_one_line():
    from pytest_greenserve.slo import parse_slo

    assert parse_slo("ttft:200ms,tpot:50ms") == {"ttft_s": 0.2, "tpot_s": 0.05}
    assert parse_slo("e2e:1.5s") == {"e2e_s": 1.5} and parse_slo("") == {}
    with pytest.raises(ValueError, match="expected OBJECTIVE:VALUE"):
        parse_slo("ttft:fast")
