"""Every CPU engine generates exactly the token ids of the eager-torch reference.

Tiny random models of the eight architecture families (see ``models.TINY_FAMILIES``) are run
through ``torch-cpu`` once per family; ``onnx-cpu``, ``openvino-cpu`` (f32, the default
precision) and ``jit-cpu`` must reproduce those ids for prompts of different lengths.
"""

from __future__ import annotations

import pytest

from pytest_greenserve.engines.base import EngineError, EngineOptions, ModelHandle
from pytest_greenserve.engines.jit import JitEngine
from pytest_greenserve.engines.onnx import OnnxEngine
from pytest_greenserve.engines.openvino import OpenVinoEngine
from pytest_greenserve.engines.torch_eager import TorchEngine

FAMILIES = ["gpt2", "gpt_bigcode", "gpt_neox", "bloom", "llama", "gemma", "phi", "stablelm"]
ENGINES = {"onnx": OnnxEngine, "openvino": OpenVinoEngine, "jit": JitEngine}

SNIPPETS = [
    "import os\n\ndef list_files(path):\n    for name in sorted(os.listdir(path)):\n        yield name\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
]
# (snippet, prompt length in tokens, new tokens): varied prompt lengths and generation lengths
CASES = [(0, 10, 32), (1, 13, 24), (0, 15, 16)]

# Exports trace the models too; their TracerWarnings are expected and only clutter the output.
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Engines run single-threaded here: on a shared 2-core machine, two spinning threads per
    engine are much slower, and thread count is irrelevant to which tokens come out.
    torch's thread count is process-wide, so it is restored for later test modules."""
    import torch

    before = torch.get_num_threads()
    yield EngineOptions(threads=1)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts():
    from pytest_greenserve.models import load_project_tokenizer

    tok = load_project_tokenizer()
    ids = [tok(s)["input_ids"] for s in SNIPPETS]
    out = []
    for snippet, length, new_tokens in CASES:
        assert len(ids[snippet]) >= length, "snippet too short for the prompt length"
        out.append((ids[snippet][:length], new_tokens))
    return out


@pytest.fixture(scope="module")
def reference(tiny_handle, prompts, one_thread):
    """``reference(family)`` -> torch-cpu token ids per prompt, computed once per family."""
    cache: dict[str, list[list[int]]] = {}

    def get(family: str) -> list[list[int]]:
        if family not in cache:
            engine = TorchEngine(tiny_handle(family), "cpu", one_thread)
            engine.load()
            try:
                cache[family] = [engine.generate(ids, n).token_ids for ids, n in prompts]
            finally:
                engine.close()
        return cache[family]

    return get


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_tokens_are_varied(family, reference, prompts):
    # A model that repeats one token would make every consistency check below pass trivially.
    for (ids, n), ref in zip(prompts, reference(family)):
        assert len(ref) == n
        assert len(set(ref)) > 4, f"{family}: reference tokens are degenerate: {ref}"


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("family", FAMILIES)
def test_same_tokens_as_torch(family, engine, tiny_handle, reference, prompts, one_thread):
    cls = ENGINES[engine]
    reason = cls.unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    expected = reference(family)
    eng = cls(tiny_handle(family), "cpu", one_thread)  # openvino: f32, the default precision
    eng.load()
    try:
        for (ids, n), ref in zip(prompts, expected):
            assert len(set(ref)) > 4, f"{family}: reference tokens are degenerate: {ref}"
            gen = eng.generate(ids, n)
            assert len(gen.token_ids) == n, f"{engine}-cpu produced {len(gen.token_ids)} tokens, not {n}"
            assert gen.token_ids == ref, (
                f"{engine}-cpu differs from torch-cpu on {family} (prompt of {len(ids)} tokens) "
                f"from new token {_first_difference(gen.token_ids, ref)}"
            )
            assert gen.ttft_s is not None and gen.ttft_s > 0
    finally:
        eng.close()


def test_jit_restores_transformers_patches(tiny_handle):
    """Tracing patches transformers globally; eager engines in the same process need the originals."""
    import transformers.masking_utils as mu
    from transformers.cache_utils import DynamicLayer

    before = (mu.ALL_MASK_ATTENTION_FUNCTIONS["sdpa"], mu.ALL_MASK_ATTENTION_FUNCTIONS["eager"],
              mu.find_packed_sequence_indices, DynamicLayer.__dict__["update"])
    eng = JitEngine(tiny_handle("llama"), "cpu")
    eng.load()
    eng.close()
    after = (mu.ALL_MASK_ATTENTION_FUNCTIONS["sdpa"], mu.ALL_MASK_ATTENTION_FUNCTIONS["eager"],
             mu.find_packed_sequence_indices, DynamicLayer.__dict__["update"])
    assert after == before


@pytest.mark.parametrize("content", [None, '{"model_type": "no-such-architecture"}'], ids=["empty", "bad-config"])
def test_jit_unloadable_model_is_one_line_engine_error(tmp_path, content):
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    if content is not None:
        (model_dir / "config.json").write_text(content)
    handle = ModelHandle(name="broken", ref=str(model_dir), key="broken@local", architecture="unknown",
                         cache_dir=tmp_path / "cache")
    with pytest.raises(EngineError) as info:
        JitEngine(handle, "cpu").load()
    message = str(info.value)
    assert message.startswith("jit could not load broken: ")
    assert "\n" not in message


def test_the_torch_reference_reports_one_positive_margin_per_generated_token(tiny_handle, prompts, one_thread):
    """The tie-aware check's input: the top-2 score gap at each greedy step (issue 8, §6)."""
    engine = TorchEngine(tiny_handle("gpt2"), "cpu", one_thread)
    engine.load()
    try:
        plain = engine.generate(*prompts[0])
        engine.keep_margins = True
        gen = engine.generate(*prompts[0])
    finally:
        engine.close()
    ids, new_tokens = prompts[0]
    assert plain.margins is None  # measured requests keep no scores
    assert gen.token_ids == plain.token_ids  # asking for scores changes nothing generated
    assert gen.margins is not None and len(gen.margins) == len(gen.token_ids) == new_tokens
    assert all(m > 0 for m in gen.margins)  # an exact fp32 tie is vanishingly unlikely
    assert all(m == m and m != float("inf") for m in gen.margins)  # finite
