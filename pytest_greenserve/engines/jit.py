"""TorchScript (``jit``): the model's per-step forward traced with its KV cache.

Tracing ``generate`` is impossible and tracing one plain forward pass (the paper's approach)
recomputes the whole sequence at every step; instead two graphs are traced with
``torch.jit.trace`` when the engine loads:

* **prefill** ``(input_ids, attention_mask, position_ids, cache_position)`` ->
  ``(logits of the last position, past)``, where ``past`` is the KV cache as a tuple of
  ``(key, value)`` tensor pairs, one per layer;
* **decode** the same inputs for one new token, plus ``past`` -> ``(logits, new past)``.

A small greedy loop in Python (``generate``) drives them. It reproduces what
``hf_generate`` asks of transformers' ``generate`` (greedy argmax over the last logits,
EOS ids suppressed at every step because ``min_new_tokens == max_new_tokens``), so the
token ids are identical to the ``torch`` engine's.

Shapes stay dynamic: the traced size arithmetic (sequence and cache lengths) follows the
inputs, so graphs traced at one prompt length serve other prompt lengths and a growing cache.
What tracing bakes in are Python-level decisions; the ones taken here hold for every call the
loop makes (batch of one, no padding, the mask always materialised, see ``_trace_patches``).
"""

from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from typing import Sequence

from .base import Engine, EngineError, Generation, load_torch_model, torch_unavailable_reason

#: prompt length used for the example inputs of the traces (any length > 1 works)
TRACE_PROMPT_LEN = 8
#: generations run in load() so that TorchScript's profiling runs are not timed as requests
WARMUP_RUNS = 2


@contextlib.contextmanager
def _trace_patches():
    """Make transformers 4.5x models traceable by TorchScript, and undo it afterwards.

    These are the patches optimum-onnx applies for its own TorchScript-based ONNX export
    (``optimum.exporters.onnx.model_patcher.ModelPatcher``); we reuse its replacement
    functions rather than copying them. They are global in transformers, and other engines
    run eager models in the same process, so the originals are restored on exit.
    """
    import transformers.masking_utils as mu
    from optimum.exporters.onnx.model_patcher import (
        eager_mask_without_vmap,
        find_packed_sequence_indices_patched,
        patched_dynamic_layer_update,
        sdpa_mask_without_vmap,
    )
    from transformers.cache_utils import DynamicLayer

    masks = mu.AttentionMaskInterface._global_mapping
    saved_masks = {key: masks[key] for key in ("sdpa", "eager") if key in masks}
    saved_find = mu.find_packed_sequence_indices
    saved_update = DynamicLayer.__dict__["update"]
    try:
        # 1. The 4D attention masks are built with torch.vmap, which TorchScript cannot trace
        #    ("RuntimeError: unordered_map::at"); these build the same mask by broadcasting.
        #    While tracing, transformers always materialises the mask (it never relies on
        #    SDPA's is_causal shortcut), so the graphs compute it from the inputs' shapes.
        mu.AttentionMaskInterface.register("sdpa", sdpa_mask_without_vmap)
        mu.AttentionMaskInterface.register("eager", eager_mask_without_vmap)
        # 2. Packed-sequence detection uses torch.diff on position_ids and a data-dependent
        #    branch; we never pack sequences, so "no packed sequences" (all zeros) is right.
        mu.find_packed_sequence_indices = find_packed_sequence_indices_patched
        # 3. DynamicLayer.update concatenates onto an empty placeholder tensor the first time,
        #    which traces badly; the patch stores the first key/value states as they are.
        #    It matters for the decode trace, which refills a fresh cache from the past tuples.
        DynamicLayer.update = patched_dynamic_layer_update
        yield
    finally:
        for key, fn in saved_masks.items():
            mu.AttentionMaskInterface.register(key, fn)
        mu.find_packed_sequence_indices = saved_find
        DynamicLayer.update = saved_update


def _step_module(model, wrap_encoder_decoder: bool):
    """The ``torch.nn.Module`` whose forward is traced, once without and once with ``past``.

    (Defined in a function because torch is imported lazily.)
    """
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    params = set(inspect.signature(model.forward).parameters)

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, cache_position, past=None):
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, return_dict=True)
            # generate() passes these whenever forward accepts them, and so do we (bloom has
            # no position_ids: its ALiBi positions come from the attention mask).
            if "position_ids" in params:
                kwargs["position_ids"] = position_ids
            if "cache_position" in params:
                kwargs["cache_position"] = cache_position
            if "logits_to_keep" in params:
                kwargs["logits_to_keep"] = 1  # as generate() does: lm_head on the last position only
            if past is not None:
                # The cache crosses the graph boundary as plain (key, value) tensors; the Cache
                # object transformers wants is rebuilt here, inside the trace.
                cache = DynamicCache.from_legacy_cache(past)
                if wrap_encoder_decoder:
                    # gpt_bigcode (4.57) keeps its self-attention KV in an EncoderDecoderCache
                    cache = EncoderDecoderCache(cache, DynamicCache())
                kwargs["past_key_values"] = cache
            out = self.model(**kwargs)
            cache = out.past_key_values
            if isinstance(cache, EncoderDecoderCache):
                cache = cache.self_attention_cache
            # every family here stores (batch, kv heads, sequence, head dim) per layer, bloom too
            new_past = tuple((layer.keys, layer.values) for layer in cache.layers)
            return out.logits[:, -1, :], new_past

    return Step().eval()


class JitEngine(Engine):
    name = "jit"
    libraries = ("torch", "transformers", "optimum-onnx")
    dtypes = ("fp32", "bf16")  # the traces run in the dtype load_torch_model loaded

    @classmethod
    def unavailable_reason(cls, provider):
        return torch_unavailable_reason(provider, "optimum.exporters.onnx", extra="jit")

    def load(self):
        import torch

        self.device = "cuda" if self.provider == "cuda" else "cpu"
        model = load_torch_model(self)
        if self.options.progress:
            self.options.progress(f"tracing {self.model.name} with TorchScript (prefill and decode step)")
        vocab = model.config.get_text_config().vocab_size
        self.eos = torch.tensor([i for i in self.model.eos_token_ids if 0 <= i < vocab],
                                dtype=torch.long, device=self.device)
        try:
            self.prefill, self.decode = self._trace(model)
            # TorchScript's profiling executor records shapes on a graph's first run and
            # optimises it on the second; both are several times slower than later runs. Two
            # short generations keep that one-off cost in load(), out of the timed requests.
            for _ in range(WARMUP_RUNS):
                self.generate([i % vocab for i in range(1, TRACE_PROMPT_LEN + 1)], 3)
        except Exception as exc:  # tracing fails in many ways; the user needs one line
            first = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            raise EngineError(f"jit could not trace {self.model.name}: {first}") from exc

    def _trace(self, model):
        import torch
        from transformers.cache_utils import EncoderDecoderCache

        n = TRACE_PROMPT_LEN
        dev = self.device
        # example ids (any will do; no random numbers, so the global RNG is left alone)
        ids = (torch.arange(1, n + 2, device=dev) % model.config.get_text_config().vocab_size).unsqueeze(0)
        pos = torch.arange(n + 1, device=dev).unsqueeze(0)
        mask = torch.ones(1, n + 1, dtype=torch.long, device=dev)
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings flag Python-level decisions baked into the graph (shape checks,
            # constants); the ones transformers triggers hold for every call generate() makes.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # torch 2.13 deprecates TorchScript in favour of torch.compile/torch.export; it
            # still works, and measuring it (as the paper did) is the point of this engine.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning)
            # Which cache object does the model build for itself? The decode step must hand
            # it the same kind (an EncoderDecoderCache for gpt_bigcode in transformers 4.57).
            probe = model(input_ids=ids[:, :2], attention_mask=mask[:, :2], use_cache=True, return_dict=True)
            wrap = isinstance(probe.past_key_values, EncoderDecoderCache)
            step = _step_module(model, wrap)
            with _trace_patches():
                prefill_in = (ids[:, :n], mask[:, :n], pos[:, :n], pos[0, :n])
                prefill = torch.jit.trace(step, prefill_in, check_trace=False)
                _, past = step(*prefill_in)
                decode_in = (ids[:, n:], mask, pos[:, n:], pos[0, n:], past)
                decode = torch.jit.trace(step, decode_in, check_trace=False)
        return prefill, decode

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        import torch

        start = time.perf_counter()
        if new_tokens <= 0:
            return Generation(token_ids=[], ttft_s=None)
        dev = self.device
        n = len(input_ids)
        total = n + new_tokens
        with torch.inference_mode():
            ids = torch.tensor([list(input_ids)], dtype=torch.long, device=dev)
            # Batch of one without padding: the mask is all ones and positions are 0..L-1,
            # exactly what generate() derives from an all-ones attention mask.
            mask = torch.ones(1, total, dtype=torch.long, device=dev)
            positions = torch.arange(total, dtype=torch.long, device=dev)
            logits, past = self.prefill(ids, mask[:, :n], positions[None, :n], positions[:n])
            token = self._pick(logits)
            token.item()  # the first new token exists now (.item() synchronises a CUDA device)
            ttft = time.perf_counter() - start
            tokens = [token]
            for i in range(n, total - 1):
                logits, past = self.decode(token, mask[:, : i + 1], positions[None, i : i + 1],
                                           positions[i : i + 1], past)
                token = self._pick(logits)
                tokens.append(token)
            out = torch.cat(tokens, dim=1)[0].tolist()  # .tolist() synchronises a CUDA device
        return Generation(token_ids=out, ttft_s=ttft)

    def _pick(self, logits):
        """Greedy choice with EOS forbidden (generate's min_new_tokens processor): shape (1, 1)."""
        logits = logits.float()
        if self.eos.numel():
            logits = logits.index_fill(1, self.eos, float("-inf"))
        return logits.argmax(dim=-1, keepdim=True)

    def close(self):
        import gc

        self.prefill = self.decode = None
        gc.collect()
        if self.provider == "cuda":
            import torch

            torch.cuda.empty_cache()
