"""Issue 19 probe on the GPU machine: would a persistent decode step beat the fused step's chain
of kernels? The fused step pays about 2 µs beyond its bytes at each of its 97 GEMV boundaries
(docs/measurements.md). Here the GEMV chain of starcoderbase-1b's 24 layers (q/k/v, attention
output, MLP up, MLP down; bf16 weights, fp32 activations, each GEMV's input the one before's
output; no norms, attention or epilogues) runs two ways:

- ``kernels``: one fused_kernels.gemv launch per GEMV, chained by programmatic dependent launch,
  at the launch configurations the step's tuning chose on an H200 (as the step runs them);
- ``persistent``: one kernel of one program per multiprocessor for all 96 GEMVs. Each program
  takes a contiguous range of each GEMV's rows; between GEMVs the programs meet at a grid-wide
  barrier (an acquire-release counter), and each loads its first chunk of the next GEMV's
  weights before it waits there.

Both are captured as CUDA graphs and replayed; both are checked against torch's chain. The
persistent kernel runs with 8 warps a program and with 16. Prints one JSON line: µs per chain
of 96 GEMVs each way, the bytes' time at the card's copy bandwidth, and the largest relative
difference from torch.

    python tools/persistent_probe.py [--layers 24] [--out FILE.json]   # bash tools/device_run.sh issue19-persistent
    python tools/persistent_probe.py --compile-only   # sm_90 PTX, no GPU needed
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_greenserve.engines import fused_kernels as fk  # noqa: E402

HIDDEN, QKV, FF = 2048, 2304, 8192  # starcoderbase-1b (multi-query: 2048 + 2 x 128 q/k/v rows)
#: the launch configurations the step's tuning chose on an H200 (docs/data/issue19-eight-steps-variants-starcoderbase-1b.json)
TUNED = {"qkv": dict(BLOCK_N=8, BLOCK_K=512, num_warps=4, SPLIT_K=1),
         "out": dict(BLOCK_N=8, BLOCK_K=1024, num_warps=8, SPLIT_K=1),
         "fc": dict(BLOCK_N=32, BLOCK_K=256, num_warps=8, SPLIT_K=1),
         "proj": dict(BLOCK_N=8, BLOCK_K=1024, num_warps=8, SPLIT_K=1)}


@triton.jit
def _first_chunk(w_ptr, N, K, rows_per, pid, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's rows of ``w`` (N, K), their first BLOCK_K columns."""
    r = tl.arange(0, BLOCK_N)
    rn = pid * rows_per + r
    n_mask = (r < rows_per) & (rn < N)
    rk = tl.arange(0, BLOCK_K)
    return tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=n_mask[:, None], other=0.0,
                   eviction_policy="evict_first")


@triton.jit
def _rows(x_ptr, w_ptr, y_ptr, N, K, rows_per, w, pid, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y = w x for this program's rows, its first chunk ``w`` already loaded; the next chunk is
    loaded before this one is used (two in flight). x was written by other programs: read from
    L2 (.cg), not a stale L1."""
    r = tl.arange(0, BLOCK_N)
    rn = pid * rows_per + r
    n_mask = (r < rows_per) & (rn < N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        w_next = tl.load(w_ptr + rn[:, None] * K + (k0 + rk)[None, :], mask=n_mask[:, None], other=0.0,
                         eviction_policy="evict_first")
        acc += w.to(tl.float32) * tl.load(x_ptr + k0 - BLOCK_K + rk, cache_modifier=".cg")[None, :]
        w = w_next
    acc += w.to(tl.float32) * tl.load(x_ptr + K - BLOCK_K + rk, cache_modifier=".cg")[None, :]
    tl.store(y_ptr + rn, tl.sum(acc, axis=1), mask=n_mask)


@triton.jit
def _grid_sync(counter_ptr, target):
    """Every program's stores so far visible to every program, once all have arrived: the
    counter reaches ``target`` (it only grows within a launch)."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire")
    while seen < target:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit
def _persistent_kernel(v_ptr, q_ptr, o_ptr, h_ptr, wq_ptr, wo_ptr, wf_ptr, wp_ptr, counter_ptr, LAYERS, P,
                       H: tl.constexpr, QKV_ROWS: tl.constexpr, FF_ROWS: tl.constexpr,
                       BN_Q: tl.constexpr, BK_Q: tl.constexpr, BN_O: tl.constexpr, BK_O: tl.constexpr,
                       BN_F: tl.constexpr, BK_F: tl.constexpr, BN_P: tl.constexpr, BK_P: tl.constexpr):
    pid = tl.program_id(0)
    rows_q, rows_o = tl.cdiv(QKV_ROWS, P), tl.cdiv(H, P)
    rows_f, rows_p = tl.cdiv(FF_ROWS, P), tl.cdiv(H, P)
    w = _first_chunk(wq_ptr, QKV_ROWS, H, rows_q, pid, BN_Q, BK_Q)
    arrived = 0
    for layer in range(LAYERS):
        wq = wq_ptr + layer * QKV_ROWS * H
        wo = wo_ptr + layer * H * H
        wf = wf_ptr + layer * FF_ROWS * H
        wp = wp_ptr + layer * H * FF_ROWS
        _rows(v_ptr, wq, q_ptr, QKV_ROWS, H, rows_q, w, pid, BN_Q, BK_Q)
        w_o = _first_chunk(wo, H, H, rows_o, pid, BN_O, BK_O)
        arrived += P
        _grid_sync(counter_ptr, arrived)
        _rows(q_ptr, wo, o_ptr, H, H, rows_o, w_o, pid, BN_O, BK_O)  # the first H of q/k/v's rows
        w_f = _first_chunk(wf, FF_ROWS, H, rows_f, pid, BN_F, BK_F)
        arrived += P
        _grid_sync(counter_ptr, arrived)
        _rows(o_ptr, wf, h_ptr, FF_ROWS, H, rows_f, w_f, pid, BN_F, BK_F)
        w_p = _first_chunk(wp, H, FF_ROWS, rows_p, pid, BN_P, BK_P)
        arrived += P
        _grid_sync(counter_ptr, arrived)
        _rows(h_ptr, wp, v_ptr, H, FF_ROWS, rows_p, w_p, pid, BN_P, BK_P)
        w = _first_chunk(wq_ptr + tl.minimum(layer + 1, LAYERS - 1) * QKV_ROWS * H, QKV_ROWS, H, rows_q, pid, BN_Q,
                         BK_Q)  # the next layer's (the last layer's again after the last: unused)
        arrived += P
        _grid_sync(counter_ptr, arrived)


def starcoder_chain(layers: int, dev: str) -> tuple:
    """starcoderbase-1b's four GEMV weights for ``layers`` layers (bf16, each (layers, rows, K),
    scaled so the chain keeps its size over the layers), an input x0, and buffers for the
    four GEMVs' outputs (fp32); seeded, so every probe gets the same."""
    import torch

    torch.manual_seed(0)

    def weights(n, k):
        return (torch.randn(layers, n, k, device=dev) * k ** -0.5).to(torch.bfloat16)

    chain = weights(QKV, HIDDEN), weights(HIDDEN, HIDDEN), weights(FF, HIDDEN), weights(HIDDEN, FF)
    outputs = tuple(torch.zeros(n, device=dev) for n in (HIDDEN, QKV, HIDDEN, FF))
    return chain, torch.randn(HIDDEN, device=dev), outputs


def report(result: dict, chain, out: str | None) -> int:
    """``result`` with the chain's weight bytes, the card's copy rate and the bytes' time at it:
    printed as one JSON line, and written to ``out`` where given."""
    from pytest_greenserve.roofline import measure_bandwidth_gb_s

    weight_bytes = sum(t.numel() * t.element_size() for t in chain)
    bandwidth = measure_bandwidth_gb_s()
    result.update(weight_gb=weight_bytes / 1e9, bandwidth_gb_s=round(bandwidth, 1),
                  bytes_at_bandwidth_us=round(weight_bytes / (bandwidth * 1e9) * 1e6, 1))
    print(json.dumps(result), flush=True)
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    return 0


def persistent_constants(programs: int) -> dict:
    """Row block sizes (the next power of two of each GEMV's rows per program) and K chunks."""
    def block(rows):
        return triton.next_power_of_2(triton.cdiv(rows, programs))

    return dict(H=HIDDEN, QKV_ROWS=QKV, FF_ROWS=FF, BN_Q=block(QKV), BK_Q=256, BN_O=block(HIDDEN), BK_O=512,
                BN_F=block(FF), BK_F=128, BN_P=block(HIDDEN), BK_P=512)


def compile_only() -> int:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constants = persistent_constants(132)
    types = dict(v_ptr="*fp32", q_ptr="*fp32", o_ptr="*fp32", h_ptr="*fp32", wq_ptr="*bf16", wo_ptr="*bf16",
                 wf_ptr="*bf16", wp_ptr="*bf16", counter_ptr="*i32", LAYERS="i32", P="i32")
    signature = {**types, **{name: "constexpr" for name in constants}}
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(types.values()) if t.startswith("*")}
    kernel = triton.compile(ASTSource(_persistent_kernel, signature, constants, aligned),
                            target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, enable_fp_fusion=True))
    ptx = kernel.asm["ptx"]
    # the barrier: a release add by one thread, then acquire loads of the counter
    print(json.dumps({"ptx_lines": ptx.count("\n"), "release": ptx.count(".release"),
                      "acquire": ptx.count(".acquire")}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--out")
    ap.add_argument("--compile-only", action="store_true")
    a = ap.parse_args()
    if a.compile_only:
        return compile_only()
    import torch

    from pytest_greenserve.engines.fused_tuning import graph_us

    dev, layers = "cuda", a.layers
    (wq, wo, wf, wp), x0, (v, q, o, h) = starcoder_chain(layers, dev)
    want = x0.clone()
    for i in range(layers):  # torch's chain, fp32 over the bf16 weights
        want = wp[i].float() @ (wf[i].float() @ (wo[i].float() @ (wq[i].float() @ want)[:HIDDEN]))

    def kernels():
        v.copy_(x0)
        for i in range(layers):
            fk.gemv(v, wq[i], q, config=TUNED["qkv"])
            fk.gemv(q, wo[i], o, config=TUNED["out"])
            fk.gemv(o, wf[i], h, config=TUNED["fc"])
            fk.gemv(h, wp[i], v, config=TUNED["proj"])

    programs = torch.cuda.get_device_properties(0).multi_processor_count
    counter = torch.zeros(1, dtype=torch.int32, device=dev)

    def persistent(warps):
        v.copy_(x0)
        counter.zero_()
        _persistent_kernel[(programs,)](v, q, o, h, wq, wo, wf, wp, counter, layers, programs,
                                        **persistent_constants(programs), num_warps=warps, enable_fp_fusion=True)

    result = {"layers": layers, "programs": programs, "card": torch.cuda.get_device_name()}
    for name, fn in (("kernels", kernels), ("persistent_8_warps", functools.partial(persistent, 8)),
                     ("persistent_16_warps", functools.partial(persistent, 16))):
        fn()
        torch.cuda.synchronize()
        result[f"{name}_max_rel_diff"] = ((v - want).abs().max() / want.abs().max()).item()
        result[f"{name}_us"] = round(graph_us(fn, replays=20, warmup=3), 1)
    return report(result, (wq, wo, wf, wp), a.out)


if __name__ == "__main__":
    sys.exit(main())
