"""The CI energy gate end to end, in pytester sessions of mini-gpt2 on a *paced* torch engine:
each request is padded to a fixed time (``GS_PACE`` seconds, times ``1 + GS_SLOWDOWN``), so a
planted 5% regression is 5% whatever else the machine is doing. Slow: each session loads torch."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow

CONFTEST = '''
import os, time
from pytest_greenserve.engines.torch_eager import TorchEngine

_DONE = {}

class Paced(TorchEngine):
    """Real tokens (computed once per prompt, in the warm-up), then a fixed time per request."""
    name = "paced"
    def generate(self, input_ids, new_tokens):
        t0 = time.perf_counter()
        key = (tuple(input_ids), new_tokens)
        if key not in _DONE:
            _DONE[key] = super().generate(input_ids, new_tokens)
        out = _DONE[key]
        pace = float(os.environ.get("GS_PACE", "0.1")) * (1 + float(os.environ.get("GS_SLOWDOWN", "0")))
        rest = pace - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(rest)
        return out

def pytest_greenserve_register_engines(registry):
    registry["paced"] = Paced
'''

TEST = '''
import pytest

def test_autocomplete(greenserve):
    greenserve.measure()
'''

MARKED = '''
import pytest

@pytest.mark.greenserve(fail="time:50%")
def test_autocomplete(greenserve):
    greenserve.measure()
'''

ARGS = ["-p", "no:cacheprovider", "--greenserve-models=mini-gpt2", "--greenserve-configs=paced-cpu",
        "--greenserve-prompts=5", "--greenserve-new-tokens=2", "--greenserve-idle=0", "--greenserve-settle=0",
        "--greenserve-warmup=5", "--greenserve-min-sample-s=0", "--greenserve-report-dir=reports"]


@pytest.fixture
def suite(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_serving=TEST)
    monkeypatch.setenv("GS_SLOWDOWN", "0")
    return pytester


def run(pytester, *args):
    return pytester.runpytest_subprocess(*ARGS, *args, timeout=300)


def test_aa_passes_regression_fails_marker_overrides_and_benchmark_round_trip(suite, monkeypatch):
    r = run(suite, "--greenserve-runs=5", "--greenserve-save=main")
    assert r.ret == 0, r.stdout.str()
    r.stdout.fnmatch_lines(["*greenserve baseline saved: *baselines/main.json (5 samples)*"])

    # A/A, with pytest-benchmark's storage and JSON
    storage = suite.path / "bench-storage"
    r = run(suite, "--greenserve-runs=5", "--greenserve-compare=main", "--greenserve-fail=energy:3%,time:3%",
            "--benchmark-autosave", f"--benchmark-storage=file://{storage}", "--benchmark-json=bench.json")
    assert r.ret == 0, r.stdout.str()
    r.stdout.fnmatch_lines(["*item*metric*baseline -> now*change*p-value*verdict*",
                            "*greenserve gate passed: 1 (model, configuration) item, 2 comparisons against baseline*"])
    data = json.loads((suite.path / "bench.json").read_text())
    (bench,) = [b for b in data["benchmarks"] if b["name"] == "test_greenserve[mini-gpt2-paced-cpu]"]
    assert bench["stats"]["rounds"] == 5 and bench["extra_info"]["energy_total_j"] > 0
    assert bench["extra_info"]["tokens_generated"] == 10
    cli = shutil.which("pytest-benchmark") or pytest.skip("no pytest-benchmark command")
    listed = subprocess.run([cli, "--storage", f"file://{storage}", "list"], capture_output=True, text=True)
    assert listed.returncode == 0 and "0001_" in listed.stdout, listed.stdout + listed.stderr
    # the stored run against the JSON file (relative: pytest-benchmark 5.2 cannot mix the two kinds of path)
    compared = subprocess.run([cli, "--storage", f"file://{storage}", "compare", "0001", "bench.json",
                               "--group-by=name", "--columns=min,median,rounds"],
                              capture_output=True, text=True, cwd=suite.path)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert "test_greenserve[mini-gpt2-paced-cpu]" in compared.stdout and compared.stdout.count("paced-cpu") >= 2

    # a planted 5% regression
    monkeypatch.setenv("GS_SLOWDOWN", "0.05")
    r = run(suite, "--greenserve-runs=5", "--greenserve-compare=main", "--greenserve-fail=energy:3%,time:3%")
    assert r.ret == 6, r.stdout.str()
    r.stdout.fnmatch_lines(["*item*metric*baseline -> now*change*p-value*verdict*",
                            "mini-gpt2 paced-cpu*energy_total_j [[]estimated-cpu-time[]] (fail 3%)*J*+*%*regression",
                            "mini-gpt2 paced-cpu*time_s (fail 3%)*s*+*%*regression",
                            "*greenserve gate FAILED*", "*exit status 6 (energy gate failed)*"])

    # the test's marker overrides the command line's threshold
    suite.makepyfile(test_serving=MARKED)
    r = run(suite, "--greenserve-runs=5", "--greenserve-compare=main", "--greenserve-fail=energy:3%,time:3%")
    assert r.ret == 0, r.stdout.str()
    r.stdout.fnmatch_lines(["mini-gpt2 paced-cpu*time_s (fail 50%)*same*"])
    assert "energy_total_j [estimated-cpu-time] (fail 3%)" not in r.stdout.str()

    # runs=auto: a clear answer stops early
    monkeypatch.setenv("GS_SLOWDOWN", "0.5")
    suite.makepyfile(test_serving=TEST)
    r = run(suite, "--greenserve-runs=auto", "--greenserve-compare=main", "--greenserve-fail=time:3%", "-rs")
    assert r.ret == 6, r.stdout.str()
    r.stdout.fnmatch_lines(["*decided against the baseline after * repetitions (--greenserve-runs=auto)*"])


def test_refusals_are_one_line_usage_errors(suite):
    base = suite.path / "reports" / "baselines"
    r = run(suite, "--greenserve-compare=main")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["ERROR: greenserve baseline *main.json does not exist; save one with --greenserve-save=NAME"])
    base.mkdir(parents=True)
    doc = {"kind": "greenserve-baseline", "schema_version": 1, "name": "main",
           "fingerprint": {"arch": "x86_64", "cpu_model": "Imaginary CPU", "cpu_count": 512, "gpu": None},
           "samples": [{"model": "mini-gpt2", "config": "paced-cpu", "time_s": 1.0}]}
    (base / "main.json").write_text(json.dumps(doc)[:40])
    r = run(suite, "--greenserve-compare=main")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["ERROR: greenserve baseline *main.json is not valid JSON (truncated?)*"])
    (base / "main.json").write_text(json.dumps(doc))
    r = run(suite, "--greenserve-compare=main")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["ERROR: greenserve baseline *main.json was measured on other hardware (*cpu_count: 512 "
                            "there*); compare anyway with --greenserve-compare-any-machine"])
    doc["samples"][0]["config"] = "onnx-cpu"
    (base / "main.json").write_text(json.dumps(doc))
    r = run(suite, "--greenserve-compare=main", "--greenserve-compare-any-machine", "--collect-only")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["ERROR: greenserve baseline *main.json has no item of this session (it has: "
                            "mini-gpt2 onnx-cpu)*"])
    r = run(suite, "--greenserve-fail=ram_pct:5%")
    assert r.ret == 4
    r.stderr.fnmatch_lines(["ERROR: --greenserve-fail='ram_pct:5%': 'ram_pct' is not gateable*"])
    for res in (r,):
        assert "Traceback" not in res.stdout.str() + res.stderr.str()
