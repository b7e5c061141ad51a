"""The fused decode step (``compile``'s ``fused+graph`` mode): its Triton kernels give the static
decoder's logits, step after step, on the families it serves, in fp32 and bf16.

The kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors), in a fresh
process because Triton reads that variable when the kernels are defined. On the GPU machine the
same step is captured as a CUDA graph (``tools/compile_variants.py``, variant ``fused``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton): the fused kernels cannot run", allow_module_level=True)

SCRIPT = Path(__file__).with_name("fused_interpreted.py")
STEPS = 6


@functools.lru_cache(maxsize=None)  # several tests read the same interpreted run (tens of seconds)
def fused_run(model_dir: Path, dtype: str, steps: int = STEPS, prompt_tokens: int = 11) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(model_dir), dtype, str(steps), str(prompt_tokens)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def fused_against_static(model_dir: Path, dtype: str) -> list[dict]:
    return fused_run(model_dir, dtype)["steps"]


@pytest.mark.parametrize("family", ["gpt2", "gpt_bigcode", "gpt_neox", "phi", "llama", "gemma"])
def test_fused_step_gives_the_static_decoders_logits_in_fp32(family, tiny_model):
    steps = fused_against_static(tiny_model(family), "float32")
    assert len(steps) == STEPS
    for i, step in enumerate(steps):
        assert step["max_abs_diff"] <= 1e-4 * max(1.0, step["scale"]), (family, i, step)


@pytest.mark.parametrize("family", ["gpt2", "gpt_bigcode", "gpt_neox", "phi", "llama", "gemma"])
def test_fused_greedy_choice_takes_the_best_allowed_token_and_advances(family, tiny_model):
    """The last GEMV's atomic maximum and the greedy kernel choose as the eager argmax does, with
    the forbidden token (EOS in the engine: here the one the eager choice would take first)
    never chosen, and move the device state on: position + 1, the token written there."""
    for i, step in enumerate(fused_against_static(tiny_model(family), "float32")):
        assert step["fused_token"] == step["static_token"], (family, i, step)
        assert step["forbidden_logit"] == float("-inf"), (family, i, step)
        assert step["position_advanced"] and step["token_written"], (family, i, step)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "phi", "llama", "gemma"])
def test_fused_step_in_bf16_stays_within_bf16_rounding(family, tiny_model):
    """bf16 weights and cache, fp32 activations: within bf16's rounding of the eager bf16 step
    (which rounds every activation too), not bit-equal to it."""
    for step in fused_against_static(tiny_model(family), "bfloat16"):
        assert step["max_abs_diff"] <= 0.05 * max(1.0, step["scale"]), (family, step)


def test_gpt_neox_with_a_sequential_residual_gives_the_static_decoders_logits(tmp_path):
    """gpt_neox without its parallel residual (pythia and stablecode have it; other gpt_neox
    models may not): attention's output projection adds to x before the MLP reads it."""
    from pytest_greenserve.models import build_model_dir, load_project_tokenizer, tiny_config_dict

    config = {**tiny_config_dict("gpt_neox", len(load_project_tokenizer())), "use_parallel_residual": False}
    got = fused_run(build_model_dir(config, tmp_path / "gpt_neox-sequential", 0), "float32")
    for step in [got["prefill"], *got["steps"]]:
        assert step["max_abs_diff"] <= 1e-4 * max(1.0, step["scale"]), step
        assert step["fused_token"] == step["static_token"], step


@pytest.mark.parametrize("family", ["gpt2", "gpt_bigcode", "gpt_neox", "phi", "llama", "gemma"])
def test_fused_prefill_gives_the_eager_prefills_logits_cache_and_choice_in_fp32(family, tiny_model):
    """The prompt's tokens through every layer at once (each weight read once for all of them):
    the last token's logits and every cached key and value as the eager decoder's prefill
    gives them, and the greedy choice written after the prompt."""
    got = fused_run(tiny_model(family), "float32")["prefill"]
    assert got["max_abs_diff"] <= 1e-4 * max(1.0, got["scale"]), (family, got)
    assert got["cache_max_abs_diff"] <= 1e-4 * max(1.0, got["cache_scale"]), (family, got)
    assert got["fused_token"] == got["static_token"] and got["token_written"], (family, got)
    assert got["position"] == 11, (family, got)  # the prompt's 11 tokens: the choice is the 12th


def test_a_prompt_longer_than_one_block_of_tokens_gets_the_eager_prefill(tiny_model):
    """A prompt of more tokens than one program of the prefill's GEMM takes (ROWS_BLOCK_M, 64; a
    server's client may send one): the second block of tokens, and attention over all of them,
    still give the eager prefill's logits, cache and choice, and the step after it its own."""
    from pytest_greenserve.engines.fused_kernels import ROWS_BLOCK_M

    tokens = ROWS_BLOCK_M + 6
    got = fused_run(tiny_model("llama"), "float32", 1, tokens)
    prefill, step = got["prefill"], got["steps"][0]
    assert prefill["max_abs_diff"] <= 1e-4 * max(1.0, prefill["scale"]), prefill
    assert prefill["cache_max_abs_diff"] <= 1e-4 * max(1.0, prefill["cache_scale"]), prefill
    assert prefill["fused_token"] == prefill["static_token"] and prefill["position"] == tokens, prefill
    assert step["max_abs_diff"] <= 1e-4 * max(1.0, step["scale"]), step


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fused_prefill_in_bf16_stays_within_bf16_rounding(family, tiny_model):
    got = fused_run(tiny_model(family), "bfloat16")["prefill"]
    assert got["max_abs_diff"] <= 0.05 * max(1.0, got["scale"]), (family, got)
    assert got["cache_max_abs_diff"] <= 0.05 * max(1.0, got["cache_scale"]), (family, got)


def test_gemv_with_k_split_across_programs_gives_the_unsplit_result_every_time():
    """Split-K: the programs of a row block each sum part of K, and the last to arrive adds the
    parts in split order. The result matches torch and the unsplit GEMV to fp32 rounding, is
    the same bits on a second launch, leaves every counter at zero for the next launch, and
    keeps the epilogues (layer norm, bias, GELU, residual, greedy choice) on the whole sum. The
    prefill's GEMM (several tokens at once) splits K the same way."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT.with_name("gemv_interpreted.py"))], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    by_split = json.loads(done.stdout.strip().splitlines()[-1])
    gated = by_split.pop("gated")  # llama's gate and up projections in one GEMV: checked below
    rows = by_split.pop("rows")  # the prefill's GEMM over five tokens: the same checks
    assert set(by_split) == set(rows) == {"1", "2", "4"}
    for split, got in [*by_split.items(), *rows.items()]:
        assert got["max_abs_diff_torch"] <= 1e-4, (split, got)
        assert got["max_abs_diff_unsplit"] <= 1e-4, (split, got)
        assert got["same_bits_twice"] and got["counters_zero"], (split, got)
    for split, got in by_split.items():  # the GEMV's greedy choice (the prefill's GEMMs make none)
        assert got["greedy"] == got["torch_argmax"], (split, got)
    assert gated["max_abs_diff_torch"] <= 1e-4 * max(1.0, gated["scale"]), gated


def test_families_without_a_fused_step_are_refused_with_the_reason(tiny_model):
    from transformers import AutoConfig

    from pytest_greenserve.engines.fused_decoder import unsupported_reason

    assert unsupported_reason(AutoConfig.from_pretrained(tiny_model("gpt2"))) is None
    assert unsupported_reason(AutoConfig.from_pretrained(tiny_model("gpt_bigcode"))) is None
    assert unsupported_reason(AutoConfig.from_pretrained(tiny_model("gpt_neox"))) is None
    assert unsupported_reason(AutoConfig.from_pretrained(tiny_model("phi"))) is None
    assert unsupported_reason(AutoConfig.from_pretrained(tiny_model("llama"))) is None
    assert unsupported_reason(AutoConfig.from_pretrained(tiny_model("gemma"))) is None
    reason = unsupported_reason(AutoConfig.from_pretrained(tiny_model("bloom")))
    assert reason == "the fused decode step serves gpt2, gpt_bigcode, gpt_neox, phi, llama, gemma, not bloom"
