"""Issue 19 probe on the GPU machine: which inductor settings bring compile-cuda closer to the
card's limit? Each variant runs in a fresh process (inductor's configuration and caches are
per process), outside the plugin's meters; the measured sessions then run the chosen setting.

    python tools/compile_variants.py MODEL --dtypes bf16,fp32 --variants base,cdt,cdt-math,autotune \
        --prompts 16 --new-tokens 32 --cache DIR --out FILE.json [--budget-s 520]

Variants:
  base      the engine as shipped (inductor+graph)
  cdt       inductor's coordinate-descent tuning of every Triton kernel's launch configuration
  cdt-math  cdt, and one-token attention written as matmul + softmax + matmul, which inductor can
            fuse with the mask and the cache reads (SDPA is an opaque kernel to it)
  autotune  cdt, and inductor's max-autotune of the GEMMs (Triton templates with fused epilogues)
  fused     the engine's fused+graph mode: hand-fused Triton kernels, five per layer (engines/fused_decoder.py)
  fused-nopdl  the same, every kernel launched without programmatic dependent launch
  fused-t32 the same, attention reading the cache 32 positions per iteration instead of 64
  fused-eagerprefill  the same, prefill by the eager decoder, captured, instead of the fused kernels
            (FusedDecoder.prefill; before the fused prefill became the default, variant fused-prefill turned it on)

Per variant: ms/token (median request / new tokens, CUDA synchronised), the first request's
tokens against the base variant's (exact; bf16 near-ties may differ, the plugin judges quality),
the compile seconds, and the GPU kernels one captured decode step and the first prompt's
captured prefill run, by name with their GPU time (torch.profiler over replays of the graphs;
None where the profiler sees no kernels inside a graph).
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

VARIANTS = ("base", "cdt", "cdt-math", "autotune", "fused", "fused-nopdl", "fused-t32", "fused-eagerprefill")


def child(a) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from pytest_greenserve.engines import compile as compile_engine
    from pytest_greenserve.engines import static_decoder
    from pytest_greenserve.engines.base import EngineOptions
    from pytest_greenserve.engines.compile import CompileEngine
    from pytest_greenserve.models import REGISTRY, resolve
    from pytest_greenserve.prompts import make_prompts

    v = a.variant
    fused = v.startswith("fused")
    if fused:
        from pytest_greenserve.engines import fused_kernels

        fused_kernels.USE_PDL = fused_kernels.USE_PDL and v != "fused-nopdl"
        if v == "fused-t32":
            fused_kernels.ATTENTION_BLOCK_T = 32
        if v == "fused-eagerprefill":
            compile_engine.FUSED_PREFILL = False
    if v != "base" and not fused:
        torch._inductor.config.coordinate_descent_tuning = True
    if v == "autotune":
        torch._inductor.config.max_autotune = True
    if v == "cdt-math":
        sdpa = F.scaled_dot_product_attention

        def attention(q, k, v_, attn_mask=None, scale=None, enable_gqa=False):
            if q.shape[2] != 1 or enable_gqa:
                return sdpa(q, k, v_, attn_mask=attn_mask, scale=scale, enable_gqa=enable_gqa)
            s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
            s = s.masked_fill(~attn_mask, float("-inf"))
            return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v_

        static_decoder.F = type("F", (), {"scaled_dot_product_attention": staticmethod(attention)})

    handle = resolve(REGISTRY[a.model], "replica", None, Path(a.cache), 0)
    tok = AutoTokenizer.from_pretrained(handle.ref)
    prompts = [tok(p.text, add_special_tokens=False)["input_ids"] for p in make_prompts(tok, a.prompts, 0)]
    cuda = a.provider == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mode = ("fused+graph" if fused else "inductor+graph") if cuda else "inductor"
    eng = CompileEngine(handle, a.provider, EngineOptions(dtype=a.dtype, compile_mode=mode))
    t0 = time.perf_counter()
    eng.load()
    load_s = time.perf_counter() - t0
    seen = set()
    for p in prompts:  # every prompt length captured before timing, as the runner's warm-up does
        if len(p) not in seen:
            seen.add(len(p))
            eng.generate(p, a.new_tokens)
    times, ttfts, first = [], [], None
    for p in prompts:
        sync()
        t = time.perf_counter()
        gen = eng.generate(p, a.new_tokens)
        out = gen.token_ids
        sync()
        times.append(time.perf_counter() - t)
        ttfts.append(gen.ttft_s)
        first = first or out
    kernels, kernel_names, prefill_kernels, prefill_kernel_names = None, {}, None, {}
    try:
        if not cuda:
            raise RuntimeError("no CUDA graph to profile on CPU")

        def decode():
            eng.pos.zero_()
            eng._decode_graph.replay()

        kernels, kernel_names = profiled(decode, torch)
        # the first prompt's prefill graph (captured per prompt length), likewise
        prefill_graph = eng._prefill_graphs[len(prompts[0])][0]
        prefill_kernels, prefill_kernel_names = profiled(prefill_graph.replay, torch)
    except Exception as exc:  # the profiler is a diagnostic: its failure costs nothing else
        print(f"profiler: {type(exc).__name__}: {exc}", file=sys.stderr)
    parts = anatomy(eng, len(prompts[0])) if fused else None
    info = eng.load_info()
    tuned = info.get("fused_gemv_tuning")  # per GEMV site: the launch configuration chosen, and its timings
    return {"variant": v, "dtype": a.dtype, "model": a.model, "ms_per_token": 1e3 * statistics.median(times) / a.new_tokens,
            "first_tokens": first, "kernels_per_decode_step": kernels, "kernel_names": kernel_names,
            "kernels_per_prefill": prefill_kernels, "prefill_kernel_names": prefill_kernel_names,
            "gemv_configs": tuned, "load_s": load_s,
            "ttft_ms_median": 1e3 * statistics.median(ttfts) if all(t is not None for t in ttfts) else None,
            "step_parts_us": parts,
            "compile_mode": info["compile_mode"], "compile_fallback": info["compile_fallback"],
            "pdl": fused and fused_kernels.USE_PDL,
            "fused_prefill": fused and compile_engine.FUSED_PREFILL,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def profiled(replay, torch, replays: int = 8) -> tuple:
    """The GPU kernels ``replay()`` runs (torch.profiler over ``replays`` calls): how many per
    call, and by name (cut to 60 characters) [count, GPU µs] per call, the costliest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            replay()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower()
              and "memset" not in e.name.lower()]
    names = {}
    for e in events:
        row = names.setdefault(e.name[:60], [0.0, 0.0])
        row[0] += 1 / replays
        row[1] += (getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0)) / replays
    return (len(events) / replays if events else None), dict(sorted(names.items(), key=lambda kv: -kv[1][1]))


def anatomy(eng, position: int) -> dict:
    """The fused decode step at ``position`` (the first prompt's length) and its parts, each
    captured as a CUDA graph (the position reset inside) and replayed: µs per step of the whole
    step, of it without attention, of the GEMVs alone, and of the attention kernels alone; and
    µs per 8 steps captured as one graph (from ``position`` on).
    Then the prefill of that prompt (the engine's captured graph, replayed; no host copy or
    synchronisation, which TTFT includes) and, where it is the fused prefill, its GEMMs alone
    and its attention alone."""
    from pytest_greenserve.engines import fused_kernels as k
    from pytest_greenserve.engines.fused_tuning import graph_us, replay_us

    f = eng.fused
    f.pos = eng.pos

    def attention_only():
        for i in range(len(f.layers)):
            f.attention(i)

    def no_attention():
        k.embed(eng.tok, eng.pos, f.wte, f.wpe, f.x, scale=f.embed_scale)
        f.layers_at(eng.pos, attention=False)
        f.lm_head_gemv(f.best)
        k.greedy_advance(f.best, eng.tok, eng.pos, eng.generated)

    def steps(n):  # n steps in one graph: no graph boundary (nor its launch gap) between them
        for _ in range(n):
            f.step(eng.tok, eng.pos, eng.generated)

    parts = {"step": lambda: f.step(eng.tok, eng.pos, eng.generated), "step without attention": no_attention,
             "8 steps in one graph": lambda: steps(8),
             "GEMVs alone": lambda: (f.layers_at(eng.pos, attention=False), f.lm_head_gemv(f.best)),
             "attention alone": attention_only}
    timed = {}
    for name, fn in parts.items():
        def launch():
            eng.pos.fill_(position)
            fn()
        timed[name] = round(graph_us(launch, replays=20, warmup=3), 1)
    if f.rows is not None:  # the fused prefill ran (not variant fused-eagerprefill): its parts, at the first prompt's length
        n = position
        timed["prefill GEMMs alone"] = round(graph_us(lambda: f.prefill_layers(n, attention=False)), 1)
        timed["prefill attention alone"] = round(graph_us(lambda: [f.prefill_attention(i, n)
                                                                   for i in range(len(f.layers))]), 1)
    # the engine's own prefill, as captured
    timed["prefill"] = round(replay_us(eng._prefill_graphs[position][0], replays=20, warmup=1), 1)
    f.reset_greedy_choice()
    print("step parts, µs:", timed, file=sys.stderr)
    return timed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--cache", default="/tmp/gscache")
    ap.add_argument("--provider", default="cuda", help="cpu: a check of this script (inductor, no graph)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--budget-s", type=float, default=520.0, help="stop starting variants after this")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # the child process's one variant
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print("RESULT " + json.dumps(child(a)), flush=True)
        return 0
    started, results = time.monotonic(), []
    for dtype in a.dtypes.split(","):
        for v in a.variants.split(","):
            left = a.budget_s - (time.monotonic() - started)
            if left < 60:
                results.append({"variant": v, "dtype": dtype, "model": a.model, "skipped": "out of time"})
                continue
            cmd = [sys.executable, __file__, a.model, "--variant", v, "--dtype", dtype, "--prompts", str(a.prompts),
                   "--new-tokens", str(a.new_tokens), "--cache", a.cache, "--provider", a.provider]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left, env=dict(os.environ))
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                r = json.loads(line[7:]) if line else {"variant": v, "dtype": dtype, "model": a.model,
                                                       "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            except subprocess.TimeoutExpired:
                r = {"variant": v, "dtype": dtype, "model": a.model, "error": f"over the {left:.0f} s left"}
            base = next((x for x in results if x.get("dtype") == dtype and x.get("variant") == "base"
                         and "first_tokens" in x), None)
            if base and "first_tokens" in r:
                r["first_request_equals_base"] = r["first_tokens"] == base["first_tokens"]
            results.append(r)
            print(json.dumps({k: r.get(k) for k in ("model", "dtype", "variant", "ms_per_token", "kernels_per_decode_step",
                                                    "load_s", "first_request_equals_base", "compile_fallback", "error",
                                                    "skipped", "ttft_ms_median", "step_parts_us")}), flush=True)
            if a.out:
                Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
