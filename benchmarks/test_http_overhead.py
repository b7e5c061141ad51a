"""What serving over HTTP adds to a request: the null engine over loopback against in-process.

The null engine answers at once, so what a request costs beyond the in-process one is the
transport: httpx client, loopback TCP, uvicorn, FastAPI's validation and JSON. Both paths run
through the same measure step (``measure_prompts``, no meters) with HumanEval-sized prompts
(10-15 token ids) and 32 new tokens. The goal (issue 11) is < 3 ms added at the median on
loopback; it is reported, not asserted: speed goals are checked by benchmarks, not by timed
tests. Needs the ``serve`` extra (fastapi, uvicorn, httpx).
"""

import random
import statistics

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from pytest_greenserve.handle import ModelHandle  # noqa: E402
from pytest_greenserve.measure import measure_prompts  # noqa: E402
from pytest_greenserve.models import tokenizer_dir  # noqa: E402
from pytest_greenserve.serving.client import HttpTarget  # noqa: E402
from pytest_greenserve.serving.null import NullEngine  # noqa: E402

PROMPTS = 164
ROUNDS = 3
NEW_TOKENS = 32


def quantile(values, q):
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def test_http_overhead_per_request(tmp_path):
    rng = random.Random(0)
    prompts = [[rng.randrange(2048) for _ in range(rng.randint(10, 15))] for _ in range(PROMPTS)]
    handle = ModelHandle(name="null", ref=str(tokenizer_dir()), key="null@tokenizer", architecture="none",
                         cache_dir=tmp_path)
    inproc = NullEngine(handle, "cpu")
    inproc.load()
    http = HttpTarget(handle, "cpu", NullEngine, health_timeout_s=120)
    http.load()
    try:
        for target in (inproc, http):  # warm both paths (connection, FastAPI's first-request work)
            measure_prompts(target, prompts[:20], NEW_TOKENS)
        lat = {"inproc": [], "http": []}
        outputs = {}
        for _ in range(ROUNDS):  # interleaved, so a busy neighbour slows both alike
            for name, target in (("inproc", inproc), ("http", http)):
                m = measure_prompts(target, prompts, NEW_TOKENS)
                lat[name] += m.latencies_s
                outputs[name] = m.outputs
    finally:
        http.close()
        inproc.close()
    assert outputs["http"] == outputs["inproc"]  # the same tokens either way

    ms = {name: {q: 1000 * quantile(v, q) for q in (50, 95, 99)} for name, v in lat.items()}
    added = {q: ms["http"][q] - ms["inproc"][q] for q in (50, 95, 99)}
    n = len(lat["http"])
    print(f"\nHTTP overhead, null engine, {n} requests per path ({ROUNDS} x {PROMPTS}), {NEW_TOKENS} new tokens:")
    for name in ("inproc", "http"):
        print(f"  {name:6s} p50 {ms[name][50]:.3f} ms  p95 {ms[name][95]:.3f} ms  p99 {ms[name][99]:.3f} ms")
    print(f"  added  p50 {added[50]:.3f} ms  p95 {added[95]:.3f} ms  p99 {added[99]:.3f} ms "
          f"(goal: < 3 ms at p50; {'met' if added[50] < 3 else 'NOT met'})")
