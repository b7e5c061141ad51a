"""The ``compile`` engine: the static decoder reproduces torch's tokens, compiled or not.

The static decoder's wiring is checked on every family it serves (uncompiled, ``eager``: fast);
the compiled decode step (``inductor``, what ``compile-cpu`` runs by default) on one mini model,
since compiling takes ~10-30 s on two cores. CUDA graph capture needs a GPU: those tests skip
here with the reason, and run on the GPU machine (``tools/compile_probe.py``).
"""

from __future__ import annotations

import re

import pytest

from pytest_greenserve.engines.base import EngineError, EngineOptions
from pytest_greenserve.engines.compile import CompileEngine, resolve_mode
from pytest_greenserve.engines.static_decoder import FAMILIES
from pytest_greenserve.engines.torch_eager import TorchEngine

torch = pytest.importorskip("torch")

PROMPT = "import os\n\ndef list_files(path):\n    for name in sorted(os.listdir(path)):\n        yield name\n"
# (prompt length, new tokens): varied, and the last one outgrows the initial 64-position cache
CASES = [(10, 24), (13, 16), (15, 70)]


def options(mode: str, **kw) -> EngineOptions:
    return EngineOptions(threads=1, compile_mode=mode, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompt_ids():
    from pytest_greenserve.models import load_project_tokenizer

    return load_project_tokenizer()(PROMPT)["input_ids"]


def torch_generations(handle, prompt_ids, opts, cases=CASES):
    engine = TorchEngine(handle, "cpu", opts)
    engine.keep_margins = True  # for the tie-aware comparison
    engine.load()
    try:
        return [engine.generate(prompt_ids[:n], k) for n, k in cases]
    finally:
        engine.close()


def assert_same_tokens(engine, handle, prompt_ids, reference, cases=CASES):
    for (n, k), ref in zip(cases, reference):
        assert len(set(ref.token_ids)) > 4, f"degenerate reference {ref.token_ids}"
        gen = engine.generate(prompt_ids[:n], k)
        assert len(gen.token_ids) == k
        assert gen.token_ids == ref.token_ids, (
            f"compile ({engine.mode}) differs from torch on {handle.name}, prompt of {n} tokens")
        assert gen.ttft_s is not None and gen.ttft_s > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_static_decoder_gives_torch_tokens(family, tiny_handle, prompt_ids):
    handle = tiny_handle(family)
    reference = torch_generations(handle, prompt_ids, options("eager"))
    engine = CompileEngine(handle, "cpu", options("eager"))
    engine.load()
    try:
        assert_same_tokens(engine, handle, prompt_ids, reference)
        info = engine.load_info()
        assert info["compile_mode"] == "eager"
        assert info["kv_capacity"] == 128, "the 15 + 70 token request should have grown the cache to 128"
    finally:
        engine.close()


def test_compiled_decode_step_gives_torch_tokens(tiny_handle, prompt_ids):
    """compile-cpu's default on a machine with a C++ compiler: the decode step through inductor."""
    if resolve_mode("auto", "cpu") != "inductor":
        pytest.skip("no C++ compiler: compile-cpu runs uncompiled here (auto -> eager)")
    handle = tiny_handle("gpt2")
    cases = CASES[:2]  # no cache growth: that would compile a second time
    reference = torch_generations(handle, prompt_ids, options("auto"), cases)
    engine = CompileEngine(handle, "cpu", options("auto"))
    engine.load()
    try:
        info = engine.load_info()
        assert info["compile_mode"] == "inductor" and info["compile_fallback"] is None
        assert info["compile_s"] > 0 and info["load_s"] >= info["compile_s"]
        assert_same_tokens(engine, handle, prompt_ids, reference, cases)
    finally:
        engine.close()


def test_auto_falls_back_mode_by_mode_and_says_why(tiny_handle, prompt_ids, monkeypatch):
    """A mode ``auto`` chose that fails to build (here the compiled step, made to fail) gives
    way to the next of compile.FALLBACKS, with the reason in ``compile_fallback``; the engine
    still serves torch's tokens. A mode asked for by name fails in one line instead."""
    from pytest_greenserve.engines import compile as compile_module

    handle = tiny_handle("gpt2")
    reference = torch_generations(handle, prompt_ids, options("eager"), CASES[:1])
    real = CompileEngine._first_generation

    def first_generation(self, vocab):
        if self.mode != "eager":
            raise RuntimeError(f"no kernel for {self.mode}\nsecond line")
        return real(self, vocab)

    monkeypatch.setattr(CompileEngine, "_first_generation", first_generation)
    monkeypatch.setattr(compile_module, "resolve_mode", lambda mode, provider: "inductor" if mode == "auto" else mode)
    engine = CompileEngine(handle, "cpu", options("auto"))
    engine.load()
    try:
        info = engine.load_info()
        assert info["compile_mode"] == "eager"
        assert info["compile_fallback"].startswith("inductor failed") and "no kernel for inductor" in info["compile_fallback"]
        assert "\n" not in info["compile_fallback"]
        assert_same_tokens(engine, handle, prompt_ids, reference, CASES[:1])
    finally:
        engine.close()
    named = CompileEngine(handle, "cpu", options("inductor"))
    with pytest.raises(EngineError, match=r"compile could not build .*\(inductor\)"):
        named.load()
    assert compile_module.FALLBACKS["fused+graph"] == ["inductor+graph", "graph"]


def test_bf16_static_decoder_follows_torch_bf16(tiny_handle, prompt_ids):
    from pytest_greenserve.references import Reference
    from pytest_greenserve.samples import match_rate_tie_aware

    handle = tiny_handle("llama")
    cases = CASES[:2]
    reference = torch_generations(handle, prompt_ids, options("eager", dtype="bf16"), cases)
    engine = CompileEngine(handle, "cpu", options("eager", dtype="bf16"))
    engine.load()
    try:
        assert {p.dtype for p in engine.torch_model.parameters()} == {torch.bfloat16}
        outs = [engine.generate(prompt_ids[:n], k).token_ids for n, k in cases]
    finally:
        engine.close()
    ref = Reference([g.token_ids for g in reference], [g.margins for g in reference])
    # bf16 logits tie exactly now and then (a step of 1/16 near 10): the samples' tie-aware rule
    assert match_rate_tie_aware(outs, ref) == 1.0


def test_unsupported_architecture_is_skipped_with_the_reason():
    reason = CompileEngine.model_unavailable_reason("bloom")
    assert reason.startswith("compile has no static decoder for bloom (ALiBi attention)")
    assert "\n" not in reason
    assert CompileEngine.model_unavailable_reason("gpt_bigcode") is None


def test_cuda_graph_modes_are_refused_on_cpu():
    for mode in ("graph", "inductor+graph", "fused+graph"):
        with pytest.raises(EngineError, match=re.escape(f"compile: mode '{mode}' needs CUDA")):
            resolve_mode(mode, "cpu")
    with pytest.raises(EngineError, match="unknown mode 'fast'"):
        resolve_mode("fast", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("mode", ["graph", "inductor+graph", "fused+graph"])
def test_captured_decode_step_gives_torch_tokens_on_cuda(mode, tiny_handle, prompt_ids):
    handle = tiny_handle("gpt_bigcode")
    ref_engine = TorchEngine(handle, "cuda", EngineOptions())
    ref_engine.load()
    reference = [ref_engine.generate(prompt_ids[:n], k) for n, k in CASES]
    ref_engine.close()
    engine = CompileEngine(handle, "cuda", EngineOptions(compile_mode=mode))
    engine.load()
    try:
        assert_same_tokens(engine, handle, prompt_ids, reference)
        assert engine.load_info()["cuda_graphs_captured"] >= 2  # the decode step and a prefill
    finally:
        engine.close()


class _EagerGraph:
    """What a CUDA graph does, on the CPU: ``replay()`` runs the captured function again."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def test_prefill_graphs_stay_bounded_under_200_random_prompt_lengths(tiny_handle, monkeypatch):
    """A server's clients send prompts of any length: the prefill graphs kept (one per length)
    stay at most PREFILL_GRAPHS_MAX, the cache never outgrows the context window, and the tokens
    still equal torch's. CUDA graph capture is replaced by an eager replay of the same function,
    so the graph bookkeeping runs here on the CPU (tools/device_run.sh runs it on CUDA)."""
    import random

    from pytest_greenserve.engines import compile as compile_module

    handle = tiny_handle("gpt2")
    engine = CompileEngine(handle, "cpu", options("eager"))
    engine.load()
    window = engine.context_tokens
    assert window == 512  # the tiny gpt2's n_positions
    engine.mode = "graph"  # prefill and decode now go through _capture, as on CUDA

    def capture(fn):
        engine.captures += 1
        return _EagerGraph(fn)

    monkeypatch.setattr(engine, "_capture", capture)
    rng = random.Random(17)
    new_tokens = 4
    cases = [[rng.randrange(1, 1000) for _ in range(rng.randint(1, window - new_tokens))] for _ in range(200)]
    held = []
    outputs = []
    for ids in cases:
        outputs.append(engine.generate(ids, new_tokens).token_ids)
        held.append(len(engine._prefill_graphs))
    distinct = len({len(ids) for ids in cases})
    assert distinct > compile_module.PREFILL_GRAPHS_MAX  # the bound is really exercised
    assert max(held) == compile_module.PREFILL_GRAPHS_MAX
    info = engine.load_info()
    assert info["prefill_graphs_held"] == compile_module.PREFILL_GRAPHS_MAX
    assert info["prefill_graphs_dropped"] >= distinct - compile_module.PREFILL_GRAPHS_MAX
    assert engine.capacity <= window
    with pytest.raises(EngineError, match="context window of 512 tokens"):
        engine.generate([1] * (window - 2), new_tokens)
    engine.close()
    reference = TorchEngine(handle, "cpu", options("eager"))
    reference.load()
    try:
        for ids, out in list(zip(cases, outputs))[::20]:  # evicted and re-captured lengths among them
            assert out == reference.generate(ids, new_tokens).token_ids
    finally:
        reference.close()
