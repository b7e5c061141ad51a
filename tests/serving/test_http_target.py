"""HttpTarget: the same tokens as in-process, the server in this process's tree, timeouts, no orphans."""

from pathlib import Path

import psutil
import pytest

from pytest_greenserve.engines.base import EngineError, EngineOptions
from pytest_greenserve.meters.proctree import tree_pids
from pytest_greenserve.serving.client import HttpTarget
from pytest_greenserve.targets import Target

HERE = str(Path(__file__).parent)
PROMPTS = [[10, 11, 12, 13], [40, 41], [7, 3, 99, 5, 60]]


def test_the_same_tokens_over_http_as_in_process_and_the_server_is_in_the_process_tree(tiny_handle):
    from pytest_greenserve.engines.torch_eager import TorchEngine

    handle = tiny_handle("gpt2")
    local = TorchEngine(handle, "cpu", EngineOptions(threads=1))
    local.load()
    expected = [local.generate(ids, 6).token_ids for ids in PROMPTS]
    local.close()

    target = HttpTarget(handle, "cpu", TorchEngine, EngineOptions(threads=1), health_timeout_s=120)
    assert isinstance(target, Target)
    target.load()
    try:
        (pid,) = target.pids()
        assert pid in tree_pids()  # a child of this process: the CPU estimate and the sampler cover it
        got = [target.generate(ids, 6) for ids in PROMPTS]
        assert [g.token_ids for g in got] == expected
        assert all(g.ttft_s is None for g in got)
        assert {"torch", "transformers", "fastapi", "uvicorn"} <= set(target.versions())
        assert "httpx" not in target.versions()  # the client is the standard library's
    finally:
        target.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert target.pids() == []


def test_a_server_that_never_gets_healthy_times_out_with_its_log_tail(tiny_handle):
    from serving_engines import NeverReady

    target = HttpTarget(tiny_handle("gpt2"), "cpu", NeverReady, health_timeout_s=2)
    with pytest.raises(EngineError) as info:
        target.load()
    message = str(info.value)
    assert "\n" not in message
    assert "did not become healthy within 2 s" in message and "neverready: loading, slowly" in message
    assert target.server is None  # stopped
    survivors = [p for p in psutil.process_iter(["cmdline"]) if "serving_engines:NeverReady" in " ".join(
        p.info["cmdline"] or [])]
    assert survivors == []


def test_a_server_that_fails_to_load_says_why_at_once(tiny_handle):
    from serving_engines import BrokenLoad

    target = HttpTarget(tiny_handle("gpt2"), "cpu", BrokenLoad, health_timeout_s=60)
    with pytest.raises(EngineError) as info:
        target.load()
    message = str(info.value)
    assert "exited with status 2 before it became healthy" in message
    assert "weights are corrupt (planted)" in message and "\n" not in message


def test_a_server_killed_mid_request_fails_that_request_with_the_reason(tiny_handle):
    from pytest_greenserve.serving.null import NullEngine

    target = HttpTarget(tiny_handle("gpt2"), "cpu", NullEngine, health_timeout_s=60)
    target.load()
    try:
        assert target.generate([1, 2], 3).token_ids == [1, 2, 1]
        (pid,) = target.pids()
        psutil.Process(pid).kill()
        with pytest.raises(EngineError, match=rf"the server \(pid {pid}\) killed by signal 9 during the request"):
            target.generate([1, 2], 3)
    finally:
        target.close()


def test_concurrent_clients_keep_prompt_order_and_give_latency_quantiles_and_throughput(tiny_handle):
    from pytest_greenserve.measure import measure_prompts
    from pytest_greenserve.metrics import builtin_metrics, derive_fields
    from pytest_greenserve.serving.null import NullEngine

    prompts = [[i + 1, i + 2] for i in range(40)]
    target = HttpTarget(tiny_handle("gpt2"), "cpu", NullEngine, health_timeout_s=60, concurrency=4)
    target.load()
    try:
        m = measure_prompts(target, prompts, 3, concurrency=4)
    finally:
        target.close()
    assert m.outputs == [[a, b, a] for a, b in prompts]
    assert len(m.latencies_s) == 40 and all(lat > 0 for lat in m.latencies_s)
    sample = {"latencies_s": m.latencies_s, "time_s": m.time_s, "requests": 40, "tokens_generated": 120}
    derive_fields(sample, builtin_metrics())
    assert sample["latency_p50_s"] <= sample["latency_p95_s"] <= sample["latency_p99_s"] <= max(m.latencies_s)
    assert sample["requests_per_s"] == pytest.approx(40 / m.time_s)
    assert sample["gen_tokens_per_s"] == pytest.approx(120 / m.time_s)


def test_concurrency_above_one_needs_the_http_transport(tmp_path):
    from pytest_greenserve.engines import BUILTIN
    from pytest_greenserve.models import REGISTRY
    from pytest_greenserve.options import OptionError, read_settings

    def settings(**given):
        return read_settings({"models": "mini-gpt2", "configs": "torch-cpu", **given}.get,
                             engines={e.name: e for e in BUILTIN}, models=dict(REGISTRY), rootpath=tmp_path)

    with pytest.raises(OptionError, match="--greenserve-concurrency above 1 needs --greenserve-transport=http"):
        settings(concurrency="4")
    s = settings(concurrency="4", transport="http")
    assert (s.transport, s.concurrency) == ("http", 4)
    assert (settings().transport, settings().concurrency) == ("inproc", 1)
