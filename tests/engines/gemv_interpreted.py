"""Run by tests/engines/test_fused_decoder.py in a fresh process with TRITON_INTERPRET=1: the fused
GEMV with K split across programs against the same GEMV unsplit and against torch.

    TRITON_INTERPRET=1 python tests/engines/gemv_interpreted.py

One matrix of few long rows (as the MLP's down projection), with every epilogue at once: the
layer norm folded in, bias, GELU, residual and the greedy choice. Prints one JSON line: per
SPLIT_K, the largest difference from torch and from the unsplit result, whether two launches
gave the same bits, whether every row block's counter was back at zero, and the greedy choice;
then ("gated") a gated MLP's first GEMV with an RMS norm folded in, against torch; then
("attend") the q/k/v GEMV with attention in its tail against the attention kernel after it.
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
    out["attend"] = attention_in_the_tail()
    print(json.dumps(out))


def attention_in_the_tail() -> dict:
    """The q/k/v GEMV with attention in its tail against the same GEMV, then the attention
    kernel: grouped-query (4 heads, 2 key/value heads), rotary, 5 positions cached; per
    (BLOCK_N, SPLIT_K), the largest difference of the attention's output and of the cache, and
    whether every head's counter was back at zero."""
    heads, kv_heads, head_dim, hidden, capacity, position = 4, 2, 8, 32, 16, 5
    n = (heads + 2 * kv_heads) * head_dim
    w = torch.randn(n, hidden).bfloat16()
    x = torch.randn(hidden)
    rms = (torch.rand(hidden) + 0.5, 1e-6)
    angles = torch.arange(capacity)[:, None] * torch.rand(head_dim // 2)[None, :]
    rotary = (torch.cat([angles.cos()] * 2, dim=1), torch.cat([angles.sin()] * 2, dim=1))
    cache = torch.randn(2, 1, kv_heads, capacity, head_dim).bfloat16()
    pos = torch.tensor([position])
    shape = dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, scale=head_dim ** -0.5, rotary=rotary)
    results = {}
    for block_n, split in ((4, 1), (16, 1), (4, 2), (16, 2)):
        config = dict(BLOCK_N=block_n, BLOCK_K=8, SPLIT_K=split)
        scratch = fk.GemvScratch(n, "cpu")
        qkv, attn, (keys, values) = torch.zeros(n), torch.zeros(heads * head_dim), cache.clone()
        fk.gemv(x, w, qkv, rms=rms, scratch=scratch, config=config)
        fk.decode_attention(qkv, keys, values, pos, attn, **shape)
        arrived = torch.zeros(heads, dtype=torch.int32)
        needed = torch.tensor(fk.heads_needed(block_n, heads, kv_heads, head_dim), dtype=torch.int32)
        tail_qkv, tail_attn, (tail_keys, tail_values) = torch.zeros(n), torch.zeros(heads * head_dim), cache.clone()
        fk.gemv(x, w, tail_qkv, rms=rms, scratch=scratch, config=config,
                attend=fk.Attention(tail_keys, tail_values, pos, tail_attn, **shape, heads_arrived=arrived,
                                    heads_needed=needed, block_n=block_n))
        results[f"{block_n}x{split}"] = {
            "max_abs_diff_attention": (tail_attn - attn).abs().max().item(), "scale": attn.abs().max().item(),
            "max_abs_diff_cache": max((tail_keys - keys).abs().max().item(), (tail_values - values).abs().max().item()),
            "cache_slot_written": bool((keys[0, :, position] != cache[0, 0, :, position]).any()),
            "counters_zero": int(arrived.abs().sum()) == 0}
    return results


if __name__ == "__main__":
    main()
