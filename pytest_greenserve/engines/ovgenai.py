"""OpenVINO GenAI (``ovgenai``): OpenVINO's own generation loop, ``LLMPipeline``, on the CPU.

The ``openvino`` engine runs the exported model under transformers' ``generate`` (a Python
loop); ``LLMPipeline`` runs the whole loop in C++ (on the CPU it serves through its paged-
attention scheduler). It loads the same OpenVINO IR the ``openvino`` engine exports, from the
same cache entry (one export per model). Prompts arrive as token ids, so the IR's tokenizer
is never needed.

As for ``openvino``, inference and KV cache precision are pinned to f32 unless
``--greenserve-openvino-precision`` says otherwise. Tokens: greedy, ``min_new_tokens`` =
``max_new_tokens``, which masks EOS at every step as the torch engine does.
openvino-genai's version must match openvino's (2026.4.1 with 2026.4.1).
"""

from __future__ import annotations

from typing import Sequence

from .base import Engine, EngineError, Generation, missing_module_reason
from .exports import cached_export, export_dir
from .openvino import OpenVinoEngine


class OvGenaiEngine(Engine):
    name = "ovgenai"
    providers = ("cpu",)
    libraries = ("openvino-genai", "openvino", "optimum-intel", "torch", "transformers")

    @classmethod
    def unavailable_reason(cls, provider):
        if provider != "cpu":
            return "ovgenai serves on cpu only"
        reason = missing_module_reason("openvino_genai", "optimum.intel", extra="ovgenai")
        if reason is None:
            try:
                import openvino_genai  # noqa: F401  (a version that does not match openvino fails here)
            except Exception as exc:
                return f"openvino_genai does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); its version must match openvino's"
        return reason

    def _ir(self) -> OpenVinoEngine:
        """The ``openvino`` engine of the same model and options: its export is the IR loaded here."""
        return OpenVinoEngine(self.model, "cpu", self.options)

    def properties(self) -> dict:
        """The CPU plugin properties the pipeline is created with (the ``openvino`` engine's)."""
        return self._ir().ov_config()

    def load(self):
        import openvino_genai

        ir = self._ir()
        target = export_dir(self.model, ir.name, ir.versions())
        try:
            cached_export(target, ir._export, self.options.progress)
        except Exception as exc:
            raise EngineError(f"openvino export of {self.model.name} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        try:
            self.pipe = openvino_genai.LLMPipeline(str(target), "CPU", **self.properties())
        except Exception as exc:
            raise EngineError(f"ovgenai could not load {self.model.name}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self.config = self.pipe.get_generation_config()
        self.config.do_sample = False
        self.config.num_beams = 1

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        import numpy as np
        import openvino as ov

        self.config.max_new_tokens = new_tokens
        self.config.min_new_tokens = new_tokens  # EOS masked until then, as in the torch engine
        ids = ov.Tensor(np.array([list(input_ids)], dtype=np.int64))
        result = self.pipe.generate(ids, self.config)
        tokens = [int(t) for t in result.tokens[0]]
        # the pipeline's own clock (a text streamer would need the IR's detokenizer): ms
        try:
            ttft_s = result.perf_metrics.get_ttft().mean / 1000.0
        except Exception:  # a version without perf metrics: not measured
            ttft_s = None
        return Generation(token_ids=tokens, ttft_s=ttft_s)

    def thread_settings(self) -> dict:
        """The base's, plus OpenVINO's INFERENCE_NUM_THREADS as configured (None: its default)."""
        out = super().thread_settings()
        out["openvino_num_threads"] = self.properties().get("INFERENCE_NUM_THREADS")
        return out

    def close(self):
        self.pipe = None
