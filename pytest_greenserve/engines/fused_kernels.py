"""Triton kernels of the fused decode step (``compile``'s ``fused+graph`` mode).

One generated token of a gpt2-style decoder runs, per layer, five kernels:

1. ``gemv`` with a layer norm folded in: ln_1(x) @ W_qkv + b (the statistics gathered in the
   pass that reads the weights, :func:`fold_layer_norm`);
2. ``decode_attention``: one query per head over the static KV cache up to the current
   position (online softmax, the cache read only as far as the position held on the device),
   which also writes the step's key and value into the cache;
3. ``gemv`` with a residual epilogue: x += attn @ W_o + b;
4. ``gemv`` with a layer norm folded in and a GELU epilogue: h = gelu(ln_2(x) @ W_fc + b);
5. ``gemv`` with a residual epilogue: x += h @ W_proj + b.

A llama-style decoder runs the same five, with RMS norms folded in instead, rotary positions
applied to q and k inside attention, and its gated MLP's gate and up projections read by one
GEMV: h = silu(rms_2(x) @ W_gate) * (rms_2(x) @ W_up).

Activations stay in fp32 (the residual stream, the layer norms' statistics, every
accumulation); weights and the KV cache are read in the model's dtype. Weights are (N, K)
row-major (nn.Linear's layout), so each program reads whole rows of K contiguously.

The greedy choice needs no kernel of its own over the logits: the last GEMV's programs each
fold their rows' best (logit, index) into one int64 with an atomic max (:func:`_pack_best`), and
one single-program kernel (:func:`greedy_advance`) turns it into the next token and position.

Everything a step reads (the token, its position) is a device tensor, so the step can be
captured as a CUDA graph. With ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors
(numpy underneath), which is how the tests check them without a GPU.

On Hopper and later (:data:`USE_PDL`) every kernel is launched with programmatic dependent
launch: it may start while the kernel before it is still running, reads what never changes
(its first block of weights; a GEMV also its bias and row sums) and only then waits for that
kernel's results (``gdc_wait``), so the ~1 µs launch gap between two of the step's 120-odd
kernels overlaps work. Only what no kernel of the step before it writes is read before the
wait (constants; attention's position and cache, written by earlier steps), and nothing is
written before it, so the order of results is that of a plain launch.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

#: The interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors, one program after another
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _pdl_supported() -> bool:
    """Programmatic dependent launch: compute capability 9.0 or later, compiled kernels only."""
    if INTERPRETED:
        return False
    try:
        import torch

        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
    except Exception:  # no usable CUDA: the kernels will not be launched on it anyway
        return False


#: Launch every kernel of the step with programmatic dependent launch (read at each launch, so
#: tools/compile_variants.py can compare it off)
USE_PDL = _pdl_supported()
#: What :func:`greedy_advance`'s slot holds before a step's first atomic max (the int64 minimum)
NO_BEST = -(2**63)
_NO_BEST = tl.constexpr(NO_BEST)  # the same, for the kernels (a global they read must be constexpr)
_LOW_WORD = tl.constexpr(0xFFFFFFFF)

#: the activation a GEMV's epilogue applies (``act``)
ACT_NONE, GELU_TANH, GELU_ERF, SILU = 0, 1, 2, 3
#: transformers' activation names -> the activation the kernel applies
ACTIVATIONS = {"gelu_new": GELU_TANH, "gelu_pytorch_tanh": GELU_TANH, "gelu_fast": GELU_TANH, "gelu": GELU_ERF,
               "silu": SILU}
#: the norm a GEMV folds in over its input (``ln`` or ``rms``)
NORM_NONE, LAYER_NORM, RMS_NORM = 0, 1, 2
# the same, for the kernels (a global a kernel reads must be constexpr)
_GELU_TANH, _GELU_ERF, _SILU = tl.constexpr(GELU_TANH), tl.constexpr(GELU_ERF), tl.constexpr(SILU)
_NORM_NONE, _LAYER_NORM, _RMS_NORM = tl.constexpr(NORM_NONE), tl.constexpr(LAYER_NORM), tl.constexpr(RMS_NORM)
#: Cache positions :func:`decode_attention` reads per iteration (the prompts' 10-15 tokens and
#: 32 new ones: one iteration)
ATTENTION_BLOCK_T = 64


@triton.jit
def _wait_for_previous(PDL: tl.constexpr):
    """Under programmatic dependent launch: wait until the kernel before has finished (its
    results visible), and let the next one launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _weights(w_ptr, rn, n_mask, rk, k_mask, stride_wn, LOAD: tl.constexpr):
    """A BLOCK_N × BLOCK_K chunk of the weights (rows ``rn``, columns ``rk``), read once per
    step: kept from evicting x (and the cache) from L2. Without LOAD: a placeholder."""
    if LOAD:
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0,
                    eviction_policy="evict_first")
    else:
        w = tl.zeros([1, 1], dtype=tl.float32)
    return w


@triton.jit
def _x_chunk(x_ptr, norm_w_ptr, rk, k_mask, NORM: tl.constexpr):
    """x's BLOCK_K chunk ``rk`` and (where NORM) the norm's weights there, fp32."""
    xk = tl.load(x_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
    if NORM != _NORM_NONE:
        gk = tl.load(norm_w_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)
    else:
        gk = tl.zeros([1], dtype=tl.float32)
    return xk, gk


@triton.jit
def _gemv_chunk(xk, gk, w, w_up, acc, acc_up, total, squares, NORM: tl.constexpr, GLU: tl.constexpr):
    """One BLOCK_K chunk of :func:`_gemv_kernel`'s loop: x's chunk ``xk`` (times the norm's
    weights ``gk`` where NORM) times the weights ``w`` (and ``w_up`` where GLU), all loaded
    already, and the norm's running statistics."""
    if NORM != _NORM_NONE:
        total += xk
        squares += xk * xk
        xk = xk * gk
    acc += w.to(tl.float32) * xk[None, :]
    if GLU:
        acc_up += w_up.to(tl.float32) * xk[None, :]
    return acc, acc_up, total, squares


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, up_ptr, y_ptr, bias_ptr, norm_w_ptr, ln_rowsum_ptr, best_ptr, partial_ptr, arrived_ptr,
                 N, K, stride_wn, eps, NORM: tl.constexpr, ACT: tl.constexpr, GLU: tl.constexpr,
                 HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, ARGMAX: tl.constexpr, PDL: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """y[n] = act(sum_k f(x)[k] w[n, k] + bias[n]) (+ y[n] where RESIDUAL), for BLOCK_N rows n.

    f is the identity, or a norm over all K inputs folded into the one pass over x that reads
    the weights:
    - NORM == LAYER_NORM: with f(x)[k] = (x[k] - mean) rstd g[k] + b[k], sum_k f(x)[k] w[n, k]
      is rstd (sum_k x[k] g[k] w[n, k] - mean rowsum[n]) + sum_k b[k] w[n, k], where
      rowsum[n] = sum_k g[k] w[n, k] and the last term (folded into ``bias``) are fixed at load;
    - NORM == RMS_NORM: f(x)[k] = x[k] rstd g[k], so the sum is rstd sum_k x[k] g[k] w[n, k].
    The statistics accumulate in the same loop that reads the weights.

    GLU: a gated MLP's first GEMV, y[n] = act(gate[n]) up[n], the gate's rows in ``w_ptr`` and
    the up projection's (the same shape) in ``up_ptr``, both over the same normed x.

    ARGMAX: also fold the rows' best (y, lowest index) into ``best_ptr`` (:func:`_pack_best`).

    SPLIT_K > 1: the SPLIT_K programs of a row block (program_id(1)) each take every SPLIT_K-th
    BLOCK_K chunk, so a matrix of few rows still has programs enough to fill the card. Each
    writes its partial sums (and the norm's statistics) to ``partial_ptr``; the last of them
    to arrive (a counter per row block in ``arrived_ptr``, reset by that program) adds them in
    split order and applies the epilogue, so the result does not depend on which finished first.
    """
    tl.static_assert(not GLU or (SPLIT_K == 1 and NORM != _LAYER_NORM and not HAS_BIAS),
                     "a gated GEMV splits no K, and folds an RMS norm and no bias")
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < N
    rk = split * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = rk < K
    w = _weights(w_ptr, rn, n_mask, rk, k_mask, stride_wn, True)
    w_up = _weights(up_ptr, rn, n_mask, rk, k_mask, stride_wn, GLU)
    # the epilogue's constants (bias, the layer norm's row sums) are read before the wait too,
    # and the residual right after it: read at the end, their latency would lengthen the
    # kernel's tail, which the next kernel waits for
    bias = _row_constants(bias_ptr, rn, n_mask, HAS_BIAS)
    rowsum = _row_constants(ln_rowsum_ptr, rn, n_mask, NORM == _LAYER_NORM)
    _wait_for_previous(PDL)  # the first weights are in flight; x is the kernel before's result
    residual = _row_constants(y_ptr, rn, n_mask, RESIDUAL)  # y's rows: final now the kernels before have finished
    xk, gk = _x_chunk(x_ptr, norm_w_ptr, rk, k_mask, NORM)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K] if GLU else [1, 1], dtype=tl.float32)
    total = tl.zeros([BLOCK_K], dtype=tl.float32)
    squares = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range((split + SPLIT_K) * BLOCK_K, K, SPLIT_K * BLOCK_K):
        # the next chunk's weights and x are loaded before this one's are used: two chunks in
        # flight per thread, and no chunk waits for its x (Triton does not pipeline a loop
        # without a dot on its own)
        rk_next = k0 + tl.arange(0, BLOCK_K)
        k_mask_next = rk_next < K
        w_next = _weights(w_ptr, rn, n_mask, rk_next, k_mask_next, stride_wn, True)
        w_up_next = _weights(up_ptr, rn, n_mask, rk_next, k_mask_next, stride_wn, GLU)
        xk_next, gk_next = _x_chunk(x_ptr, norm_w_ptr, rk_next, k_mask_next, NORM)
        acc, acc_up, total, squares = _gemv_chunk(xk, gk, w, w_up, acc, acc_up, total, squares, NORM, GLU)
        w, w_up, xk, gk = w_next, w_up_next, xk_next, gk_next
    acc, acc_up, total, squares = _gemv_chunk(xk, gk, w, w_up, acc, acc_up, total, squares, NORM, GLU)
    y = tl.sum(acc, axis=1)
    y_up = tl.sum(acc_up, axis=1)
    x_sum = tl.sum(total, axis=0)
    x_squares = tl.sum(squares, axis=0)
    if SPLIT_K == 1:
        _gemv_epilogue(y, y_up, x_sum, x_squares, rn, n_mask, y_ptr, bias, rowsum, residual, best_ptr, K, eps, NORM,
                       ACT, GLU, HAS_BIAS, RESIDUAL, ARGMAX)
    else:
        # partial_ptr: SPLIT_K rows of N partial sums, then (x_sum, x_squares) per (row block, split)
        stats = partial_ptr + SPLIT_K * N + pid * SPLIT_K * 2
        tl.store(partial_ptr + split * N + rn, y, mask=n_mask)
        tl.store(stats + split * 2, x_sum)
        tl.store(stats + split * 2 + 1, x_squares)
        if _arrived_last(arrived_ptr + pid, SPLIT_K):
            y = _in_split_order(partial_ptr + rn, N, n_mask, SPLIT_K)
            x_sum = _in_split_order(stats, 2, True, SPLIT_K)
            x_squares = _in_split_order(stats + 1, 2, True, SPLIT_K)
            tl.store(arrived_ptr + pid, 0)  # ready for the next launch
            _gemv_epilogue(y, y_up, x_sum, x_squares, rn, n_mask, y_ptr, bias, rowsum, residual, best_ptr, K, eps,
                           NORM, ACT, GLU, HAS_BIAS, RESIDUAL, ARGMAX)


@triton.jit
def _arrived_last(counter_ptr, SPLIT_K: tl.constexpr):
    """Split-K, after a program stored its partial sums: count it as arrived at
    ``counter_ptr`` (acquire-release: the partials it stored are released with the count, and
    the last to arrive sees every other's); whether it was the last of the SPLIT_K."""
    tl.debug_barrier()  # every thread's partial stored before the counter says so
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel") == SPLIT_K - 1


@triton.jit
def _in_split_order(ptrs, split_stride, mask, SPLIT_K: tl.constexpr):
    """The SPLIT_K partial sums at ``ptrs + s * split_stride`` added in split order s = 0, 1,
    ..., whichever program arrived last (so the result is the same bits on every launch); read
    past L1 (.cg), since other programs wrote them."""
    total = tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
    for s in tl.static_range(1, SPLIT_K):
        total += tl.load(ptrs + s * split_stride, mask=mask, other=0.0, cache_modifier=".cg")
    return total


@triton.jit
def _row_constants(ptr, rn, n_mask, LOAD: tl.constexpr):
    """A vector's values at rows ``rn`` in fp32; without LOAD: a placeholder."""
    if LOAD:
        values = tl.load(ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
    else:
        values = tl.zeros([1], dtype=tl.float32)
    return values


@triton.jit
def _gemv_epilogue(y, y_up, x_sum, x_squares, rn, n_mask, y_ptr, bias, rowsum, residual, best_ptr, K, eps,
                   NORM: tl.constexpr, ACT: tl.constexpr, GLU: tl.constexpr, HAS_BIAS: tl.constexpr,
                   RESIDUAL: tl.constexpr, ARGMAX: tl.constexpr):
    """:func:`_gemv_kernel`'s rows, summed over all K: the norm, bias, activation, gate,
    residual (their values read already), the store, and the greedy choice's atomic maximum."""
    y, y_up = _normed(y, y_up, x_sum, x_squares, rowsum, K, eps, NORM)
    if HAS_BIAS:
        y += bias
    y = _activated(y, ACT)
    if GLU:
        y = y * y_up
    if RESIDUAL:
        y += residual
    tl.store(y_ptr + rn, y, mask=n_mask)
    if ARGMAX:
        tl.atomic_max(best_ptr, tl.max(_pack_best(tl.where(n_mask, y, float("-inf")), rn), axis=0))


@triton.jit
def _normed(y, y_up, x_sum, x_squares, rowsum, K, eps, NORM: tl.constexpr):
    """The folded norm applied to sums over K (:func:`_gemv_kernel`): y and (RMS) y_up, given
    the input's sum and sum of squares and (layer norm) the weights' row sums ``rowsum``. The
    statistics and the row sums broadcast against y: one token's (scalars) and a vector of
    weight rows in the GEMV; in :func:`_rows_gemm_kernel` (a row per weight row, a column per
    token) a row of the tokens' statistics and a column of row sums."""
    if NORM == _LAYER_NORM:
        mean = x_sum / K
        rstd = 1.0 / tl.sqrt(tl.maximum(x_squares / K - mean * mean, 0.0) + eps)
        y = rstd * (y - mean * rowsum)
    if NORM == _RMS_NORM:
        rstd = 1.0 / tl.sqrt(x_squares / K + eps)
        y = rstd * y
        y_up = rstd * y_up
    return y, y_up


@triton.jit
def _activated(y, ACT: tl.constexpr):
    """The epilogues' activation, elementwise."""
    if ACT == _GELU_TANH:  # tanh approximation (gpt2's gelu_new): 0.5 y (1 + tanh(u)) = y sigmoid(2u)
        u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        y = y * tl.sigmoid(2.0 * u)
    if ACT == _GELU_ERF:  # exact GELU
        y = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
    if ACT == _SILU:
        y = y * tl.sigmoid(y)
    return y


@triton.jit
def _pack_best(value, index):
    """(value, index) as one int64 whose signed order is value's, then the lower index first:
    the float's bits made order-preserving as an int32 in the high word, ~index in the low."""
    bits = value.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | (tl.full(index.shape, _LOW_WORD, tl.int64) - index.to(tl.int64))


#: The most programs that share one row block's K (SPLIT_K) among the launch configurations
MAX_SPLIT_K = 8


def candidate_configs() -> list[dict]:
    """The launch configurations the fused step chooses its GEMVs' from (engines/fused_tuning.py),
    as (BLOCK_N rows per program, BLOCK_K per iteration, num_warps, SPLIT_K)."""
    # few rows and long K chunks put many loads in flight per program (what a GEMV at one token
    # needs); more rows read x (and a folded layer norm's weights) fewer times per weight byte
    unsplit = [(1, 1024, 4), (1, 2048, 8), (2, 512, 4), (2, 1024, 4), (2, 2048, 8), (4, 256, 4), (4, 512, 4),
               (4, 1024, 8), (4, 2048, 8), (8, 256, 4), (8, 512, 8), (8, 1024, 8), (16, 128, 4), (16, 256, 8),
               (32, 128, 4), (32, 256, 8), (4, 2048, 4), (8, 1024, 4), (8, 2048, 8), (16, 512, 4), (16, 1024, 8)]
    # more rows per program, and still programs enough to fill the card: K split 2-8 ways
    split = [(8, 512, 4, 2), (8, 512, 4, 4), (16, 512, 4, 4), (16, 512, 8, 4), (16, 256, 4, 8), (32, 256, 8, 4),
             (32, 512, 8, 2), (16, 1024, 8, 2), (16, 256, 4, 4), (16, 256, 8, 2), (8, 256, 4, 4), (32, 128, 4, 4),
             (16, 512, 4, 2), (8, 1024, 8, 2), (4, 1024, 8, 2)]
    return ([dict(BLOCK_N=n, BLOCK_K=k, num_warps=w, SPLIT_K=1) for n, k, w in unsplit]
            + [dict(BLOCK_N=n, BLOCK_K=k, num_warps=w, SPLIT_K=s) for n, k, w, s in split])


def fits(config: dict, n: int, k: int) -> bool:
    """Whether ``config`` suits an (n, k) matrix: no chunk or row block past the matrix's next
    power of two, and a split that leaves every program two chunks of K at least (less only
    adds a reduction)."""
    block_n, block_k, split = config["BLOCK_N"], config["BLOCK_K"], config["SPLIT_K"]
    return (block_n <= triton.next_power_of_2(n) and block_k <= triton.next_power_of_2(k)
            and (split == 1 or k >= 2 * split * block_k))


def default_config(n: int, k: int) -> dict:
    """A GEMV's launch configuration before (or without) tuning."""
    if INTERPRETED:  # each program is emulated in Python: few, wide ones
        return dict(BLOCK_N=min(64, triton.next_power_of_2(n)), BLOCK_K=min(256, triton.next_power_of_2(k)),
                    SPLIT_K=1)
    return dict(BLOCK_N=8, BLOCK_K=min(512, triton.next_power_of_2(k)), num_warps=4, SPLIT_K=1)


class GemvScratch:
    """What split-K launches of :func:`gemv` share (one per decoder: its GEMVs run one after
    another): partial sums and the norms' statistics, and per row block a counter of the
    programs that have written theirs, zero between launches."""

    def __init__(self, max_rows: int, device):
        import torch

        self.partial = torch.zeros(MAX_SPLIT_K * max_rows + 2 * MAX_SPLIT_K * max_rows, dtype=torch.float32,
                                   device=device)
        self.arrived = torch.zeros(max_rows, dtype=torch.int32, device=device)


def fold_layer_norm(weight, ln_weight, ln_bias, bias=None):
    """What :func:`gemv` needs to apply a layer norm (``ln_weight``, ``ln_bias``) to its input
    before ``weight`` (N, K): (rowsum[n] = sum_k g[k] w[n, k], the bias with sum_k b[k] w[n, k]
    added), both fp32, computed once at load."""
    w = weight.float()
    folded = w @ ln_bias.float()
    if bias is not None:
        folded += bias.float()
    return (w * ln_weight.float()).sum(dim=1), folded


def gemv(x, w, y, *, bias=None, ln=None, rms=None, act=ACT_NONE, up=None, residual=False, best=None, scratch=None,
         config=None):
    """``y = act(f(x) @ w.T + bias)`` (``+ y`` where ``residual``), y an fp32 vector of w's rows.

    f: ``ln`` (layer norm weight, rowsum, eps), with ``bias`` and rowsum from
    :func:`fold_layer_norm`; or ``rms`` (RMS norm weight, eps); or neither (the identity).
    ``up``: a gated MLP's up projection (w's shape): y = act(f(x) @ w.T) * (f(x) @ up.T).
    ``best``: an int64 slot holding :data:`NO_BEST`, into which y's greedy choice is folded (for
    :func:`greedy_advance`). ``config``: the launch configuration (BLOCK_N, BLOCK_K, SPLIT_K,
    num_warps), by default :func:`default_config`'s; SPLIT_K > 1 needs ``scratch``, a
    :class:`GemvScratch` for w's rows.
    """
    n, k = w.shape
    config = dict(config or default_config(n, k))
    if config["SPLIT_K"] > 1 and scratch is None:
        raise ValueError("a split-K launch needs a GemvScratch")
    if config["SPLIT_K"] > MAX_SPLIT_K:  # GemvScratch holds that many partial sums per row
        raise ValueError(f"SPLIT_K is at most {MAX_SPLIT_K}, not {config['SPLIT_K']}")
    norm, norm_w, rowsum, eps = _norm_arguments(ln, rms, x)
    partial, arrived = (scratch.partial, scratch.arrived) if scratch is not None else (y, y)
    _gemv_kernel[(triton.cdiv(n, config["BLOCK_N"]), config["SPLIT_K"])](
        x, w, up if up is not None else w, y, bias if bias is not None else y, norm_w, rowsum,
        best if best is not None else y, partial, arrived, n, k, w.stride(0), eps, NORM=norm, ACT=act,
        GLU=up is not None, HAS_BIAS=bias is not None, RESIDUAL=residual, ARGMAX=best is not None, **_launch_options(),
        **config)


def _norm_arguments(ln, rms, placeholder) -> tuple:
    """(NORM, its weight, the layer norm's rowsum, eps) of a GEMV's ``ln`` or ``rms``;
    ``placeholder`` (any tensor) stands for what the norm does not use."""
    if ln is not None:
        norm_w, rowsum, eps = ln
        return LAYER_NORM, norm_w, rowsum, eps
    if rms is not None:
        norm_w, eps = rms
        return RMS_NORM, norm_w, placeholder, eps
    return NORM_NONE, placeholder, placeholder, 0.0


def _launch_options() -> dict:
    """What every kernel of the step is launched with: programmatic dependent launch where
    :data:`USE_PDL`, and a multiply and add contracted into one FMA, as the kernels were
    checked and measured with (Triton 3.9 warns that its default turns that off in 3.10, which
    would change the step's rounding)."""
    pdl = {"PDL": True, "launch_pdl": True} if USE_PDL else {"PDL": False}
    return {**pdl, "enable_fp_fusion": True}


@triton.jit
def _greedy_kernel(best_ptr, tok_ptr, pos_ptr, generated_ptr, PDL: tl.constexpr):
    _wait_for_previous(PDL)
    packed = tl.load(best_ptr)
    low_word = tl.full([], _LOW_WORD, tl.int64)
    token = low_word - (packed & low_word)
    pos = tl.load(pos_ptr) + 1
    tl.store(pos_ptr, pos)
    tl.store(generated_ptr + pos, token)
    tl.store(tok_ptr, token)
    tl.store(best_ptr, tl.full([], _NO_BEST, tl.int64))  # ready for the next step's maxima


def greedy_advance(best, tok, pos, generated):
    """The step's greedy choice (folded into ``best`` by :func:`gemv`) becomes the next token:
    ``pos += 1; generated[pos] = tok = choice``; ``best`` is reset to :data:`NO_BEST`."""
    _greedy_kernel[(1,)](best, tok, pos, generated, **_launch_options())


@triton.jit
def _embed_kernel(tok_ptr, pos_ptr, wte_ptr, wpe_ptr, x_ptr, H, stride_te, stride_pe, scale,
                  HAS_POS: tl.constexpr, PDL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # token ``row`` of the tokens embedded, at position pos + row
    _wait_for_previous(PDL)
    tok = tl.load(tok_ptr + row)
    pos = tl.load(pos_ptr) + row
    for h0 in range(0, H, BLOCK):
        rh = h0 + tl.arange(0, BLOCK)
        m = rh < H
        v = tl.load(wte_ptr + tok * stride_te + rh, mask=m, other=0.0).to(tl.float32) * scale
        if HAS_POS:
            v += tl.load(wpe_ptr + pos * stride_pe + rh, mask=m, other=0.0).to(tl.float32)
        tl.store(x_ptr + row * H + rh, v, mask=m)


def embed(tok, pos, wte, wpe, x, scale=1.0):
    """``x[i] = scale wte[tok[i]] + wpe[pos + i]`` in fp32 for each of ``tok``'s tokens (one in
    a decode step, a prompt's in prefill; ``x`` one row of the hidden size per token); ``wpe``
    None: no learned positions."""
    hidden = wte.shape[1]
    _embed_kernel[(tok.numel(),)](tok, pos, wte, wpe if wpe is not None else wte, x, hidden, wte.stride(0),
                                  wpe.stride(0) if wpe is not None else 0, scale, HAS_POS=wpe is not None,
                                  BLOCK=min(1024, triton.next_power_of_2(hidden)), **_launch_options())


@triton.jit
def _rotated(base_ptr, rd, mask, cos, sin, R, ROTARY: tl.constexpr):
    """The head vector at ``base_ptr`` (fp32; dims ``rd``, where ``mask``), its first R dims
    rotated as transformers' rotary embedding does: v cos + rotate_half(v) sin,
    rotate_half(v) = (-v[R/2:R], v[:R/2]). ``base_ptr`` may be a column of row pointers
    (BLOCK_T, 1), with ``mask``, ``cos`` and ``sin`` (BLOCK_T, BLOCK_D): one vector per row."""
    v = tl.load(base_ptr + rd, mask=mask, other=0.0)
    if ROTARY:
        half = R // 2
        partner = tl.load(base_ptr + tl.where(rd < half, rd + half, rd - half), mask=mask & (rd < R), other=0.0)
        v = v * cos + tl.where(rd < half, -partner, partner) * sin
    return v


@triton.jit
def _decode_attention_kernel(qkv_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, out_ptr, cos_ptr, sin_ptr, scale, q_size,
                             kv_size, group, head_stride, D, R, PDL: tl.constexpr, ROTARY: tl.constexpr,
                             BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """Head ``h``: softmax(q . K[:pos+1]) V[:pos+1], the current position's key and value taken
    from the projection (fp32), earlier ones from the cache; the first head of each key/value
    group then writes them into the cache at ``pos`` (no program reads that slot this step).

    ROTARY: q and the new key are rotated at ``pos`` first (their first R dims; the cos and sin
    tables hold R floats per position), and the key is cached rotated, as the static decoder
    caches it.

    The position and the cache before it were written by earlier steps, not by the kernel
    before (the projection): the first BLOCK_T positions' keys and values (and the rotary
    tables' row) are loaded before waiting for it, so only q, k and v are read after."""
    h = tl.program_id(0)
    kv = h // group
    pos = tl.load(pos_ptr)
    rd = tl.arange(0, BLOCK_D)
    d_mask = rd < D
    base = kv * head_stride
    rt = tl.arange(0, BLOCK_T)
    t_mask = rt < pos
    tile = base + rt[:, None] * D + rd[None, :]
    both = t_mask[:, None] & d_mask[None, :]
    keys = tl.load(k_cache_ptr + tile, mask=both, other=0.0)
    values = tl.load(v_cache_ptr + tile, mask=both, other=0.0)
    if ROTARY:
        cos = tl.load(cos_ptr + pos * R + rd, mask=rd < R, other=1.0)
        sin = tl.load(sin_ptr + pos * R + rd, mask=rd < R, other=0.0)
    else:
        cos, sin = 1.0, 0.0
    _wait_for_previous(PDL)
    q = _rotated(qkv_ptr + h * D, rd, d_mask, cos, sin, R, ROTARY) * scale
    k_new = _rotated(qkv_ptr + q_size + kv * D, rd, d_mask, cos, sin, R, ROTARY)
    v_new = tl.load(qkv_ptr + q_size + kv_size + kv * D + rd, mask=d_mask, other=0.0)
    m_i = tl.sum(q * k_new, axis=0)  # running maximum, from the current position's score
    l_i = m_i * 0.0 + 1.0  # running sum of exp(score - m_i)
    acc = v_new  # running sum of exp(score - m_i) * value
    m_i, l_i, acc = _attend(q, keys, values, t_mask, m_i, l_i, acc)
    for t0 in range(BLOCK_T, pos, BLOCK_T):  # positions past the first tile, read as they come
        rt_next = t0 + tl.arange(0, BLOCK_T)
        t_mask_next = rt_next < pos
        tile_next = base + rt_next[:, None] * D + rd[None, :]
        both_next = t_mask_next[:, None] & d_mask[None, :]
        m_i, l_i, acc = _attend(q, tl.load(k_cache_ptr + tile_next, mask=both_next, other=0.0),
                                tl.load(v_cache_ptr + tile_next, mask=both_next, other=0.0), t_mask_next, m_i, l_i, acc)
    tl.store(out_ptr + h * D + rd, acc / l_i, mask=d_mask)
    if h % group == 0:
        tl.store(k_cache_ptr + base + pos * D + rd, k_new.to(k_cache_ptr.dtype.element_ty), mask=d_mask)
        tl.store(v_cache_ptr + base + pos * D + rd, v_new.to(v_cache_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def _attend(q, keys, values, t_mask, m_i, l_i, acc):
    """One tile of cached positions folded into the online softmax (m_i, l_i, acc)."""
    s = tl.where(t_mask, tl.sum(keys.to(tl.float32) * q[None, :], axis=1), float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=0))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new)
    acc = acc * alpha + tl.sum(p[:, None] * values.to(tl.float32), axis=0)
    l_i = l_i * alpha + tl.sum(p, axis=0)
    return m_new, l_i, acc


def decode_attention(qkv, keys, values, pos, out, *, heads, kv_heads, head_dim, scale, rotary=None):
    """One decode step's attention over the static cache ``keys``/``values`` (1, kv_heads,
    capacity, head_dim), contiguous; ``qkv`` holds q (heads × head_dim), then k, then v
    (kv_heads × head_dim each), fp32; ``out`` (heads × head_dim) fp32. ``rotary``: (cos, sin),
    fp32 tables (capacity, rotary dims), applied to q and k at ``pos``."""
    tables, sizes, constants = _attention_arguments(keys, out, heads, kv_heads, head_dim, rotary)
    _decode_attention_kernel[(heads,)](qkv, keys, values, pos, out, *tables, scale, *sizes, **constants)


def _attention_arguments(keys, placeholder, heads, kv_heads, head_dim, rotary) -> tuple:
    """What both attention kernels take after their tensors: the rotary tables (cos, sin;
    ``placeholder``, any tensor, without rotary), the sizes (q's, k's or v's, heads per
    key/value head, one key/value head's stride in the cache, the head size, the rotary dims),
    and the launch constants."""
    tables = rotary if rotary is not None else (placeholder, placeholder)
    sizes = (heads * head_dim, kv_heads * head_dim, heads // kv_heads, keys.shape[2] * head_dim, head_dim,
             rotary[0].shape[1] if rotary is not None else 0)
    constants = dict(ROTARY=rotary is not None, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_T=ATTENTION_BLOCK_T,
                     **_launch_options())
    return tables, sizes, constants


# -- prefill: a prompt's tokens at once --------------------------------------------------------
#: Prompt tokens one program of :func:`rows_gemm` reads the weights for (more: another pass)
ROWS_BLOCK_M = 64


@triton.jit
def _rows_gemm_kernel(x_ptr, w_ptr, up_ptr, y_ptr, bias_ptr, norm_w_ptr, ln_rowsum_ptr, partial_ptr, arrived_ptr,
                      M, N, K, stride_wn, eps, NORM: tl.constexpr, ACT: tl.constexpr, GLU: tl.constexpr,
                      HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr, UPCAST: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """:func:`_gemv_kernel`'s y = act(f(x) w.T + bias) (+ y) for M tokens at once: x (M, K) and
    y (M, N) row-major fp32. Each program reads BLOCK_N rows of the weights once for BLOCK_M
    tokens (program_id(2)) and takes every SPLIT_K-th BLOCK_K chunk of K (program_id(1)).

    The weights are the tensor cores' first operand (BLOCK_N rows, 64 or more, the side the
    MMA is wide on) and the tokens the second (a prompt's 10-15 tokens fill 16 columns):
    computed as (w f(x).T).T, so the weights go from memory to the MMA untouched and only the
    small x chunk is normed and rounded (bf16 weights take x rounded to bf16, as torch's bf16
    GEMMs do; fp32 weights, x as three TF32 products: :func:`_dot_weights`). The norm's
    statistics are each token's, gathered in the same pass over K. SPLIT_K > 1: as
    :func:`_gemv_kernel`'s, partial sums and statistics in ``partial_ptr``, a counter per (row
    block, token block) in ``arrived_ptr``, the last program to arrive adds them in split order
    and applies the epilogue."""
    tl.static_assert(not GLU or SPLIT_K == 1, "a gated GEMM splits no K")
    pid = tl.program_id(0)
    split = tl.program_id(1)
    block_m = tl.program_id(2)
    rm = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = rm < M
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < N
    _wait_for_previous(PDL)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_M] if GLU else [1, 1], dtype=tl.float32)
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    squares = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(split * BLOCK_K, K, SPLIT_K * BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < K
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        if NORM != _NORM_NONE:
            total += tl.sum(x, axis=1)
            squares += tl.sum(x * x, axis=1)
            x = x * tl.load(norm_w_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)[None, :]
        w_mask = n_mask[:, None] & k_mask[None, :]
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=w_mask, other=0.0)
        acc = _dot_weights(w, x, acc, UPCAST)
        if GLU:
            acc_up = _dot_weights(tl.load(up_ptr + rn[:, None] * stride_wn + rk[None, :], mask=w_mask, other=0.0), x,
                                  acc_up, UPCAST)
    # y is (BLOCK_N, BLOCK_M): a row per weight row, a column per token
    out = y_ptr + rm[None, :] * N + rn[:, None]
    both = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K == 1:
        _rows_epilogue(acc, acc_up, total, squares, out, both, rn, n_mask, bias_ptr, ln_rowsum_ptr, K, eps, NORM, ACT,
                       GLU, HAS_BIAS, RESIDUAL)
    else:
        # partial_ptr: SPLIT_K partial (M, N) sums, then each (token block, row block, split)'s BLOCK_M sums
        # and BLOCK_M sums of squares
        partials = partial_ptr + rm[None, :] * N + rn[:, None]
        counter = block_m * tl.num_programs(0) + pid
        stats = partial_ptr + SPLIT_K * M * N + counter * SPLIT_K * 2 * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(partials + split * M * N, acc, mask=both)
        tl.store(stats + split * 2 * BLOCK_M, total)
        tl.store(stats + split * 2 * BLOCK_M + BLOCK_M, squares)
        if _arrived_last(arrived_ptr + counter, SPLIT_K):
            acc = _in_split_order(partials, M * N, both, SPLIT_K)
            total = _in_split_order(stats, 2 * BLOCK_M, True, SPLIT_K)
            squares = _in_split_order(stats + BLOCK_M, 2 * BLOCK_M, True, SPLIT_K)
            tl.store(arrived_ptr + counter, 0)  # ready for the next launch
            _rows_epilogue(acc, acc_up, total, squares, out, both, rn, n_mask, bias_ptr, ln_rowsum_ptr, K, eps, NORM,
                           ACT, GLU, HAS_BIAS, RESIDUAL)


@triton.jit
def _rows_epilogue(y, y_up, total, squares, out, both, rn, n_mask, bias_ptr, ln_rowsum_ptr, K, eps, NORM: tl.constexpr,
                   ACT: tl.constexpr, GLU: tl.constexpr, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr):
    """:func:`_rows_gemm_kernel`'s sums over all K, (BLOCK_N, BLOCK_M): the norm, bias,
    activation, gate, residual and the store at ``out``."""
    rowsum = _row_constants(ln_rowsum_ptr, rn, n_mask, NORM == _LAYER_NORM)[:, None]
    y, y_up = _normed(y, y_up, total[None, :], squares[None, :], rowsum, K, eps, NORM)
    if HAS_BIAS:
        y += _row_constants(bias_ptr, rn, n_mask, HAS_BIAS)[:, None]
    y = _activated(y, ACT)
    if GLU:
        y = y * y_up
    if RESIDUAL:
        y += tl.load(out, mask=both, other=0.0)
    tl.store(out, y, mask=both)


@triton.jit
def _dot_weights(w, x, acc, UPCAST: tl.constexpr):
    """acc + w x.T: w (BLOCK_N, BLOCK_K) in the weights' dtype, x (BLOCK_M, BLOCK_K) fp32.
    fp32 weights multiply on the tensor cores as three TF32 products each (tf32x3, about fp32's
    precision): Triton's ieee fp32 dot runs on the CUDA cores, at 2.5-3 TFLOPS on an H200, so
    codegemma-2b's prefill took 25.7 ms, 10 decode steps. UPCAST (Triton's interpreter, whose
    tl.dot returns garbage for bf16 operands): the same products of x rounded to the weights'
    dtype, taken in fp32."""
    if w.dtype == tl.float32:
        acc = tl.dot(w, tl.trans(x), acc, input_precision="ieee" if UPCAST else "tf32x3")
    elif UPCAST:
        acc = tl.dot(w.to(tl.float32), tl.trans(x.to(w.dtype).to(tl.float32)), acc, input_precision="ieee")
    else:
        acc = tl.dot(w, tl.trans(x.to(w.dtype)), acc)
    return acc


#: programs :func:`rows_config` splits K for, at least (the H200 has 132 multiprocessors)
ROWS_MIN_PROGRAMS = 128


def rows_config(m: int, n: int, k: int, element_size: int, glu: bool = False) -> dict:
    """:func:`rows_gemm`'s launch configuration (tl.dot takes blocks of 16 or more): 64 weight
    rows per program, K split until the programs fill the card (not for a gated MLP's first
    GEMM, nor past :data:`ROWS_BLOCK_M` tokens, whose blocks of tokens fill it)."""
    block_m = min(ROWS_BLOCK_M, max(16, triton.next_power_of_2(m)))
    if INTERPRETED:  # each program is emulated in Python: few, wide ones
        return dict(BLOCK_M=block_m, BLOCK_N=min(64, max(16, triton.next_power_of_2(n))),
                    BLOCK_K=min(128, max(16, triton.next_power_of_2(k))), SPLIT_K=1)
    block_n, block_k = 64, 256 // element_size  # 256 bytes of each row per iteration: 128 bf16 or 64 fp32 values
    split = 1
    while (triton.cdiv(n, block_n) * split < ROWS_MIN_PROGRAMS and split < MAX_SPLIT_K
           and k >= 2 * split * block_k and not glu and m <= ROWS_BLOCK_M):
        split *= 2
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=4, num_stages=3)


class RowsScratch:
    """:func:`rows_gemm`'s split-K partial sums and counters for weights of up to ``max_rows``
    rows (K is split only for prompts of :data:`ROWS_BLOCK_M` tokens or fewer; the counters
    are zero between launches)."""

    def __init__(self, max_rows: int, device):
        import torch

        counters = triton.cdiv(max_rows, 16)  # one token block, 16 weight rows or more per program
        self.partial = torch.zeros(MAX_SPLIT_K * ROWS_BLOCK_M * (max_rows + 2 * counters), dtype=torch.float32,
                                   device=device)
        self.arrived = torch.zeros(counters, dtype=torch.int32, device=device)


def rows_gemm(x, w, y, *, bias=None, ln=None, rms=None, act=ACT_NONE, up=None, residual=False, scratch=None,
              config=None):
    """:func:`gemv` for each row of ``x`` (M, K) into ``y`` (M, N), both contiguous fp32; the
    weights are read once per :data:`ROWS_BLOCK_M` rows. Prefill's GEMMs (no greedy choice).
    ``config``: BLOCK_N, BLOCK_K, SPLIT_K, num_warps and num_stages (BLOCK_M follows M), by
    default :func:`rows_config`'s; SPLIT_K > 1 needs ``scratch``, a :class:`RowsScratch`."""
    m, k = x.shape
    n = w.shape[0]
    config = rows_config(m, n, k, w.element_size(), glu=up is not None) | dict(config or {})
    if config["SPLIT_K"] > 1:
        if scratch is None or up is not None or m > ROWS_BLOCK_M or config["SPLIT_K"] > MAX_SPLIT_K:
            raise ValueError(f"SPLIT_K={config['SPLIT_K']} needs a RowsScratch, no gate, {ROWS_BLOCK_M} tokens or "
                             f"fewer, and a split of at most {MAX_SPLIT_K}")
        counters = triton.cdiv(n, config["BLOCK_N"])
        if (config["SPLIT_K"] * (m * n + counters * 2 * config["BLOCK_M"]) > scratch.partial.numel()
                or counters > scratch.arrived.numel()):
            raise ValueError(f"the RowsScratch is too small for {n} rows")
    norm, norm_w, rowsum, eps = _norm_arguments(ln, rms, x)
    partial, arrived = (scratch.partial, scratch.arrived) if scratch is not None else (y, y)
    grid = (triton.cdiv(n, config["BLOCK_N"]), config["SPLIT_K"], triton.cdiv(m, config["BLOCK_M"]))
    _rows_gemm_kernel[grid](x, w, up if up is not None else w, y, bias if bias is not None else y, norm_w, rowsum,
                            partial, arrived, m, n, k, w.stride(0), eps, NORM=norm, ACT=act, GLU=up is not None,
                            HAS_BIAS=bias is not None, RESIDUAL=residual, **_launch_options(), UPCAST=INTERPRETED, **config)


@triton.jit
def _prefill_attention_kernel(qkv_ptr, k_cache_ptr, v_cache_ptr, out_ptr, cos_ptr, sin_ptr, scale, q_size, kv_size,
                              group, head_stride, D, R, PDL: tl.constexpr, ROTARY: tl.constexpr,
                              BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """Prompt position ``program_id(1)`` (= t), head ``program_id(0)``: softmax(q_t . K[:t+1])
    V[:t+1] over the prompt's own keys and values (rows of ``qkv``: q, k, v of each position,
    fp32; the prompt starts at position 0), rotated at their positions where ROTARY; the first
    head of each key/value group writes position t's key (rotated) and value into the cache."""
    h = tl.program_id(0)
    t = tl.program_id(1)
    kv = h // group
    row = q_size + 2 * kv_size  # one position's q, k and v
    rd = tl.arange(0, BLOCK_D)
    d_mask = rd < D
    r_mask = rd < R
    _wait_for_previous(PDL)
    if ROTARY:
        cos = tl.load(cos_ptr + t * R + rd, mask=r_mask, other=1.0)
        sin = tl.load(sin_ptr + t * R + rd, mask=r_mask, other=0.0)
    else:
        cos = tl.full([BLOCK_D], 1.0, tl.float32)
        sin = tl.zeros([BLOCK_D], dtype=tl.float32)
    q = _rotated(qkv_ptr + t * row + h * D, rd, d_mask, cos, sin, R, ROTARY) * scale
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for t0 in range(0, t + 1, BLOCK_T):
        rt = t0 + tl.arange(0, BLOCK_T)
        t_mask = rt <= t
        both = t_mask[:, None] & d_mask[None, :]
        if ROTARY:
            r_both = t_mask[:, None] & r_mask[None, :]
            cos_t = tl.load(cos_ptr + rt[:, None] * R + rd[None, :], mask=r_both, other=1.0)
            sin_t = tl.load(sin_ptr + rt[:, None] * R + rd[None, :], mask=r_both, other=0.0)
        else:
            cos_t = tl.full([BLOCK_T, BLOCK_D], 1.0, tl.float32)
            sin_t = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        keys = _rotated((qkv_ptr + rt * row + q_size + kv * D)[:, None], rd[None, :], both, cos_t, sin_t, R, ROTARY)
        values = tl.load(qkv_ptr + rt[:, None] * row + q_size + kv_size + kv * D + rd[None, :], mask=both, other=0.0)
        m_i, l_i, acc = _attend(q, keys, values, t_mask, m_i, l_i, acc)
    tl.store(out_ptr + t * (q_size) + h * D + rd, acc / l_i, mask=d_mask)
    if h % group == 0:
        k_t = _rotated(qkv_ptr + t * row + q_size + kv * D, rd, d_mask, cos, sin, R, ROTARY)
        v_t = tl.load(qkv_ptr + t * row + q_size + kv_size + kv * D + rd, mask=d_mask, other=0.0)
        slot = kv * head_stride + t * D + rd
        tl.store(k_cache_ptr + slot, k_t.to(k_cache_ptr.dtype.element_ty), mask=d_mask)
        tl.store(v_cache_ptr + slot, v_t.to(v_cache_ptr.dtype.element_ty), mask=d_mask)


def prefill_attention(qkv, keys, values, out, *, heads, kv_heads, head_dim, scale, rotary=None):
    """A prompt's attention (positions 0 to its length - 1), causal, over its own keys and
    values: ``qkv`` (tokens, q + 2 kv sizes) fp32 as :func:`rows_gemm` wrote it, ``out``
    (tokens, heads × head_dim) fp32; the prompt's keys and values are written into the cache
    (:func:`decode_attention`'s layout)."""
    tables, sizes, constants = _attention_arguments(keys, out, heads, kv_heads, head_dim, rotary)
    _prefill_attention_kernel[(heads, qkv.shape[0])](qkv, keys, values, out, *tables, scale, *sizes, **constants)
