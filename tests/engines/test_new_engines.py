"""The engines people deploy today: ortgenai, ovgenai, llamacpp (issue 19).

Each runs on the CPU with a tiny model where its package installs, against the torch engine's
greedy tokens; where it is missing, the reason it is skipped names the extra to install.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from pytest_greenserve.configs import ConfigError, ServingConfig, all_configs, parse_config, parse_config_list
from pytest_greenserve.engines import base
from pytest_greenserve.engines.base import EngineOptions
from pytest_greenserve.engines.llamacpp import LlamaCppEngine, converter_dir
from pytest_greenserve.engines.ortgenai import OrtGenaiEngine
from pytest_greenserve.engines.ovgenai import OvGenaiEngine

NEW_TOKENS = 32


def _prompts(n=10, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(2, 2000) for _ in range(rng.randrange(10, 16))] for _ in range(n)]


def _skip_unless_available(cls, provider="cpu"):
    why = cls.unavailable_reason(provider)
    if why:
        pytest.skip(why)


def _generations(cls, handle, variant=""):
    """(engine's tokens, torch's tokens) per prompt, and the engine's thread settings."""
    pytest.importorskip("torch")
    from pytest_greenserve.engines.torch_eager import TorchEngine

    engine = cls(handle, "cpu", EngineOptions(threads=2, variant=variant))
    engine.load()
    torch_engine = TorchEngine(handle, "cpu", EngineOptions())
    torch_engine.load()
    try:
        pairs = [(engine.generate(p, NEW_TOKENS), torch_engine.generate(p, NEW_TOKENS).token_ids) for p in _prompts()]
        return pairs, engine.thread_settings()
    finally:
        engine.close()
        torch_engine.close()


# -- configurations with a variant: llamacpp-cpu:q8_0 -------------------------------------
class _Quantised(base.Engine):
    name = "quant"
    variants = ("f16", "q8_0")

    def load(self):
        pass

    def generate(self, input_ids, new_tokens):
        raise NotImplementedError


class _Plain(_Quantised):
    name = "plain"
    variants = ()


ENGINES = {"quant": _Quantised, "plain": _Plain}


def test_a_variant_is_part_of_the_configuration_and_its_label():
    config = parse_config("quant-cpu:q8_0", ENGINES)
    assert config == ServingConfig("quant", "cpu", "q8_0") and config.name == "quant-cpu:q8_0"
    assert parse_config("quant-cpu", ENGINES).name == "quant-cpu:f16"  # the first variant is the default
    assert parse_config("plain-cpu", ENGINES).name == "plain-cpu"  # engines without variants: as before


def test_all_configs_has_one_configuration_per_variant():
    assert [c.name for c in all_configs(ENGINES)] == ["quant-cpu:f16", "quant-cpu:q8_0", "quant-cuda:f16",
                                                     "quant-cuda:q8_0", "plain-cpu", "plain-cuda"]
    assert [c.name for c in parse_config_list("quant-cpu:q8_0,quant-cpu:f16", ENGINES)] == ["quant-cpu:q8_0", "quant-cpu:f16"]


@pytest.mark.parametrize("text, words", [("quant-cpu:q4", "unknown variant 'q4'"), ("plain-cpu:q8_0", "has none")])
def test_an_unknown_variant_is_a_one_line_error(text, words):
    with pytest.raises(ConfigError, match=words) as err:
        parse_config(text, ENGINES)
    assert "\n" not in str(err.value)


def test_the_sample_label_and_case_id_carry_the_variant():
    from pytest_greenserve.samples import config_label
    from pytest_greenserve.session import Case

    config = ServingConfig("llamacpp", "cpu", "q8_0")
    assert config_label(config) == "llamacpp-cpu:q8_0"
    assert config_label(config, transport="http") == "llamacpp-cpu:q8_0@http"
    assert Case("mini-gpt2", config, 1).id == "mini-gpt2-llamacpp-cpu:q8_0-r1"


# -- skip reasons -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls, module, extra", [(OrtGenaiEngine, "onnxruntime_genai", "ortgenai"),
                                                (OvGenaiEngine, "openvino_genai", "ovgenai"),
                                                (LlamaCppEngine, "llama_cpp", "llamacpp")])
def test_a_missing_package_is_a_skip_reason_naming_the_extra(monkeypatch, cls, module, extra):
    real = base.importlib.util.find_spec
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    reason = cls.unavailable_reason("cpu")
    assert module in reason and f"pytest-greenserve[{extra}]" in reason


def test_ovgenai_does_not_exist_on_cuda():
    assert "cpu only" in OvGenaiEngine.unavailable_reason("cuda")
    with pytest.raises(ConfigError, match="serves only on cpu"):
        parse_config("ovgenai-cuda", {"ovgenai": OvGenaiEngine})


@pytest.mark.parametrize("architecture", ["gpt2", "gpt_bigcode", "gpt_neox", "bloom"])
def test_ortgenai_says_which_architectures_its_builder_refuses(architecture):
    reason = OrtGenaiEngine.model_unavailable_reason(architecture)
    assert reason and architecture in reason and "llama, gemma and phi" in reason


@pytest.mark.parametrize("architecture", ["llama", "gemma", "phi"])
def test_ortgenai_builds_the_papers_llama_gemma_and_phi(architecture):
    assert OrtGenaiEngine.model_unavailable_reason(architecture) is None


def test_ortgenai_refuses_bf16_on_cpu_in_one_line_before_building(tiny_handle, tmp_path):
    """bf16 is the builder's CUDA precision: on CPU the engine says so instead of building a
    model the CPU provider cannot run (no builder runs: the cache directory stays empty)."""
    handle = dataclasses.replace(tiny_handle("llama"), cache_dir=tmp_path)
    engine = OrtGenaiEngine(handle, "cpu", EngineOptions(dtype="bf16"))
    pytest.importorskip("onnxruntime_genai")
    with pytest.raises(base.EngineError, match="bf16 on CUDA only") as err:
        engine.load()
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


def _write_onnx(path, outputs):
    """An ONNX model of one Identity node x -> y, declaring ``outputs`` as the graph's outputs."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value("x")],
                              [value(name) for name in outputs])
    onnx.save(helper.make_model(graph), str(path))


def test_an_output_no_node_produces_is_found(tmp_path):
    from pytest_greenserve.engines.ortgenai import unproduced_outputs

    _write_onnx(tmp_path / "ok.onnx", ["y"])
    _write_onnx(tmp_path / "broken.onnx", ["y", "present.0.key", "present.0.value"])
    assert unproduced_outputs(tmp_path / "ok.onnx") == []
    assert unproduced_outputs(tmp_path / "broken.onnx") == ["present.0.key", "present.0.value"]


def test_ortgenai_refuses_a_built_model_that_drops_its_kv_cache_in_one_line(tiny_handle, tmp_path, monkeypatch):
    """As the builder's fp32 CUDA model does: the engine names the missing outputs and the way
    forward, instead of passing ONNX Runtime's load error on."""
    pytest.importorskip("onnxruntime_genai")
    handle = dataclasses.replace(tiny_handle("llama"), cache_dir=tmp_path)

    def build(self, out):
        out.mkdir(parents=True, exist_ok=True)
        _write_onnx(out / "model.onnx", ["y", "present.0.key", "present.0.value", "present.1.key"])
        (out / "genai_config.json").write_text('{"model": {"decoder": {"filename": "model.onnx"}}}')

    monkeypatch.setattr(OrtGenaiEngine, "_build", build)
    engine = OrtGenaiEngine(handle, "cuda", EngineOptions())
    with pytest.raises(base.EngineError) as err:
        engine.load()
    message = str(err.value)
    assert "\n" not in message
    assert "no node produces its output present.0.key, present.0.value and others" in message
    assert message.endswith("use --greenserve-dtype=bf16")


def test_llamacpp_without_its_converter_fails_with_the_way_forward(monkeypatch, tmp_path, tiny_handle):
    monkeypatch.delenv("GREENSERVE_LLAMA_CPP", raising=False)
    handle = tiny_handle("gpt2")
    engine = LlamaCppEngine(dataclasses.replace(handle, cache_dir=tmp_path), "cpu")
    with pytest.raises(base.EngineError, match="install_llamacpp.sh") as err:
        engine._gguf("f16")
    assert "\n" not in str(err.value)


# -- each engine against torch, on the CPU ------------------------------------------------------
@pytest.mark.slow  # the model builder runs in a child process: ~10 s on an idle core, a minute on a busy VM
def test_ortgenai_generates_torchs_greedy_tokens(tiny_handle):
    _skip_unless_available(OrtGenaiEngine)
    pairs, threads = _generations(OrtGenaiEngine, tiny_handle("llama"))
    assert [g.token_ids for g, _ in pairs] == [ref for _, ref in pairs]
    assert all(g.ttft_s is not None and g.ttft_s > 0 for g, _ in pairs)
    assert threads["ort_intra_op"] == 2


@pytest.mark.slow  # an OpenVINO export (shared with the openvino engine) and a pipeline compile
def test_ovgenai_generates_torchs_greedy_tokens(tiny_handle):
    _skip_unless_available(OvGenaiEngine)
    pairs, threads = _generations(OvGenaiEngine, tiny_handle("gpt2"))
    assert [g.token_ids for g, _ in pairs] == [ref for _, ref in pairs]
    assert threads["openvino_num_threads"] == "2"


def _llamacpp_or_skip(handle):
    _skip_unless_available(LlamaCppEngine)
    if converter_dir(handle.cache_dir) is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py not found (tools/install_llamacpp.sh or $GREENSERVE_LLAMA_CPP)")


def _first_token_rate(pairs):
    return sum(g.token_ids[0] == ref[0] for g, ref in pairs) / len(pairs)


@pytest.mark.slow  # llama.cpp's converter runs in a child process
def test_llamacpp_f16_generates_torchs_greedy_tokens_up_to_f16_rounding(tiny_handle):
    handle = tiny_handle("gpt2")
    _llamacpp_or_skip(handle)
    pairs, threads = _generations(LlamaCppEngine, handle, "f16")
    exact = sum(g.token_ids == ref for g, ref in pairs) / len(pairs)
    print(f"llamacpp f16 vs torch fp32: {exact:.0%} of prompts identical")
    # f16 weights round fp32's (~5e-4 relative), which flips argmaxes only near ties: a wrong
    # conversion (layout, norms, positions) agrees on next to nothing
    assert _first_token_rate(pairs) == 1.0 and exact >= 0.7
    assert threads["llamacpp_threads"] == 2 and threads["llamacpp_threads_batch"] == 2


@pytest.mark.slow
def test_llamacpp_q8_0_gets_a_quality_figure_not_an_exactness_verdict(tiny_handle):
    from pytest_greenserve.samples import match_rate

    handle = tiny_handle("gpt2")
    _llamacpp_or_skip(handle)
    pairs, _ = _generations(LlamaCppEngine, handle, "q8_0")
    rate = match_rate([g.token_ids for g, _ in pairs], [ref for _, ref in pairs])
    print(f"llamacpp q8_0 vs torch fp32: match rate {rate:.0%}, first token {_first_token_rate(pairs):.0%}")
    assert rate is not None and 0.0 <= rate <= 1.0
    assert all(len(g.token_ids) == NEW_TOKENS for g, _ in pairs)
    # the same model, quantised: most prompts still start with torch's token
    assert _first_token_rate(pairs) >= 0.6


@pytest.mark.slow  # a server process loads the engine
def test_llamacpp_q8_0_serves_over_http_the_tokens_it_gives_in_process(tiny_handle):
    from pytest_greenserve.serving import missing_serve_reason
    from pytest_greenserve.serving.client import HttpTarget

    if missing_serve_reason():
        pytest.skip(missing_serve_reason())
    handle = tiny_handle("gpt2")
    _llamacpp_or_skip(handle)
    options = EngineOptions(threads=1, variant="q8_0")
    local = LlamaCppEngine(handle, "cpu", options)
    local.load()
    expected = [local.generate(p, 8).token_ids for p in _prompts(3)]
    local.close()
    target = HttpTarget(handle, "cpu", LlamaCppEngine, options, config_name="llamacpp-cpu:q8_0", health_timeout_s=120)
    target.load()
    try:
        assert [target.generate(p, 8).token_ids for p in _prompts(3)] == expected
    finally:
        target.close()
