#!/usr/bin/env python
"""ms/token of each CPU engine on the given models, outside the meters: threads=1, engines loaded
together and interleaved round by round (3 rounds of 8 prompts, 32 new tokens), median of the
requests. For a shared machine, where a session's configurations run minutes apart.

    python tools/engines_ms_per_token.py mini-gpt2 mini-starcoder mini-pythia mini-llama
"""
import random
import statistics
import sys
import time
from pathlib import Path
from pytest_greenserve.models import REGISTRY, default_cache_dir, resolve
from pytest_greenserve.engines.base import EngineOptions
from pytest_greenserve.engines import torch_eager, ortgenai, ovgenai, llamacpp, onnx
import torch; torch.set_num_threads(1)
CACHE = default_cache_dir()
CONFIGS = [("torch", torch_eager.TorchEngine, ""), ("onnx", onnx.OnnxEngine, ""), ("ovgenai", ovgenai.OvGenaiEngine, ""),
           ("llamacpp:f16", llamacpp.LlamaCppEngine, "f16"), ("llamacpp:q8_0", llamacpp.LlamaCppEngine, "q8_0"),
           ("ortgenai", ortgenai.OrtGenaiEngine, "")]
rng = random.Random(0)
prompts = [[rng.randrange(2, 2000) for _ in range(rng.randrange(10, 16))] for _ in range(8)]
for model in sys.argv[1:]:
    h = resolve(REGISTRY[model], "auto", None, CACHE)
    engines = {}
    for name, cls, v in CONFIGS:
        if cls.unavailable_reason("cpu") or cls.model_unavailable_reason(h.architecture):
            continue  # not installed here, or not this architecture
        e = cls(h, "cpu", EngineOptions(threads=1, variant=v)); e.load()
        for p in prompts[:2]: e.generate(p, 32)
        engines[name] = (e, [])
    for rnd in range(3):
        for name, (e, times) in engines.items():
            for p in prompts:
                t = time.perf_counter(); e.generate(p, 32); times.append((time.perf_counter() - t) * 1000 / 32)
    for name, (e, times) in engines.items():
        q = statistics.quantiles(times, n=4)
        print(f"{model:15s} {name:14s} median {statistics.median(times):7.3f} ms/token  (IQR {q[0]:.3f}-{q[2]:.3f}, {len(times)} requests)", flush=True)
