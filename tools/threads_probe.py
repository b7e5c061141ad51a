"""Issue 8, part 8: why onnx-cpu was 4x slower than torch-cpu on the GPU machine's 16 cores.

Each variant runs in a fresh process (thread pools are per process), outside the plugin's meters:
    python tools/threads_probe.py --cache DIR --out FILE.json MODEL...
A child prints one JSON line: ms/token (median request / new tokens over the prompts), the
threads the process holds after load, and what the machine says its cores are.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [  # (name, engine, threads, spinning, torch_first)
    ("torch default", "torch", None, True, False),
    ("onnx default (spinning)", "onnx", None, True, False),
    ("onnx spinning off", "onnx", None, False, False),
    ("onnx after torch (as the plugin: reference first)", "onnx", None, True, True),
    ("onnx threads=affinity", "onnx", "affinity", True, False),
    ("onnx threads=half", "onnx", "half", True, False),
    ("torch threads=half", "torch", "half", True, False),
]


def cores() -> dict:
    out = {"os.cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
        if os.path.exists(path):
            out[path] = open(path).read().strip()
    try:
        import psutil

        out["physical"] = psutil.cpu_count(logical=False)
    except Exception:
        pass
    return out


def child(a) -> None:
    import torch
    from transformers import AutoTokenizer

    from pytest_greenserve.engines.base import EngineOptions
    from pytest_greenserve.engines.onnx import OnnxEngine
    from pytest_greenserve.engines.torch_eager import TorchEngine
    from pytest_greenserve.models import REGISTRY, resolve
    from pytest_greenserve.prompts import make_prompts

    aff = len(os.sched_getaffinity(0))
    threads = {"affinity": aff, "half": max(1, aff // 2)}.get(a.threads) if a.threads else None
    handle = resolve(REGISTRY[a.model], "replica", None, Path(a.cache), 0)
    tok = AutoTokenizer.from_pretrained(handle.ref)
    prompts = [tok(p.text, add_special_tokens=False)["input_ids"] for p in make_prompts(tok, a.prompts, 0)]
    if a.torch_first:
        ref = TorchEngine(handle, "cpu", EngineOptions())
        ref.load()
        for p in prompts[:4]:
            ref.generate(p, a.new_tokens)
        ref.close()
    cls = OnnxEngine if a.engine == "onnx" else TorchEngine
    eng = cls(handle, "cpu", EngineOptions(threads=threads, ort_spinning=a.spinning == "on"))
    eng.load()
    for p in prompts[:2]:
        eng.generate(p, a.new_tokens)
    times = []
    for p in prompts:
        t = time.perf_counter()
        eng.generate(p, a.new_tokens)
        times.append(time.perf_counter() - t)
    print(json.dumps({"ms_per_token": 1e3 * statistics.median(times) / a.new_tokens,
                      "process_threads": len(os.listdir("/proc/self/task")),
                      "torch_threads": torch.get_num_threads(), "threads_asked": threads,
                      "settings": eng.thread_settings(), "cores": cores()}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["tiny-starcoder", "codeparrot-small"])
    ap.add_argument("--cache", default="/tmp/gscache")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--model"); ap.add_argument("--engine"); ap.add_argument("--threads")
    ap.add_argument("--spinning", default="on"); ap.add_argument("--torch-first", action="store_true")
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0
    results = []
    for model in a.models:
        for name, engine, threads, spinning, torch_first in VARIANTS:
            cmd = [sys.executable, __file__, "--child", "--model", model, "--engine", engine, "--cache", a.cache,
                   "--prompts", str(a.prompts), "--new-tokens", str(a.new_tokens),
                   "--spinning", "on" if spinning else "off"]
            cmd += ["--threads", threads] if threads else []
            cmd += ["--torch-first"] if torch_first else []
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
            line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
            row = {"model": model, "variant": name, **(json.loads(line) if line else
                                                      {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]})}
            results.append(row)
            print(f"{model:18s} {name:50s} " + (f"{row['ms_per_token']:7.2f} ms/token  threads in process "
                  f"{row['process_threads']}" if line else row["error"]), flush=True)
            if a.out:
                Path(a.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results[0].get("cores", {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
