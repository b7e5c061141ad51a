"""tools/project_study.py: a study's wall time projected from a probe run's timeline, checked by hand."""

import importlib.util
import json
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "project_study.py"
spec = importlib.util.spec_from_file_location("project_study", TOOL)
ps = importlib.util.module_from_spec(spec)
sys.modules["project_study"] = ps  # dataclasses look their module up there
spec.loader.exec_module(ps)

RUN_ID = "20260101-000000-vm-1"


def sample(model, config, start, end, time_s, worker="gw0", requests=8):
    t0 = ps.run_start(RUN_ID)
    return {"run_id": RUN_ID, "model": model, "config": config, "worker": worker, "requests": requests,
            "started_at": t0 + start, "finished_at": t0 + end, "time_s": time_s}


def test_setup_is_the_gap_on_its_worker_less_the_probes_idle_and_settle():
    samples = [sample("codeparrot-small", "torch-cuda", 10, 12, 2.0),
               sample("codeparrot-small", "compile-cuda", 20, 21, 1.0)]
    items = ps.probe_items(samples, {"codeparrot-small": 1.1e8}, ps.run_start(RUN_ID), idle_s=2, settle_s=1)
    torch, compiled = items[("codeparrot-small", "torch-cuda")], items[("codeparrot-small", "compile-cuda")]
    assert (torch.setup_s, torch.prompt_s) == (7.0, 0.25)  # 10 s after the start, less 2 + 1
    assert (compiled.setup_s, compiled.prompt_s) == (5.0, 0.125)  # 20 - 12 - 3


def test_the_projection_by_hand(tmp_path, capsys):
    samples = [sample("codeparrot-small", "torch-cuda", 10, 12, 2.0),
               sample("codeparrot-small", "compile-cuda", 20, 21, 1.0)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    ps.main([str(path), "--probe-idle", "2", "--probe-settle", "1", "--prompts", "16", "--runs", "2",
             "--workers", "2", "--idle", "5", "--settle", "1", "--models", "codeparrot-small"])
    out = capsys.readouterr().out
    # torch: 7 + 2 x (16 x 0.25 + 6) = 27, plus the reference of 8 more prompts at 0.25 s = 29
    # compile: 5 + 2 x (16 x 0.125 + 6) = 21; one worker 50 s, two workers the longer item, 29 s
    assert "| codeparrot-small | torch-cuda | 0.250 | 7.0 | 2.0 | 29 | measured |" in out
    assert "| codeparrot-small | compile-cuda | 0.125 | 5.0 | 0.0 | 21 | measured |" in out
    assert "one worker: 50 s" in out and "2 workers: 29 s" in out and "estimated share: 0%" in out


def test_an_item_the_probe_did_not_reach_is_estimated_and_labelled(tmp_path, capsys):
    samples = [sample("codeparrot-small", "torch-cuda", 10, 12, 2.0)]  # 110M measured
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(samples[0]) + "\n")
    ps.main([str(path), "--probe-idle", "2", "--probe-settle", "1", "--prompts", "8", "--runs", "1",
             "--workers", "1", "--idle", "0", "--settle", "0", "--models", "codeparrot-small,pythia-410m",
             "--configs", "torch-cuda,compile-cuda"])
    out = capsys.readouterr().out
    # pythia-410m (410M): 0.25 s per prompt x 410/110, set-up 7 s x 410/110
    assert "| pythia-410m | torch-cuda | 0.932 | 26.1 |" in out and "estimated (from codeparrot-small, x params)" in out
    assert "not in the plan: codeparrot-small compile-cuda (no measured item of this configuration)" in out


def test_workers_take_the_next_item_when_they_free():
    assert ps.schedule([10, 4, 4, 4], 2) == [10, 12]
    assert ps.schedule([3, 3], 1) == [6]
