"""--greenserve-dtype=bf16 on the engines that support it (torch, jit), on CPU with tiny models.

The bf16 reference is torch-cpu in bf16; jit runs the same aten kernels through its traces, so
its tokens match. bf16 logits are coarse (a step of 1/16 at |logit| ~ 10), so exact top-2 ties
happen (margin 0): the check is the tie-aware one the samples use, with torch's margins.
"""

from __future__ import annotations

import pytest

from pytest_greenserve.engines.base import EngineError, EngineOptions, torch_dtype
from pytest_greenserve.engines.jit import JitEngine
from pytest_greenserve.engines.torch_eager import TorchEngine
from pytest_greenserve.references import Reference
from pytest_greenserve.samples import match_rate_tie_aware

torch = pytest.importorskip("torch")

# gpt_bigcode: its cache is wrapped for the decode trace; llama: rotary positions; gpt2: the default
FAMILIES = ["gpt2", "gpt_bigcode", "llama"]
NEW_TOKENS = 16

pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")]


@pytest.fixture(scope="module")
def bf16():
    """One thread (a shared 2-core machine; see test_consistency), restored for later modules."""
    before = torch.get_num_threads()
    yield EngineOptions(threads=1, dtype="bf16")
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts():
    from pytest_greenserve.models import load_project_tokenizer

    ids = load_project_tokenizer()("class Stack:\n    def __init__(self):\n        self.items = []\n")["input_ids"]
    return [ids[:10], ids[:13]]


@pytest.fixture(scope="module")
def torch_bf16(tiny_handle, prompts, bf16):
    """``torch_bf16(family)`` -> torch-cpu's bf16 generations (with margins), computed once per family."""
    cache: dict[str, list] = {}

    def get(family: str):
        if family not in cache:
            engine = TorchEngine(tiny_handle(family), "cpu", bf16)
            engine.keep_margins = True
            engine.load()
            try:
                assert {p.dtype for p in engine.torch_model.parameters()} == {torch.bfloat16}
                cache[family] = [engine.generate(ids, NEW_TOKENS) for ids in prompts]
            finally:
                engine.close()
        return cache[family]

    return get


def test_the_dtype_names_map_to_torch_dtypes():
    assert torch_dtype("fp32") is torch.float32 and torch_dtype("bf16") is torch.bfloat16
    with pytest.raises(EngineError, match="unknown dtype 'fp16'"):
        torch_dtype("fp16")


def test_which_engines_serve_bf16():
    from pytest_greenserve.engines import BUILTIN

    dtypes = {cls.name: cls.dtypes for cls in BUILTIN}
    assert {name: dtypes[name] for name in ("torch", "jit", "onnx", "openvino")} == {
        "torch": ("fp32", "bf16"), "jit": ("fp32", "bf16"), "onnx": ("fp32",), "openvino": ("fp32",)}


@pytest.mark.parametrize("family", ["gpt2"])
def test_torch_cpu_in_bf16_loads_bf16_weights_and_generates_exactly_new_tokens(family, torch_bf16):
    gens = torch_bf16(family)  # the fixture checks that every parameter is bfloat16
    for gen in gens:
        assert len(gen.token_ids) == NEW_TOKENS and len(gen.margins) == NEW_TOKENS
        assert len(set(gen.token_ids)) > 4, f"degenerate tokens: {gen.token_ids}"
        assert min(gen.margins) >= 0


def test_fp32_stays_the_default(tiny_handle):
    engine = TorchEngine(tiny_handle("gpt2"), "cpu", EngineOptions(threads=1))
    engine.load()
    try:
        assert {p.dtype for p in engine.torch_model.parameters()} == {torch.float32}
    finally:
        engine.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_jit_cpu_in_bf16_gives_torch_cpus_bf16_tokens(family, tiny_handle, torch_bf16, prompts, bf16):
    expected = torch_bf16(family)
    engine = JitEngine(tiny_handle(family), "cpu", bf16)
    engine.load()
    try:
        assert {p.dtype for p in engine.prefill.parameters()} == {torch.bfloat16}  # traced in bf16
        got = [engine.generate(ids, NEW_TOKENS).token_ids for ids in prompts]
    finally:
        engine.close()
    assert all(len(ids) == NEW_TOKENS for ids in got)
    reference = Reference([g.token_ids for g in expected], [g.margins for g in expected])
    # (identical today on every tiny family; tie-aware so an exact bf16 tie may break either way)
    assert match_rate_tie_aware(got, reference) == 1.0, (got, list(reference))


def test_bf16_travels_to_the_served_engine(tiny_handle, torch_bf16, prompts, bf16):
    """Over HTTP the child server loads the engine in the session's dtype (--dtype)."""
    pytest.importorskip("fastapi")
    from pytest_greenserve.serving.client import HttpTarget

    target = HttpTarget(tiny_handle("gpt2"), "cpu", TorchEngine, bf16, health_timeout_s=120)
    target.load()
    try:
        assert target._info["dtype"] == "bf16"
        got = [target.generate(ids, NEW_TOKENS).token_ids for ids in prompts]
    finally:
        target.close()
    assert got == [g.token_ids for g in torch_bf16("gpt2")]
