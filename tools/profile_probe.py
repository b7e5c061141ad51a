"""Two checks on the GPU machine, outside the plugin's meters.

    python tools/profile_probe.py ort MODEL [--spinning on|off]   # ONNX Runtime's per-operator profile on CPU
    python tools/profile_probe.py lingering MODEL                 # does a profiled generation slow later ones?

``ort`` prints the operator types that take the most time in one greedy generation of 32
tokens (ONNX Runtime's own profiler: ``SessionOptions.enable_profiling``), per token.
``lingering`` times torch-cuda and compile-cuda (graph) before and after ``roofline.count_launches``.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path


def prompts_for(handle, n):
    from transformers import AutoTokenizer

    from pytest_greenserve.prompts import make_prompts

    tok = AutoTokenizer.from_pretrained(handle.ref)
    return [tok(p.text, add_special_tokens=False)["input_ids"] for p in make_prompts(tok, n, 0)]


def ort(a, handle) -> dict:
    import onnxruntime

    from pytest_greenserve.engines.base import EngineOptions
    from pytest_greenserve.engines.onnx import OnnxEngine

    made = onnxruntime.SessionOptions

    def profiled():  # every session the engine opens writes ONNX Runtime's profile
        so = made()
        so.enable_profiling = True
        so.profile_file_prefix = f"/tmp/ortprof-{a.spinning}"
        return so

    onnxruntime.SessionOptions = profiled
    eng = OnnxEngine(handle, "cpu", EngineOptions(ort_spinning=a.spinning == "on"))
    eng.load()
    prompts = prompts_for(handle, 4)
    for p in prompts[:2]:
        eng.generate(p, a.new_tokens)
    t = time.perf_counter()
    for p in prompts[2:4]:
        eng.generate(p, a.new_tokens)
    ms_per_token = 1e3 * (time.perf_counter() - t) / (2 * a.new_tokens)
    sessions = [v for v in vars(eng.ort_model).values() if isinstance(v, onnxruntime.InferenceSession)]
    path = sessions[0].end_profiling()
    events = json.loads(Path(path).read_text())
    by_op: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] += e.get("dur", 0) / 1e3
            calls[op] += 1
    tokens = 4 * a.new_tokens  # the profile covers all four generations
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    print(f"{handle.name} onnx-cpu spinning={a.spinning}: {ms_per_token:.2f} ms/token wall; operators "
          f"{total / tokens:.2f} ms/token in {sum(calls.values()) / tokens:.0f} node runs per token")
    for op, ms in top:
        print(f"  {op:24s} {ms / tokens:7.3f} ms/token  {calls[op] / tokens:6.1f} runs/token  {100 * ms / total:5.1f}%")
    return {"model": handle.name, "spinning": a.spinning, "ms_per_token": ms_per_token,
            "op_ms_per_token": {op: ms / tokens for op, ms in top},
            "op_runs_per_token": {op: calls[op] / tokens for op, _ in top}}


def lingering(a, handle) -> dict:
    import torch

    from pytest_greenserve import roofline
    from pytest_greenserve.engines.base import EngineOptions
    from pytest_greenserve.engines.compile import CompileEngine
    from pytest_greenserve.engines.torch_eager import TorchEngine

    prompts = prompts_for(handle, 16)
    out = {}
    for name, eng in (("torch-cuda", TorchEngine(handle, "cuda", EngineOptions())),
                      ("compile-cuda graph", CompileEngine(handle, "cuda", EngineOptions(compile_mode="graph")))):
        eng.load()
        for p in prompts:
            eng.generate(p, a.new_tokens)

        def ms():
            times = []
            for p in prompts:
                torch.cuda.synchronize(); t = time.perf_counter()
                eng.generate(p, a.new_tokens)
                torch.cuda.synchronize(); times.append(time.perf_counter() - t)
            return round(1e3 * statistics.median(times) / a.new_tokens, 3)

        before = [ms() for _ in range(3)]
        counted = roofline.count_launches(lambda: eng.generate(prompts[0], a.new_tokens), a.new_tokens)
        after = [ms() for _ in range(3)]
        out[name] = {"before_ms_per_token": before, "after_ms_per_token": after, "counted": vars(counted)}
        print(f"{name}: ms/token before profiling {before}, after {after}; {vars(counted)}", flush=True)
        eng.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("ort", "lingering"))
    ap.add_argument("model")
    ap.add_argument("--spinning", default="on")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--cache", default="/tmp/gscache")
    ap.add_argument("--out")
    a = ap.parse_args()
    from pytest_greenserve.models import REGISTRY, resolve

    handle = resolve(REGISTRY[a.model], "replica", None, Path(a.cache), 0)
    result = (ort if a.what == "ort" else lingering)(a, handle)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
