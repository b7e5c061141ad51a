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
                                options=dict(num_warps=num_warps, launch_pdl=True))
    except RuntimeError as exc:  # no PTX assembler or LLVM backend in this Triton build
        if "ptxas" in str(exc).lower():
            pytest.skip(f"Triton cannot assemble for sm_90 here: {exc}")
        raise
    return kernel.asm["ptx"]


GEMV_TYPES = dict(x_ptr="*fp32", w_ptr="*bf16", y_ptr="*fp32", bias_ptr="*fp32", ln_w_ptr="*fp32",
                  ln_rowsum_ptr="*fp32", best_ptr="*i64", partial_ptr="*fp32", arrived_ptr="*i32", N="i32", K="i32",
                  stride_wn="i32", eps="fp32")


@pytest.mark.parametrize("split_k", [1, 4])
@pytest.mark.parametrize("ln,gelu,residual,argmax", [(True, 1, False, False), (False, 0, True, False),
                                                     (True, 0, False, True)])
def test_the_gemv_compiles_with_vector_loads_and_its_weights_read_before_the_wait(split_k, ln, gelu, residual,
                                                                                    argmax):
    ptx = compile_ptx(fk._gemv_kernel, GEMV_TYPES,
                      dict(LN=ln, GELU=gelu, HAS_BIAS=True, RESIDUAL=residual, ARGMAX=argmax, PDL=True, BLOCK_N=16,
                           BLOCK_K=256, SPLIT_K=split_k))
    wait = ptx.index("griddepcontrol.wait")
    assert "v4.b32" in ptx[:wait].split("ld.global")[1].split("\n")[0], "the first weights are not 16-byte loads"
    if split_k > 1:  # the arrival counter: one acquire-release atomic per program
        assert "atom.global.gpu.acq_rel.add" in ptx


def test_attention_compiles_with_the_cache_read_before_the_wait():
    types = dict(qkv_ptr="*fp32", k_cache_ptr="*bf16", v_cache_ptr="*bf16", pos_ptr="*i64", out_ptr="*fp32",
                 scale="fp32", q_size="i32", kv_size="i32", group="i32", head_stride="i32", D="i32")
    ptx = compile_ptx(fk._decode_attention_kernel, types, dict(PDL=True, BLOCK_D=128, BLOCK_T=64))
    before = ptx[:ptx.index("griddepcontrol.wait")]
    assert before.count("ld.global") >= 3  # the position, then keys and values of the first tile


def test_the_embedding_and_greedy_kernels_compile():
    compile_ptx(fk._embed_kernel, dict(tok_ptr="*i64", pos_ptr="*i64", wte_ptr="*bf16", wpe_ptr="*bf16", x_ptr="*fp32",
                                       H="i32", stride_te="i32", stride_pe="i32"),
                dict(HAS_POS=True, PDL=True, BLOCK=1024))
    compile_ptx(fk._greedy_kernel, dict(best_ptr="*i64", tok_ptr="*i64", pos_ptr="*i64", generated_ptr="*i64"),
                dict(PDL=True))
