"""An external check of ``greenserve serve`` (issue 17): GuideLLM, a load generator nobody here
wrote, drives the server, and what it reports must agree with the server's own ``/metrics``.

GuideLLM (vLLM project) runs closed loop at concurrency 1 (its ``synchronous`` profile) for a
fixed number of requests with fixed prompt and output lengths, tokenizing its synthetic prompts
with the served model's own tokenizer directory (offline: no hub). ``/metrics`` is read before
and after its run, and:

- its request and token counts (prompt and output) equal the server's counter deltas exactly,
  with no errors on either side;
- its mean end-to-end latency agrees within 5% with the server's mean engine time over the same
  requests (``greenserve_generation_seconds_total``'s delta over the requests' delta), and is
  not below it (each request's engine time lies inside its client time). Both figures cover the
  very same requests, so the load drift of a shared 2-core machine, which moves a run by 14-40%,
  moves both alike; what is left between them is the HTTP transport and the tool's own client,
  a few ms against a ~0.3-0.5 s request of 128 tokens from mini-gpt2 on one thread.

GuideLLM is not in ``[test]`` (about 35 packages: datasets, pyarrow, sanic, ...): install it with
``pip install -e .[test,loadgen]``, or point ``GREENSERVE_GUIDELLM`` at a ``guidellm``
executable in another environment. Without it the test skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REQUESTS = 12
PROMPT_TOKENS = 20
OUTPUT_TOKENS = 128
AGREEMENT = 0.05  # the 5%
TOOL_TIMEOUT_S = 600
ATTEMPTS = 3  # a run whose report lost a record to the tool's own race is run again (lost_records)


def guidellm_executable() -> str | None:
    """``$GREENSERVE_GUIDELLM``, else ``guidellm`` beside this interpreter, else on PATH."""
    named = os.environ.get("GREENSERVE_GUIDELLM")
    if named:
        return named if Path(named).is_file() else None
    beside = Path(sys.executable).parent / "guidellm"
    return str(beside) if beside.is_file() else shutil.which("guidellm")


@pytest.fixture(scope="module")
def guidellm() -> str:
    exe = guidellm_executable()
    if exe is None:
        pytest.skip("guidellm is not installed (pip install -e .[loadgen], or set GREENSERVE_GUIDELLM)")
    return exe


@pytest.fixture(scope="module")
def mini_server(tmp_path_factory):
    """``greenserve serve`` with mini-gpt2 (a random-weight replica built offline) on torch-cpu,
    one engine thread (the other core is left to the load generator), warmed up."""
    import httpx
    from conftest import serve_args

    from pytest_greenserve.models import REGISTRY, resolve
    from pytest_greenserve.serving.server import ServerProcess

    handle = resolve(REGISTRY["mini-gpt2"], "auto", None, tmp_path_factory.mktemp("greenserve-cache"))
    server = ServerProcess(serve_args(handle, "torch-cpu", None, "--threads", "1"), health_timeout_s=120)
    server.start()
    client = httpx.Client(trust_env=False, timeout=120)
    try:
        server.wait_healthy()
        for _ in range(2):  # the first generations pay one-time costs: not the tool's business
            r = client.post(server.url + "/v1/completions", json={"prompt": "def warm(up):", "max_tokens": 16})
            assert r.status_code == 200, r.text
        yield server, client, handle
    finally:
        client.close()
        server.stop()
        server.remove_log()


def scrape(server, client) -> dict[str, float]:
    r = client.get(server.url + "/metrics")
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


def run_guidellm(exe: str, url: str, tokenizer_dir: str, out_json: Path, stream: bool) -> dict:
    """One closed-loop GuideLLM benchmark: its report's one benchmark (``metrics``, ``scheduler_state``)."""
    cmd = [exe, "run",
           "--backend", f"kind=openai_http,target={url},model=mini-gpt2,request_format=/v1/completions,"
                        f"stream={'true' if stream else 'false'},http2=false",
           "--profile", "kind=synchronous",
           "--constraint", f"kind=max_requests,count={REQUESTS}",
           "--data", f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={OUTPUT_TOKENS}",
           "--tokenizer", f"kind=huggingface_auto,model={tokenizer_dir}",
           "--output", f"kind=json,path={out_json}",
           "--disable-console"]
    # offline, and nothing between the tool and loopback (its httpx client reads proxy variables)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TOOL_TIMEOUT_S)
    tail = (r.stdout + r.stderr).strip().splitlines()[-15:]
    assert r.returncode == 0 and out_json.is_file(), f"guidellm failed ({r.returncode}): " + "\n".join(tail)
    (benchmark,) = json.loads(out_json.read_text())["benchmarks"]
    return benchmark


def lost_records(benchmark: dict, answered: float) -> int:
    """Requests GuideLLM sent and the server answered, but that its report leaves out because its
    scheduler still counted them pending or in progress when it shut down: the coordinator of
    guidellm 0.8.1 can handle a request's "completed" update before its "in_progress" one, drops
    the completion as a duplicate, and the run ends with the request stuck in flight (seen on the
    2-core VM in 4 of 17 runs, the last request each time it was looked at). 0 when its counts add up."""
    state = benchmark["scheduler_state"]
    stuck = state.get("processing_requests", 0) + state.get("pending_requests", 0)
    totals = benchmark["metrics"]["request_totals"]
    if (stuck and state.get("created_requests") == answered and state.get("errored_requests", 0) == 0
            and state.get("cancelled_requests", 0) == 0 and totals["successful"] + stuck == answered):
        return stuck
    return 0


def _report(successful, created, processing=0, pending=0, errored=0) -> dict:
    return {"metrics": {"request_totals": {"successful": successful}},
            "scheduler_state": {"created_requests": created, "processing_requests": processing,
                                "pending_requests": pending, "errored_requests": errored, "cancelled_requests": 0}}


def test_only_guidellms_own_stuck_requests_count_as_lost():
    assert lost_records(_report(12, 12), answered=12) == 0
    assert lost_records(_report(11, 12, processing=1), answered=12) == 1  # the race: run it again
    # anything else is a disagreement the test must report, not retry
    assert lost_records(_report(11, 12), answered=12) == 0  # one missing, none held in flight
    assert lost_records(_report(11, 12, processing=1), answered=13) == 0  # the server answered one more
    assert lost_records(_report(11, 12, processing=1, errored=1), answered=12) == 0


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["unstreamed", "streamed"])
def test_guidellm_agrees_with_the_servers_own_counters(guidellm, mini_server, tmp_path, stream):
    server, client, handle = mini_server
    for attempt in range(1, ATTEMPTS + 1):
        before = scrape(server, client)
        benchmark = run_guidellm(guidellm, server.url, handle.ref, tmp_path / f"benchmarks-{attempt}.json", stream)
        after = scrape(server, client)
        delta = {k: after[k] - before[k] for k in after if k in before}
        lost = lost_records(benchmark, delta["greenserve_requests_total"])
        if not lost:
            break
        print(f"\nguidellm attempt {attempt}: its report lost {lost} answered request(s) that its own scheduler "
              f"still held in flight at shutdown (guidellm 0.8.1's update race); running it again")
    metrics = benchmark["metrics"]

    ok = lambda name: metrics[name]["successful"]  # noqa: E731
    totals = metrics["request_totals"]
    # counts: exactly equal, no errors either side
    assert (totals["successful"], totals["errored"], totals["incomplete"]) == (REQUESTS, 0, 0)
    assert delta["greenserve_requests_total"] == REQUESTS
    assert delta["greenserve_request_errors_total"] == 0
    assert ok("output_token_count")["total_sum"] == delta["greenserve_completion_tokens_total"] \
        == REQUESTS * OUTPUT_TOKENS
    assert ok("prompt_token_count")["total_sum"] == delta["greenserve_prompt_tokens_total"]

    # time: the tool's mean end-to-end latency against the server's mean engine time, same requests
    tool_s = ok("request_latency")["mean"]
    server_s = delta["greenserve_generation_seconds_total"] / delta["greenserve_requests_total"]
    ratio = tool_s / server_s
    joules_per_token = delta["greenserve_cpu_energy_estimated_joules_total"] / delta["greenserve_completion_tokens_total"]
    print(f"\nguidellm ({'streamed' if stream else 'unstreamed'}): mean e2e {tool_s * 1000:.1f} ms, server "
          f"{server_s * 1000:.1f} ms, ratio {ratio:.4f}; estimated CPU {joules_per_token:.4f} J/token")
    assert ratio >= 0.995, f"the tool's {tool_s:.4f} s is below the server's own {server_s:.4f} s per request"
    assert abs(ratio - 1) <= AGREEMENT, (f"guidellm's mean e2e latency {tool_s:.4f} s and the server's "
                                         f"{server_s:.4f} s differ by {ratio - 1:+.1%}, over {AGREEMENT:.0%}")
    if stream:  # the tool stamped each token's arrival: a first token before the end
        ttft_s = ok("time_to_first_token_ms")["mean"] / 1000
        assert 0 < ttft_s < tool_s
