"""The fused step's GEMVs alone, on the GPU machine: how fast each of a model's five GEMV shapes
streams its weights under each launch configuration, against cuBLAS and the card's streaming read.

    python tools/gemv_bench.py starcoderbase-1b --dtype bf16 --out FILE.json [--configs 12]

Each shape is measured as the step runs it: one launch per layer, each on its own copy of the
weights (so they come from memory, not L2), with the step's epilogue flags and launch mode
(programmatic dependent launch where the card has it), captured as one CUDA graph and replayed.
Per shape and configuration: µs per launch and the weights' GB/s. Then the GEMVs of a whole step
(every layer's four and the vocabulary GEMV, nothing else) with the default configuration and
with the fastest configuration of each shape. The engine's own choice, tuned in the step's
sequence (engines/fused_tuning.py), is in tools/compile_variants.py's results.

Checks on the card: every configuration's result against the unsplit one (split-K adds in
another order), and a split-K configuration's result the same bits on a second launch.
"""
from __future__ import annotations

import argparse
import json
import math
import time


def shapes(model: str) -> tuple[list[dict], int]:
    """The step's GEMVs of ``model``'s replica: name, rows, K and the kernel's flags; and the layers."""
    from pytest_greenserve.models import replica_config_dict, spec_for

    spec = spec_for(model)
    if spec.architecture not in ("gpt2", "gpt_bigcode"):
        raise SystemExit(f"gemv_bench: measures gpt2 and gpt_bigcode shapes, not {spec.architecture} ({model})")
    cfg = replica_config_dict(spec, 0)
    hidden = cfg.get("n_embd") or cfg["hidden_size"]
    heads = cfg.get("n_head") or cfg["num_attention_heads"]
    inner = cfg.get("n_inner") or 4 * hidden
    kv_heads = 1 if cfg.get("multi_query") else heads
    head_dim = hidden // heads
    layers = cfg.get("n_layer") or cfg["num_hidden_layers"]
    return [
        dict(name="qkv", n=(heads + 2 * kv_heads) * head_dim, k=hidden, ln=True),
        dict(name="out", n=hidden, k=hidden, residual=True),
        dict(name="fc", n=inner, k=hidden, ln=True, gelu=True),
        dict(name="proj", n=hidden, k=inner, residual=True),
        dict(name="lm_head", n=cfg["vocab_size"], k=hidden, ln=True, argmax=True),
    ], layers


def epilogue(g: dict, dev) -> dict:
    """The kernel's epilogue arguments for shape ``g`` (:func:`shapes`): a random bias, a layer
    norm folded in (random weight and row sums) where the shape has one, GELU, residual."""
    import torch

    from pytest_greenserve.engines import fused_kernels as fk

    n, k = g["n"], g["k"]
    ln = (torch.rand(k, device=dev) + 0.5, torch.randn(n, device=dev), 1e-5) if g.get("ln") else None
    return dict(bias=torch.randn(n, device=dev), ln=ln, act=fk.GELU_TANH if g.get("gelu") else fk.ACT_NONE,
                residual=bool(g.get("residual")))


def per_copy_us(launch, copies: int, replays: int) -> float:
    """µs per launch: ``launch(c)`` for every copy c of the weights, captured as one CUDA graph
    and replayed."""
    from pytest_greenserve.engines.fused_tuning import graph_us

    def every_copy():
        for c in range(copies):
            launch(c)
    return graph_us(every_copy, replays=replays, warmup=3) / copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--configs", type=int, default=0, help="measure only the first N configurations (0: all)")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    import triton

    from pytest_greenserve.engines import fused_kernels as fk

    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    dev = "cuda"
    gemvs, layers = shapes(a.model)
    max_rows = max(g["n"] for g in gemvs)
    scratch = fk.GemvScratch(max_rows, dev)
    t0 = time.time()

    def timed(launch, copies: int) -> float:
        return per_copy_us(launch, copies, a.replays)

    # the card's streaming read (a reduction over 2 GB), the ceiling a GEMV can approach
    big = torch.empty(2**30, dtype=torch.bfloat16, device=dev).normal_()
    read_us = timed(lambda c: big.sum(dtype=torch.float32), 1)
    result = {"model": a.model, "dtype": a.dtype, "device": torch.cuda.get_device_name(), "pdl": fk.USE_PDL,
              "torch": torch.__version__, "triton": triton.__version__, "layers": layers,
              "streaming_read_GBps": round(big.numel() * 2 / read_us / 1e3, 1), "shapes": []}
    del big
    print(f"streaming read: {result['streaming_read_GBps']} GB/s", flush=True)

    configs = fk.candidate_configs()
    if a.configs:
        configs = configs[:a.configs] + [c for c in configs if c["SPLIT_K"] > 1]
    state = {}
    for g in gemvs:
        n, k = g["n"], g["k"]
        copies = layers if g["name"] != "lm_head" else max(2, math.ceil(4e8 / (n * k * dtype.itemsize)))
        ws = [torch.randn(n, k, device=dev).to(dtype) * 0.02 for _ in range(copies)]
        x = torch.randn(k, device=dev)
        y = torch.randn(n, device=dev)
        y0 = y.clone()
        best = torch.full((1,), fk.NO_BEST, dtype=torch.long, device=dev) if g.get("argmax") else None
        flags = dict(epilogue(g, dev), best=best, scratch=scratch)
        state[g["name"]] = (ws, x, y, flags)
        nbytes = n * k * dtype.itemsize
        rows = []

        def record(label, us, config=None, **extra):
            rows.append(dict(label=label, config=config, us=round(us, 3), GBps=round(nbytes / us / 1e3, 1), **extra))
            print(f"{g['name']:8} {n:6}x{k:<6} {label:28} {us:8.2f} µs {nbytes / us / 1e3:7.0f} GB/s", flush=True)

        xb = x.to(dtype)
        record("cublas (torch.mv, no epilogue)", timed(lambda c: torch.mv(ws[c], xb), copies))

        def reference(config):
            y.copy_(y0)
            if best is not None:
                best.fill_(fk.NO_BEST)
            fk.gemv(x, ws[0], y, **flags, config=config)
            torch.cuda.synchronize()
            return y.clone()

        record("default", timed(lambda c: fk.gemv(x, ws[c], y, **flags), copies), fk.default_config(n, k))
        unsplit = reference(dict(BLOCK_N=4, BLOCK_K=512, SPLIT_K=1, num_warps=4))
        for config in [c for c in configs if fk.fits(c, n, k)]:
            label = "BN{BLOCK_N} BK{BLOCK_K} S{SPLIT_K} w{num_warps}".format(**config)
            try:
                us = timed(lambda c_: fk.gemv(x, ws[c_], y, **flags, config=config), copies)
            except Exception as e:  # out of resources, say: recorded, not fatal
                rows.append(dict(label=label, config=config, error=str(e).splitlines()[0][:200]))
                continue
            got = reference(config)
            again = reference(config)
            record(label, us, config, max_abs_diff_vs_unsplit=(got - unsplit).abs().max().item(),
                   same_bits_twice=bool(torch.equal(got, again)))
        measured = [r for r in rows if r.get("config") and isinstance(r["config"], dict)]
        fastest = min(measured, key=lambda r: r["us"])
        result["shapes"].append(dict(g, copies=copies, weight_bytes=nbytes, rows=rows, fastest=fastest["config"]))
        print(f"{g['name']}: fastest {fastest['label']} {fastest['us']} µs ({time.time() - t0:.0f} s)", flush=True)
        with open(a.out, "w") as f:  # after each shape: a run cut short keeps what it measured
            json.dump(result, f, indent=1)

    # the GEMVs of a whole step, in the step's order: the default configuration, then each shape's fastest
    fastest = {s["name"]: s["fastest"] for s in result["shapes"]}

    def step(choice):
        def launch(layer):
            for name in ("qkv", "out", "fc", "proj"):
                ws, x, y, flags = state[name]
                fk.gemv(x, ws[layer], y, **flags, config=choice(name))
        return launch

    per_layer = {label: timed(step(choice), layers) for label, choice in
                 (("default", lambda name: None), ("fastest per shape", lambda name: fastest[name]))}
    head = next(s for s in result["shapes"] if s["name"] == "lm_head")
    head_us = {"default": next(r["us"] for r in head["rows"] if r["label"] == "default"),
               "fastest per shape": min(r["us"] for r in head["rows"] if isinstance(r.get("config"), dict))}
    total_bytes = sum(s["weight_bytes"] * (layers if s["name"] != "lm_head" else 1) for s in result["shapes"])
    result["step_gemvs"] = {}
    for label, us in per_layer.items():
        step_us = us * layers + head_us[label]
        result["step_gemvs"][label] = {"us": round(step_us, 1), "GBps": round(total_bytes / step_us / 1e3, 1)}
        print(f"step GEMVs, {label}: {step_us:.1f} µs ({total_bytes / step_us / 1e3:.0f} GB/s)", flush=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
