"""``--greenserve-transport=http`` end to end: a server crash mid-sample fails that item with the
reason, the next item restarts the server and passes, samples record the transport, and no
``greenserve serve`` outlives the session. (The same tokens over HTTP as in-process:
test_http_target.py.)"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch  # noqa: F401  imported before pytester snapshots sys.modules (numpy loads once)
import transformers  # noqa: F401
from serving_engines import sleeping_engine_conftest

BENCHMARK = '''
def test_autocomplete(greenserve):
    sample = greenserve.measure()
    assert sample["tokens_generated"] == sample["requests"] * sample["new_tokens"]
'''

# Kills its own server on the 2nd request it ever gets (with one prompt: the warm-up's is the 1st,
# the measured one the 2nd), once in the session (a marker file remembers).
CRASHING_ENGINE = '''
import os
import signal

from pytest_greenserve.serving.null import NullEngine


class Crashing(NullEngine):
    name = "crashing"
    calls = 0

    def generate(self, input_ids, new_tokens):
        Crashing.calls += 1
        marker = os.environ["GREENSERVE_TEST_CRASH_MARKER"]
        if Crashing.calls == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(input_ids, new_tokens)


def pytest_greenserve_register_engines(registry):
    registry["crashing"] = Crashing
'''


def servers_of(path: str) -> list:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "pytest_greenserve serve" in cmd and path in cmd:
            found.append(p)
    return found


def test_http_transport_survives_a_server_crash_and_leaves_no_orphans(pytester, tiny_model, monkeypatch):
    model = str(tiny_model("gpt2"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GREENSERVE_TEST_CRASH_MARKER", str(pytester.path / "crashed-once"))
    pytester.makepyfile(test_autocomplete=BENCHMARK)
    pytester.makeconftest(CRASHING_ENGINE)
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--greenserve-models=tiny={model}", "--greenserve-configs=crashing-cpu",
        "--greenserve-runs=2", "--greenserve-prompts=1", "--greenserve-new-tokens=4", "--greenserve-idle=0",
        "--greenserve-warmup=0", "--greenserve-threads=1", "--greenserve-transport=http",
        f"--greenserve-cache-dir={pytester.path / 'cache'}", f"--greenserve-report-dir={reports}", timeout=240)
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "request 1 of 1 failed: EngineError: the server (pid " in out
    assert "killed by signal 9 during the request; log tail: greenserve serve: loading tiny on crashing-cpu" in out
    assert "Traceback" not in out
    samples = [json.loads(line) for line in (reports / "latest" / "samples.jsonl").read_text().splitlines()]
    (sample,) = samples  # the restarted server's
    assert (sample["config"], sample["engine"], sample["provider"], sample["transport"]) == (
        "crashing-cpu@http", "crashing", "cpu", "http")
    assert sample["match_rate"] == 0.0  # an echo, checked against the in-process torch reference
    assert sample["latency_p99_s"] is not None and sample["requests_per_s"] > 0
    assert "torch-cpu@http" not in out
    assert servers_of(model) == []  # no `greenserve serve` outlived the session


SLOW_ENGINE = sleeping_engine_conftest("slow", 0.5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_session_leaves_no_server_behind(pytester, tiny_model, sig):
    """A CI cancel or ``timeout`` (SIGTERM) and SIGKILL run no atexit hook: the server must
    still go, on its own, within 5 s (the parent-death signal, else its watchdog)."""
    model = str(tiny_model("gpt2"))
    pytester.makepyfile(test_autocomplete=BENCHMARK)
    pytester.makeconftest(SLOW_ENGINE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--greenserve-models=tiny={model}",
           "--greenserve-configs=slow-cpu", "--greenserve-prompts=60", "--greenserve-new-tokens=4",
           "--greenserve-idle=0", "--greenserve-warmup=0", "--greenserve-transport=http",
           f"--greenserve-cache-dir={pytester.path / 'cache'}", f"--greenserve-report-dir={pytester.path / 'r'}"]
    session = subprocess.Popen(cmd, cwd=pytester.path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not servers_of(model):  # the server is up and the sample (30 s of requests) under way
            assert session.poll() is None and time.monotonic() < deadline, "the session never started a server"
            time.sleep(0.2)
        servers = servers_of(model)
        time.sleep(1.0)
        session.send_signal(sig)
        session.wait(timeout=30)
        gone = time.monotonic() + 5.0
        while time.monotonic() < gone and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers):
            time.sleep(0.1)
        left = [p.pid for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"greenserve serve still running 5 s after the session got {sig.name}: pids {left}"
    finally:
        if session.poll() is None:
            session.kill()
        for p in servers_of(model):  # never leave one behind, even when the test fails
            p.kill()
