"""The fused step's Triton kernels compile for a Hopper card (sm_90, with programmatic
dependent launch), here without one: Triton's interpreter runs Python semantics and lets pass
what the compiler refuses (a loop-carried value that changes type, say), so the interpreted
tests alone would ship a step that only fails on the GPU machine."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton): the fused kernels cannot compile", allow_module_level=True)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pytest_greenserve.engines import fused_kernels as fk  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)


def compile_ptx(fn, types: dict, constants: dict, num_warps: int = 4) -> str:
    """PTX of ``fn`` with argument ``types`` (integers and pointers taken as multiples of 16,
    as Triton specialises the step's sizes at launch) and ``constants``."""
    signature = {**types, **{name: "constexpr" for name in constants}}
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(types.values()) if t != "fp32"}
    try:
        kernel = triton.compile(ASTSource(fn, signature, constants, aligned), target=HOPPER,
                                options=dict(num_warps=num_warps, launch_pdl=True, enable_fp_fusion=True))
    except RuntimeError as exc:  # no PTX assembler or LLVM backend in this Triton build
        if "ptxas" in str(exc).lower():
            pytest.skip(f"Triton cannot assemble for sm_90 here: {exc}")
        raise
    return kernel.asm["ptx"]


GEMV_TYPES = dict(x_ptr="*fp32", w_ptr="*bf16", up_ptr="*bf16", y_ptr="*fp32", bias_ptr="*fp32", norm_w_ptr="*fp32",
                  ln_rowsum_ptr="*fp32", best_ptr="*i64", partial_ptr="*fp32", arrived_ptr="*i32", N="i32", K="i32",
                  stride_wn="i32", eps="fp32")
LN, RMS = fk.LAYER_NORM, fk.RMS_NORM


@pytest.mark.parametrize("norm,act,glu,bias,residual,argmax,split_k", [
    (LN, fk.GELU_TANH, False, True, False, False, 1),  # gpt2's MLP up
    (LN, fk.GELU_TANH, False, True, False, False, 4),
    (fk.NORM_NONE, fk.ACT_NONE, False, True, True, False, 1),  # a residual projection
    (fk.NORM_NONE, fk.ACT_NONE, False, True, True, False, 4),
    (LN, fk.ACT_NONE, False, True, False, True, 1),  # the vocabulary GEMV and the greedy choice
    (RMS, fk.SILU, True, False, False, False, 1),  # llama's gate and up at once (never split)
    (RMS, fk.ACT_NONE, False, False, False, True, 1),  # llama's vocabulary GEMV
    (RMS, fk.ACT_NONE, False, False, False, False, 4),  # llama's q/k/v, split
])
def test_the_gemv_compiles_with_vector_loads_and_its_weights_read_before_the_wait(norm, act, glu, bias, residual,
                                                                                    argmax, split_k):
    ptx = compile_ptx(fk._gemv_kernel, GEMV_TYPES,
                      dict(NORM=norm, ACT=act, GLU=glu, HAS_BIAS=bias, RESIDUAL=residual, ARGMAX=argmax, PDL=True,
                           BLOCK_N=16, BLOCK_K=256, SPLIT_K=split_k))
    before = ptx[:ptx.index("griddepcontrol.wait")]
    weights = [line for line in before.split("\n") if "ld.global" in line and "evict_first" in line]
    # 16 rows x 256 bf16 over 128 threads: four 16-byte loads per matrix (two with the gate)
    assert len(weights) == 4 * (2 if glu else 1) and all("v4.b32" in line for line in weights), weights
    if split_k > 1:  # the arrival counter: one acquire-release atomic per program
        assert "atom.global.gpu.acq_rel.add" in ptx


def test_a_gated_gemv_that_splits_k_is_refused_when_compiled():
    with pytest.raises(Exception, match="never splits|splits no K"):
        compile_ptx(fk._gemv_kernel, GEMV_TYPES, dict(NORM=RMS, ACT=fk.SILU, GLU=True, HAS_BIAS=False, RESIDUAL=False,
                                                      ARGMAX=False, PDL=True, BLOCK_N=16, BLOCK_K=256, SPLIT_K=2))


@pytest.mark.parametrize("rotary", [False, True])
def test_attention_compiles_with_the_cache_read_before_the_wait(rotary):
    types = dict(qkv_ptr="*fp32", k_cache_ptr="*bf16", v_cache_ptr="*bf16", pos_ptr="*i64", out_ptr="*fp32",
                 cos_ptr="*fp32", sin_ptr="*fp32", scale="fp32", q_size="i32", kv_size="i32", group="i32",
                 head_stride="i32", D="i32", R="i32")
    ptx = compile_ptx(fk._decode_attention_kernel, types, dict(PDL=True, ROTARY=rotary, BLOCK_D=128, BLOCK_T=64))
    before = ptx[:ptx.index("griddepcontrol.wait")]
    # the position, then keys and values of the first tile (and the rotary table's row)
    assert before.count("ld.global") >= (5 if rotary else 3)


def test_the_embedding_and_greedy_kernels_compile():
    compile_ptx(fk._embed_kernel, dict(tok_ptr="*i64", pos_ptr="*i64", wte_ptr="*bf16", wpe_ptr="*bf16", x_ptr="*fp32",
                                       H="i32", stride_te="i32", stride_pe="i32", scale="fp32"),
                dict(HAS_POS=True, PDL=True, BLOCK=1024))
    compile_ptx(fk._greedy_kernel, dict(best_ptr="*i64", tok_ptr="*i64", pos_ptr="*i64", generated_ptr="*i64"),
                dict(PDL=True))


ROWS_TYPES = dict(x_ptr="*fp32", w_ptr="*bf16", up_ptr="*bf16", y_ptr="*fp32", bias_ptr="*fp32", norm_w_ptr="*fp32",
                  ln_rowsum_ptr="*fp32", partial_ptr="*fp32", arrived_ptr="*i32", M="i32", N="i32", K="i32",
                  stride_wn="i32", eps="fp32")


@pytest.mark.parametrize("weights,norm,act,glu,residual,split_k", [
    ("*bf16", LN, fk.GELU_TANH, False, False, 1),  # gpt2's MLP up, in bf16: tensor cores
    ("*bf16", LN, fk.ACT_NONE, False, False, 4),  # q/k/v, K split
    ("*bf16", RMS, fk.SILU, True, False, 1),  # llama's gate and up
    ("*bf16", fk.NORM_NONE, fk.ACT_NONE, False, True, 4),  # a residual projection, K split
    ("*fp32", LN, fk.ACT_NONE, False, False, 2),  # fp32: multiplied in fp32
])
def test_the_prefill_gemm_compiles(weights, norm, act, glu, residual, split_k):
    types = {**ROWS_TYPES, "w_ptr": weights, "up_ptr": weights}
    ptx = compile_ptx(fk._rows_gemm_kernel, types,
                      dict(NORM=norm, ACT=act, GLU=glu, HAS_BIAS=norm == LN, RESIDUAL=residual, PDL=True, UPCAST=False,
                           BLOCK_M=16, BLOCK_N=64, BLOCK_K=128 if weights == "*bf16" else 64, SPLIT_K=split_k))
    assert "mma" in ptx  # on the tensor cores in both dtypes:
    assert ("bf16" if weights == "*bf16" else "tf32") in ptx  # fp32 as three TF32 products
    assert "griddepcontrol.wait" in ptx


@pytest.mark.parametrize("rotary", [False, True])
def test_the_prefill_attention_compiles(rotary):
    types = dict(qkv_ptr="*fp32", k_cache_ptr="*bf16", v_cache_ptr="*bf16", out_ptr="*fp32", cos_ptr="*fp32",
                 sin_ptr="*fp32", scale="fp32", q_size="i32", kv_size="i32", group="i32", head_stride="i32", D="i32",
                 R="i32")
    ptx = compile_ptx(fk._prefill_attention_kernel, types, dict(PDL=True, ROTARY=rotary, BLOCK_D=128, BLOCK_T=64))
    assert "griddepcontrol.wait" in ptx
