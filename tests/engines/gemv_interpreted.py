"""Run by tests/engines/test_fused_decoder.py in a fresh process with TRITON_INTERPRET=1: the fused
GEMV with K split across programs against the same GEMV unsplit and against torch.

    TRITON_INTERPRET=1 python tests/engines/gemv_interpreted.py

One matrix of few long rows (as the MLP's down projection), with every epilogue at once: the
layer norm folded in, bias, GELU, residual and the greedy choice. Prints one JSON line: per
SPLIT_K, the largest difference from torch and from the unsplit result, whether two launches
gave the same bits, whether every row block's counter was back at zero, and the greedy choice;
then ("gated") a gated MLP's first GEMV with an RMS norm folded in, against torch; then ("rows")
the prefill's GEMM of the same matrix over five tokens at once, per SPLIT_K likewise.
"""
import json

import torch

from pytest_greenserve.engines import fused_kernels as fk


def main() -> None:
    torch.manual_seed(0)
    n, k = 24, 1000  # K not a multiple of the chunk: the last chunk is masked
    w = torch.randn(n, k).bfloat16()
    x = torch.randn(k) * 3 + 1
    residual = torch.randn(n)
    ln_w, ln_b = torch.rand(k) + 0.5, torch.randn(k) * 0.1
    rowsum, bias = fk.fold_layer_norm(w, ln_w, ln_b, torch.randn(n))
    normed = torch.nn.functional.layer_norm(x, (k,), ln_w, ln_b, eps=1e-5)
    want = torch.nn.functional.gelu(normed @ w.float().T + (bias - w.float() @ ln_b)) + residual
    scratch = fk.GemvScratch(n, "cpu")
    results, out = {}, {}
    for split in (1, 2, 4):
        config = dict(BLOCK_N=8, BLOCK_K=128, SPLIT_K=split)
        runs = []
        for _ in range(2):
            y, best = residual.clone(), torch.full((1,), fk.NO_BEST, dtype=torch.long)
            fk.gemv(x, w, y, bias=bias, ln=(ln_w, rowsum, 1e-5), act=fk.GELU_ERF, residual=True, best=best,
                    scratch=scratch, config=config)
            runs.append((y, best))
        (y, best), (again, _) = runs
        results[split] = y
        low = fk._LOW_WORD.value
        out[split] = {"max_abs_diff_torch": (y - want).abs().max().item(),
                      "max_abs_diff_unsplit": (y - results[1]).abs().max().item(),
                      "same_bits_twice": torch.equal(y, again), "counters_zero": int(scratch.arrived.abs().sum()) == 0,
                      "greedy": low - (int(best) & low), "torch_argmax": int(y.argmax())}
    # a gated MLP's first GEMV (llama's): silu(rms(x) @ gate.T) * (rms(x) @ up.T), in one pass
    up = torch.randn(n, k).bfloat16()
    rms_w = torch.rand(k) + 0.5
    normed = x * torch.rsqrt(x.pow(2).mean() + 1e-6) * rms_w
    gated = torch.nn.functional.silu(normed @ w.float().T) * (normed @ up.float().T)
    y = torch.zeros(n)
    fk.gemv(x, w, y, rms=(rms_w, 1e-6), act=fk.SILU, up=up, config=dict(BLOCK_N=8, BLOCK_K=128, SPLIT_K=1))
    out["gated"] = {"max_abs_diff_torch": (y - gated).abs().max().item(), "scale": gated.abs().max().item()}
    # the prefill's GEMM: five tokens at once (fp32 weights, so torch's sums are the reference)
    w32 = w.float()
    rowsum, bias = fk.fold_layer_norm(w32, ln_w, ln_b, torch.randn(n))
    xs = torch.randn(5, k) * 3 + 1
    residuals = torch.randn(5, n)
    normed = torch.nn.functional.layer_norm(xs, (k,), ln_w, ln_b, eps=1e-5)
    want = torch.nn.functional.gelu(normed @ w32.T + (bias - w32 @ ln_b)) + residuals
    rows_scratch = fk.RowsScratch(n, "cpu")
    out["rows"], unsplit = {}, None
    for split in (1, 2, 4):
        runs = []
        for _ in range(2):
            y = residuals.clone()
            fk.rows_gemm(xs, w32, y, bias=bias, ln=(ln_w, rowsum, 1e-5), act=fk.GELU_ERF, residual=True,
                         scratch=rows_scratch, config=dict(BLOCK_N=16, BLOCK_K=128, SPLIT_K=split))
            runs.append(y)
        y, again = runs
        unsplit = y if unsplit is None else unsplit  # split 1 comes first
        out["rows"][split] = {"max_abs_diff_torch": (y - want).abs().max().item(),
                              "max_abs_diff_unsplit": (y - unsplit).abs().max().item(),
                              "same_bits_twice": torch.equal(y, again),
                              "counters_zero": int(rows_scratch.arrived.abs().sum()) == 0}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
