"""--greenserve-load end to end: a sweep over HTTP with an echo engine at small Poisson
rates gives a closed:1 sample and one sample per rate, each its own configuration label, with
the open-loop figures; report.html draws energy against load."""

import json

import pytest
import torch  # noqa: F401  imported before pytester snapshots sys.modules (numpy loads once)
import transformers  # noqa: F401
from serving_engines import sleeping_engine_conftest

BENCHMARK = '''
def test_autocomplete(greenserve):
    sample = greenserve.measure()
    assert sample["config"] == "paced-cpu@http"  # a sweep's item returns its closed:1 sample
'''

# 20 ms a request: at 5 and 10 requests/s the server is 10-20% busy, so latency stays near
# closed:1's and the sweep runs both rates (the null engine's ~2 ms would make the harness's
# own jitter look like a runaway against closed:1's median)
NULL_ENGINE = sleeping_engine_conftest("paced", 0.02)


def test_a_sweep_over_http_gives_one_sample_per_rate_and_a_load_curve(pytester, tiny_model, monkeypatch):
    model = str(tiny_model("gpt2"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(test_autocomplete=BENCHMARK)
    pytester.makeconftest(NULL_ENGINE)
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--greenserve-models=tiny={model}", "--greenserve-configs=paced-cpu",
        "--greenserve-runs=1", "--greenserve-prompts=12", "--greenserve-new-tokens=4", "--greenserve-idle=0",
        "--greenserve-warmup=0", "--greenserve-threads=1", "--greenserve-transport=http",
        "--greenserve-load=sweep:5,10", "--greenserve-slo=e2e:2s",
        f"--greenserve-cache-dir={pytester.path / 'cache'}", f"--greenserve-report-dir={reports}", timeout=240)
    result.assert_outcomes(passed=1)
    samples = [json.loads(line) for line in (reports / "latest" / "samples.jsonl").read_text().splitlines()]
    by_config = {s["config"]: s for s in samples}
    assert list(by_config) == ["paced-cpu@http", "paced-cpu@http/poisson5", "paced-cpu@http/poisson10"]
    assert by_config["paced-cpu@http"]["load"] == "closed:1"
    for rate in (5, 10):
        s = by_config[f"paced-cpu@http/poisson{rate}"]
        assert (s["load"], s["offered_rate_rps"], s["concurrency"], s["requests_sent"]) == (
            f"poisson:{rate}", rate, None, 12)
        assert 0 < s["requests"] <= s["requests_sent"] and len(s["latencies_s"]) == s["requests"]
        assert s["load_window"]["warmup"] == 0.1 and s["time_s"] > 0
        assert s["achieved_rate_pct"] > 0 and s["goodput_rps"] == pytest.approx(s["requests_per_s"])
    html = (reports / "latest" / "report.html").read_text()
    assert "energy and latency against load" in html
    options = json.loads((reports / "latest" / "run.json").read_text())["options"]
    assert options["load"] == "sweep:5,10"
