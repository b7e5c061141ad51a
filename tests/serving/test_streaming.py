"""``stream: true``: server-sent events in OpenAI's shape, and TTFT/ITL stamped at the client."""

import json
import time

import httpx
import pytest
import torch  # noqa: F401  imported before pytester snapshots sys.modules (numpy loads once)
import transformers  # noqa: F401

from pytest_greenserve.engines.base import EngineOptions
from pytest_greenserve.engines.torch_eager import TorchEngine
from pytest_greenserve.serving.client import HttpTarget, sse_events
from pytest_greenserve.serving.keepalive import open_client

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]


@pytest.fixture(scope="module")
def torch_target(tiny_handle):
    target = HttpTarget(tiny_handle("gpt2"), "cpu", TorchEngine, EngineOptions(threads=1), health_timeout_s=120)
    target.load()
    yield target
    target.close()


def test_a_streamed_completion_is_openai_shaped_events_then_done(torch_target):
    with httpx.Client(trust_env=False, timeout=60) as client:
        with client.stream("POST", torch_target.url + "/v1/completions",
                           json={"prompt": PROMPT, "max_tokens": 6, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    tokens = [t for c in chunks for t in c["choices"][0]["token_ids"]]
    assert len(tokens) == 6 and [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["length"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
    text = "".join(c["choices"][0]["text"] for c in chunks)
    client = open_client("http.client", torch_target.url)
    try:
        status, raw = client.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 6}).encode())
    finally:
        client.close()
    assert status == 200, raw[:200]
    unstreamed = json.loads(raw)["choices"][0]
    assert tokens == unstreamed["token_ids"] and text == unstreamed["text"]


def test_ttft_and_itl_at_the_client_are_consistent_with_the_unstreamed_latency(torch_target):
    torch_target.stream = True
    try:
        t = time.perf_counter()
        streamed = torch_target.generate(PROMPT, 16)
        latency_s = time.perf_counter() - t
    finally:
        torch_target.stream = False
    plain = torch_target.generate(PROMPT, 16)
    assert streamed.token_ids == plain.token_ids and plain.ttft_s is None  # unstreamed: the client cannot tell
    times = streamed.token_times_s
    assert len(times) == 16 and times[0] == streamed.ttft_s
    assert 0 < streamed.ttft_s <= times[-1] <= latency_s
    assert all(b >= a for a, b in zip(times, times[1:]))
    # tokens arrive while the model generates, not in one burst at the end
    assert times[-1] - times[0] > 0.25 * (times[-1])


def test_an_engine_that_does_not_stream_sends_every_token_at_the_end(null_server):
    server, client = null_server
    with client.stream("POST", server.url + "/v1/completions",
                       json={"prompt": [1, 2, 3], "max_tokens": 4, "stream": True}) as r:
        events = list(sse_events(r.iter_lines()))
    tokens = [t for e in events[:-1] for t in json.loads(e)["choices"][0]["token_ids"]]
    assert tokens == [1, 2, 3, 1] and events[-1] == "[DONE]"


BENCHMARK = '''
def test_autocomplete(greenserve):
    greenserve.measure()
'''


def test_a_streamed_session_records_the_fields_metrics(pytester, tiny_model, monkeypatch):
    model = str(tiny_model("gpt2"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(test_autocomplete=BENCHMARK)
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--greenserve-models=tiny={model}", "--greenserve-configs=torch-cpu",
        "--greenserve-runs=1", "--greenserve-prompts=4", "--greenserve-new-tokens=8", "--greenserve-idle=0",
        "--greenserve-warmup=1", "--greenserve-threads=1", "--greenserve-transport=http", "--greenserve-stream=on",
        "--greenserve-slo=ttft:10s,tpot:10s", f"--greenserve-cache-dir={pytester.path / 'cache'}",
        f"--greenserve-report-dir={reports}", timeout=240)
    result.assert_outcomes(passed=1)
    (sample,) = [json.loads(ln) for ln in (reports / "latest" / "samples.jsonl").read_text().splitlines()]
    assert sample["config"] == "torch-cpu@http+stream" and sample["stream"] is True
    assert sample["slo"] == {"ttft_s": 10.0, "tpot_s": 10.0}
    for name in ("ttft_p50_s", "ttft_p99_s", "tpot_mean_s", "itl_p50_s", "itl_p99_s", "latency_p99_s"):
        assert sample[name] is not None and sample[name] > 0, name
    assert sample["itl_p50_s"] <= sample["itl_p99_s"] and sample["ttft_p50_s"] < sample["latency_p50_s"]
    assert sample["goodput_rps"] == pytest.approx(sample["requests_per_s"])  # generous objectives: every request
    assert sample["slo_met_pct"] == pytest.approx(100.0)
    stats = (reports / "latest" / "stats.csv").read_text()
    assert "itl_p50_s" in stats and "goodput_rps" in stats
