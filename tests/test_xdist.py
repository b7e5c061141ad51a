"""pytest-xdist end to end: ``-n 2`` pytester sessions of mini-gpt2 on *paced* torch engines
(each request padded to ``GS_PACE`` seconds, times ``1 + GS_SLOWDOWN``). One run directory,
every item's sample in it, one set of reports and one gate, whatever the number of workers;
a worker killed mid-item; CPU items never measured beside another worker's unless asked.
Slow: every worker loads torch."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("xdist")
pytestmark = pytest.mark.slow

CONFTEST = '''
import os, signal, time
from pathlib import Path
from pytest_greenserve.engines.torch_eager import TorchEngine

_DONE = {}

class Paced(TorchEngine):
    """Real tokens (computed once per prompt, in the warm-up), then a fixed time per request."""
    name = "paced"
    calls = 0
    def generate(self, input_ids, new_tokens):
        type(self).calls += 1
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

class Paced2(Paced):
    name = "paced2"

class Crashy(Paced):
    """Dies (SIGKILL, as the kernel's OOM killer would) on its third request, once per directory."""
    name = "crashy"
    calls = 0
    def generate(self, input_ids, new_tokens):
        flag = Path(os.environ["GS_CRASH_FLAG"])
        if type(self).calls == 2 and not flag.exists():
            flag.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(input_ids, new_tokens)

def pytest_greenserve_register_engines(registry):
    registry.update(paced=Paced, paced2=Paced2, crashy=Crashy)
'''

TEST = '''
def test_autocomplete(greenserve):
    greenserve.measure()
'''

ARGS = ["-p", "no:cacheprovider", "-n", "2", "--greenserve-models=mini-gpt2", "--greenserve-new-tokens=2",
        "--greenserve-idle=0", "--greenserve-settle=0", "--greenserve-warmup=0", "--greenserve-min-sample-s=0",
        "--greenserve-threads=1", "--greenserve-report-dir=reports"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("greenserve-cache")


@pytest.fixture
def suite(pytester, monkeypatch, cache):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_serving=TEST)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GS_SLOWDOWN", "0")
    monkeypatch.setenv("GS_CRASH_FLAG", str(pytester.path / "crashed"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return pytester


def run(pytester, cache, *args):
    return pytester.runpytest_subprocess(*ARGS, f"--greenserve-cache-dir={cache}", *args, timeout=400)


def run_dirs(pytester):
    return sorted(p for p in (pytester.path / "reports").iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name != "baselines")


def samples(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]


def overlap(a, b):
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def test_two_workers_make_one_run_with_one_report_and_one_gate(suite, cache, monkeypatch):
    r = run(suite, cache, "--greenserve-configs=paced-cpu,paced2-cpu", "--greenserve-prompts=4",
            "--greenserve-runs=5", "--greenserve-save=main")
    assert r.ret == 0, r.stdout.str()
    r.assert_outcomes(passed=10)
    (run_dir,) = run_dirs(suite)  # one run directory for both workers
    rows = samples(run_dir)
    assert sorted((s["config"], s["repetition"]) for s in rows) == sorted(
        (c, k) for c in ("paced-cpu", "paced2-cpu") for k in range(1, 6))  # a sample per item, each once
    assert {s["worker"] for s in rows} == {"gw0", "gw1"}
    for config in ("paced-cpu", "paced2-cpu"):  # a (model, configuration) stays on one worker
        assert len({s["worker"] for s in rows if s["config"] == config}) == 1
    # CPU items: never measured beside another worker's item
    assert not any(overlap(a, b) for a in rows for b in rows if a["worker"] != b["worker"])
    assert all(s["concurrent"] is False and s["concurrent_with"] == "" for s in rows)
    assert len(list(suite.path.rglob("stats.csv"))) == 1 and (run_dir / "report.html").is_file()
    with open(run_dir / "samples.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 10
    meta = json.loads((run_dir / "run.json").read_text())
    assert set(meta["workers"]) == {"gw0", "gw1"} and sum(w["samples"] for w in meta["workers"].values()) == 10
    assert meta["meter_notes"]  # the workers' (why CPU energy is estimated here)
    r.stdout.fnmatch_lines(["*greenserve baseline saved: *baselines/main.json (10 samples)*"])
    assert r.stdout.str().count("greenserve baseline saved") == 1  # by the controller alone

    # the gate, once, on the controller, over both workers' samples: a doubling of paced2 is found
    monkeypatch.setenv("GS_SLOWDOWN", "1")
    r = run(suite, cache, "--greenserve-configs=paced-cpu,paced2-cpu", "--greenserve-prompts=4",
            "--greenserve-runs=5", "--greenserve-compare=main", "--greenserve-fail=time:20%")
    assert r.ret == 6, r.stdout.str()
    for config in ("paced-cpu", "paced2-cpu"):  # in the order the workers finished
        r.stdout.fnmatch_lines([f"mini-gpt2 {config} *time_s (fail 20%)*regression*", "*greenserve gate FAILED*"])
    assert r.stdout.str().count("greenserve gate FAILED") == 1


def test_a_killed_worker_keeps_its_finished_samples_and_its_item_fails_with_the_reason(suite, cache):
    r = run(suite, cache, "--greenserve-configs=crashy-cpu,paced-cpu", "--greenserve-prompts=1",
            "--greenserve-runs=3")
    out = r.stdout.str()
    r.assert_outcomes(passed=5, failed=1)  # the others finish, the crashed item is not run twice
    assert "crashed while running" in out and "test_autocomplete[mini-gpt2-crashy-cpu-r" in out
    assert "died mid-item (killed, or out of memory); the 1 sample(s) it finished are kept in" in out
    (run_dir,) = run_dirs(suite)
    rows = samples(run_dir)
    assert sorted(s["config"] for s in rows) == ["crashy-cpu"] * 2 + ["paced-cpu"] * 3
    crashed_pid_worker = {s["worker"] for s in rows if s["config"] == "crashy-cpu"}
    assert len(crashed_pid_worker) == 2  # one before the crash, one on the worker that took the rest
    assert (run_dir / "stats.csv").is_file() and (run_dir / "report.html").is_file()


def test_cpu_overlap_yes_runs_cpu_items_together_and_flags_them(suite, cache, monkeypatch):
    monkeypatch.setenv("GS_PACE", "0.25")
    r = run(suite, cache, "--greenserve-configs=paced-cpu,paced2-cpu", "--greenserve-prompts=4",
            "--greenserve-runs=3", "--greenserve-cpu-overlap")
    assert r.ret == 0, r.stdout.str()
    (run_dir,) = run_dirs(suite)
    rows = samples(run_dir)
    pairs = [(a, b) for a in rows for b in rows if a["worker"] < b["worker"] and overlap(a, b)]
    assert pairs, "the two workers' CPU samples never ran at the same time"
    for a, b in pairs:
        assert a["concurrent"] is True and b["worker"] in a["concurrent_with"].split(",")
        assert b["concurrent"] is True and a["worker"] in b["concurrent_with"].split(",")
    with open(run_dir / "stats.csv", newline="") as fh:
        flagged = [row for row in csv.DictReader(fh) if row["test"] == "concurrent"]
    assert flagged and "measured while other pytest-xdist workers ran" in flagged[0]["reason"]
    assert "concurrent" in (run_dir / "summary.md").read_text()


def test_a_baseline_without_any_item_of_the_session_is_a_one_line_usage_error(suite, cache):
    base = suite.path / "reports" / "baselines"
    base.mkdir(parents=True)
    (base / "main.json").write_text(json.dumps({"kind": "greenserve-baseline", "schema_version": 1, "name": "main",
                                                "samples": [{"model": "mini-gpt2", "config": "onnx-cpu"}]}))
    r = run(suite, cache, "--greenserve-configs=paced-cpu", "--greenserve-compare=main",
            "--greenserve-compare-any-machine")
    assert r.ret == 4, r.stdout.str() + r.stderr.str()
    r.stderr.fnmatch_lines(["ERROR: greenserve baseline *main.json has no item of this session (it has: mini-gpt2 "
                            "onnx-cpu)*"])
    assert "INTERNALERROR" not in r.stdout.str() + r.stderr.str()
