"""The fused prefill's GEMMs alone, on the GPU machine: how fast ``rows_gemm`` reads each of a
model's four layer GEMM shapes for a prompt's tokens under each launch configuration, against
cuBLAS on the same tokens.

    python tools/rows_bench.py starcoderbase-1b --dtype bf16 --tokens 12 --out FILE.json

Each shape is measured as the prefill runs it (tools/gemv_bench.py does the same for the decode
step's GEMVs): one launch per layer, each on its own copy of the weights (so they come from
memory, not L2), with the prefill's epilogue flags and launch mode, captured as one CUDA graph
and replayed. Per shape and configuration: µs per launch, the weights' GB/s, and the largest
difference from the default configuration's result. Then the GEMMs of a whole prefill (every
layer's four) with the default configuration and with the fastest of each shape.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

from gemv_bench import epilogue, per_copy_us, shapes


def candidate_rows_configs(k: int) -> list[dict]:
    """BLOCK_N × BLOCK_K × SPLIT_K at 4 warps and 3 stages (splits that leave every program a
    chunk of K), and a few deeper or wider programs."""
    configs = [dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, num_warps=4, num_stages=3)
               for bn, bk, split in itertools.product((64, 128), (64, 128, 256), (1, 2, 4, 8)) if split * bk <= k]
    configs += [dict(BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=4, num_stages=4),
                dict(BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=8, num_stages=3),
                dict(BLOCK_N=32, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=3)]
    return configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--tokens", type=int, default=12, help="prompt tokens (the benchmark's prompts have 10-15)")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    import triton

    from pytest_greenserve.engines import fused_kernels as fk

    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    dev = "cuda"
    gemms, layers = shapes(a.model)
    gemms = [g for g in gemms if g["name"] != "lm_head"]  # the prefill's vocabulary GEMV is the last token's
    m = a.tokens
    scratch = fk.RowsScratch(max(g["n"] for g in gemms), dev)
    t0 = time.time()

    def timed(launch) -> float:  # one launch per layer, each on its own copy of the weights
        return per_copy_us(launch, layers, a.replays)

    result = {"model": a.model, "dtype": a.dtype, "tokens": m, "device": torch.cuda.get_device_name(),
              "pdl": fk.USE_PDL, "torch": torch.__version__, "triton": triton.__version__, "layers": layers,
              "shapes": []}
    state = {}
    for g in gemms:
        n, k = g["n"], g["k"]
        ws = [torch.randn(n, k, device=dev).to(dtype) * 0.02 for _ in range(layers)]
        x = torch.randn(m, k, device=dev)
        y = torch.randn(m, n, device=dev)
        y0 = y.clone()
        flags = dict(epilogue(g, dev), scratch=scratch)
        state[g["name"]] = (ws, x, y, flags)
        nbytes = n * k * dtype.itemsize
        rows = []

        def record(label, us, config=None, **extra):
            rows.append(dict(label=label, config=config, us=round(us, 3), GBps=round(nbytes / us / 1e3, 1), **extra))
            print(f"{g['name']:5} {m}x{n}x{k} {label:26} {us:8.2f} µs {nbytes / us / 1e3:7.0f} GB/s", flush=True)

        xb = x.to(dtype)
        record("cublas (torch.mm, no epilogue)", timed(lambda c: torch.mm(xb, ws[c].t())))

        def result_of(config):
            y.copy_(y0)
            fk.rows_gemm(x, ws[0], y, **flags, config=config)
            torch.cuda.synchronize()
            return y.clone()

        default = fk.rows_config(m, n, k, dtype.itemsize)
        record("default", timed(lambda c: fk.rows_gemm(x, ws[c], y, **flags)), default)
        reference = result_of(None)
        for config in candidate_rows_configs(k):
            label = "BN{BLOCK_N} BK{BLOCK_K} S{SPLIT_K} w{num_warps} s{num_stages}".format(**config)
            try:
                us = timed(lambda c: fk.rows_gemm(x, ws[c], y, **flags, config=config))
            except Exception as e:  # out of resources, say: recorded, not fatal
                rows.append(dict(label=label, config=config, error=str(e).splitlines()[0][:200]))
                continue
            got, again = result_of(config), result_of(config)
            record(label, us, config, max_abs_diff_vs_default=(got - reference).abs().max().item(),
                   same_bits_twice=bool(torch.equal(got, again)))
        measured = [r for r in rows if isinstance(r.get("config"), dict) and "us" in r]
        fastest = min(measured, key=lambda r: r["us"])
        result["shapes"].append(dict(g, weight_bytes=nbytes, rows=rows, fastest=fastest["config"]))
        print(f"{g['name']}: fastest {fastest['label']} {fastest['us']} µs ({time.time() - t0:.0f} s)", flush=True)
        with open(a.out, "w") as f:  # after each shape: a run cut short keeps what it measured
            json.dump(result, f, indent=1)

    fastest = {s["name"]: s["fastest"] for s in result["shapes"]}

    def prefill(choice):
        def launch(layer):
            for name in ("qkv", "out", "fc", "proj"):
                ws, x, y, flags = state[name]
                fk.rows_gemm(x, ws[layer], y, **flags, config=choice(name))
        return launch

    total_bytes = sum(s["weight_bytes"] for s in result["shapes"]) * layers
    result["prefill_gemms"] = {}
    for label, choice in (("default", lambda name: None), ("fastest per shape", lambda name: fastest[name])):
        us = timed(prefill(choice)) * layers
        result["prefill_gemms"][label] = {"us": round(us, 1), "GBps": round(total_bytes / us / 1e3, 1)}
        print(f"prefill GEMMs, {label}: {us:.1f} µs ({total_bytes / us / 1e3:.0f} GB/s)", flush=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
