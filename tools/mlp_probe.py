"""Issue 19 probe on the GPU machine: would one kernel for the whole MLP beat its two GEMVs?

The fused step pays about 2 µs beyond its bytes at each of its 97 GEMV boundaries
(docs/measurements.md). Of a layer's four, the one between the MLP's two GEMVs is the only one
a kernel can drop without waiting for other programs: program c takes rows c·R..c·R+R-1 of
the up projection (all of K), applies the activation to its R values, and multiplies them by
the same R columns of the down projection (read as R contiguous rows of its transpose). That
is its share of every output; the shares are added into the output with atomic adds. No
program waits for another, but the sum's order, and so its last bits, changes from launch to
launch.

Here starcoderbase-1b's GEMV chain (24 layers of q/k/v, attention output, MLP up with GELU,
MLP down; bf16 weights, fp32 activations, each GEMV's input the one before's output; no norms,
attention or residuals) runs two ways, both chained by programmatic dependent launch and
captured as CUDA graphs:

- ``kernels``: one fused_kernels.gemv launch per GEMV at the configurations the step's tuning
  chose on an H200 (as the step runs them);
- ``mlp R,BLOCK_K,BLOCK_O,warps``: q/k/v and the attention output as before, then one MLP
  kernel. Its output goes to one of two fp32 accumulators (a layer's, zeroed by the layer
  before's MLP kernel, which no longer needs it).

Both are checked against torch's chain. Prints one JSON line: µs per chain each way, the bytes'
time at the card's copy bandwidth, and the largest relative difference from torch.

    python tools/mlp_probe.py [--layers 24] [--out FILE.json]   # bash tools/device_run.sh issue19-mlp
    python tools/mlp_probe.py --compile-only   # sm_90 PTX, no GPU needed
    TRITON_INTERPRET=1 python tools/mlp_probe.py --check   # the kernel in Triton's interpreter, small sizes
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# the same chain, shapes, configurations and report as the persistent probe's
from persistent_probe import HIDDEN, TUNED, report, starcoder_chain  # noqa: E402

from pytest_greenserve.engines import fused_kernels as fk  # noqa: E402

#: the MLP kernel's launch configurations tried: (R rows a program, BLOCK_K, BLOCK_O, warps)
MLP_CONFIGS = ((32, 256, 256, 8), (16, 512, 512, 4), (16, 256, 512, 4), (64, 128, 128, 8), (32, 256, 512, 8),
               (8, 1024, 1024, 4))
#: accumulator elements each of the first programs zeroes for the next layer
ZERO_BLOCK = tl.constexpr(256)


@triton.jit
def _mlp_kernel(x_ptr, wf_ptr, wpt_ptr, out_ptr, zero_ptr, H, PDL: tl.constexpr, R: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_O: tl.constexpr):
    """out += Wp gelu(Wf x), this program's share: rows pid·R.. of Wf (FF, H) and of Wp's
    transpose ``wpt`` (FF, H); zero_ptr[pid·ZERO_BLOCK..] zeroed (the next layer's sum)."""
    pid = tl.program_id(0)
    rn = pid * R + tl.arange(0, R)
    rk = tl.arange(0, BLOCK_K)
    w = tl.load(wf_ptr + rn[:, None] * H + rk[None, :], eviction_policy="evict_first")
    fk._wait_for_previous(PDL)  # x is the kernel before's; the accumulator to zero was read before it
    rz = pid * ZERO_BLOCK + tl.arange(0, ZERO_BLOCK)
    tl.store(zero_ptr + rz, tl.zeros([ZERO_BLOCK], dtype=tl.float32), mask=rz < H)
    acc = tl.zeros([R, BLOCK_K], dtype=tl.float32)
    for k0 in range(BLOCK_K, H, BLOCK_K):
        w_next = tl.load(wf_ptr + rn[:, None] * H + (k0 + rk)[None, :], eviction_policy="evict_first")
        acc += w.to(tl.float32) * tl.load(x_ptr + k0 - BLOCK_K + rk)[None, :]
        w = w_next
    ro = tl.arange(0, BLOCK_O)
    d = tl.load(wpt_ptr + rn[:, None] * H + ro[None, :], eviction_policy="evict_first")  # down's first tile
    acc += w.to(tl.float32) * tl.load(x_ptr + H - BLOCK_K + rk)[None, :]
    h = fk._activated(tl.sum(acc, axis=1), fk._GELU_TANH)  # gpt_bigcode's GELU
    for o0 in range(BLOCK_O, H, BLOCK_O):
        d_next = tl.load(wpt_ptr + rn[:, None] * H + (o0 + ro)[None, :], eviction_policy="evict_first")
        tl.atomic_add(out_ptr + o0 - BLOCK_O + ro, tl.sum(d.to(tl.float32) * h[:, None], axis=0), sem="relaxed")
        d = d_next
    tl.atomic_add(out_ptr + H - BLOCK_O + ro, tl.sum(d.to(tl.float32) * h[:, None], axis=0), sem="relaxed")


def mlp(x, wf, wpt, out, zero, config):
    r, block_k, block_o, warps = config
    ff, h = wf.shape
    assert ff % r == 0 and h % block_k == 0 and h % block_o == 0
    assert triton.cdiv(ff, r) * ZERO_BLOCK >= h, "too few programs to zero the next accumulator"
    opts = fk._launch_options()
    _mlp_kernel[(ff // r,)](x, wf, wpt, out, zero, h, R=r, BLOCK_K=block_k, BLOCK_O=block_o, num_warps=warps,
                            **opts)


def compile_only() -> int:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    types = dict(x_ptr="*fp32", wf_ptr="*bf16", wpt_ptr="*bf16", out_ptr="*fp32", zero_ptr="*fp32", H="i32")
    result = {}
    for r, block_k, block_o, warps in MLP_CONFIGS:
        constants = dict(PDL=True, R=r, BLOCK_K=block_k, BLOCK_O=block_o)
        signature = {**types, **{name: "constexpr" for name in constants}}
        aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(types.values())}
        kernel = triton.compile(ASTSource(_mlp_kernel, signature, constants, aligned),
                                target=GPUTarget("cuda", 90, 32),
                                options=dict(num_warps=warps, launch_pdl=True, enable_fp_fusion=True))
        ptx = kernel.asm["ptx"]
        # the weights' 16-byte loads (streamed past L1, evicted from L2 first) and the atomic adds
        result[f"{r},{block_k},{block_o},{warps}"] = {"weight_loads_v4": ptx.count("ld.global.L1::evict_first.L2::cache_hint.v4"),
                                                     "atomic_adds": ptx.count("red.global")}
    print(json.dumps(result))
    return 0


def check() -> int:
    """The MLP kernel against torch on small sizes (Triton's interpreter runs it on the CPU)."""
    import torch

    torch.manual_seed(0)
    h, ff = 512, 1024
    x = torch.randn(h)
    wf = (torch.randn(ff, h) * h ** -0.5).to(torch.bfloat16)
    wp = (torch.randn(h, ff) * ff ** -0.5).to(torch.bfloat16)
    want = wp.float() @ torch.nn.functional.gelu(wf.float() @ x, approximate="tanh") + 1.0
    for config in ((32, 128, 128, 4), (16, 256, 256, 4)):
        out, zero = torch.ones(h), torch.ones(h)
        mlp(x, wf, wp.t().contiguous(), out, zero, config)
        err = ((out - want).abs().max() / want.abs().max()).item()
        print(json.dumps({"config": config, "max_rel_diff": err, "zeroed": bool((zero == 0).all())}))
        assert err < 1e-5 and (zero == 0).all()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--out")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if a.compile_only:
        return compile_only()
    if a.check:
        return check()
    import torch

    from pytest_greenserve.engines.fused_tuning import graph_us

    dev, layers = "cuda", a.layers
    (wq, wo, wf, wp), x0, (v, q, o, h) = starcoder_chain(layers, dev)
    wpt = wp.transpose(1, 2).contiguous()  # the down projection's columns as rows
    sums = torch.zeros(2, HIDDEN, device=dev)  # the MLP kernel's outputs, a layer's each
    want = x0.clone()
    for i in range(layers):  # torch's chain, fp32 over the bf16 weights
        mid = wo[i].float() @ (wq[i].float() @ want)[:HIDDEN]
        want = wp[i].float() @ torch.nn.functional.gelu(wf[i].float() @ mid, approximate="tanh")

    def kernels():
        v.copy_(x0)
        sums.zero_()  # as the MLP chain does (a memset node in both graphs)
        for i in range(layers):
            fk.gemv(v, wq[i], q, config=TUNED["qkv"])
            fk.gemv(q, wo[i], o, config=TUNED["out"])
            fk.gemv(o, wf[i], h, act=fk.GELU_TANH, config=TUNED["fc"])
            fk.gemv(h, wp[i], v, config=TUNED["proj"])
        return v

    def fused(config):
        v.copy_(x0)
        sums.zero_()
        x = v
        for i in range(layers):
            fk.gemv(x, wq[i], q, config=TUNED["qkv"])
            fk.gemv(q, wo[i], o, config=TUNED["out"])
            mlp(o, wf[i], wpt[i], sums[i % 2], sums[(i + 1) % 2], config)
            x = sums[i % 2]
        return x

    result = {"layers": layers, "card": torch.cuda.get_device_name(), "pdl": fk.USE_PDL, "configs": {}}
    runs = [("kernels", kernels)] + [(",".join(map(str, c)), lambda c=c: fused(c)) for c in MLP_CONFIGS]
    for name, fn in runs:
        try:
            got = fn()
            torch.cuda.synchronize()
            diff = ((got - want).abs().max() / want.abs().max()).item()
            us = round(graph_us(fn, replays=20, warmup=3), 1)
            us_again = round(graph_us(fn, replays=20, warmup=3), 1)
        except Exception as exc:  # a configuration this card cannot run
            result["configs"][name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        result["configs"][name] = {"us": us, "us_again": us_again, "max_rel_diff": diff}
        print(json.dumps({name: result["configs"][name]}), flush=True)
    return report(result, (wq, wo, wf, wp), a.out)


if __name__ == "__main__":
    sys.exit(main())
