"""OpenVINO through Optimum Intel (``openvino``); CPU only (``openvino-cuda`` does not exist).

Inference precision is pinned to f32 unless asked otherwise: OpenVINO's default on CPUs with
bf16 support is bf16 inference and a reduced-precision KV cache, which changes greedy tokens.
Export keeps fp32 weights (Optimum Intel would otherwise compress models over 1B parameters
to int8, which is a different model, not a different engine).
"""

from __future__ import annotations

from typing import Sequence

from .base import Engine, EngineError, Generation, hf_generate, missing_module_reason
from .exports import cached_export, export_dir


class OpenVinoEngine(Engine):
    name = "openvino"
    providers = ("cpu",)
    libraries = ("torch", "transformers", "optimum", "optimum-intel", "openvino")

    @classmethod
    def unavailable_reason(cls, provider):
        if provider != "cpu":
            return "openvino serves on cpu only"
        return missing_module_reason("openvino", "optimum.intel", extra="openvino")

    def _export(self, tmp):
        from optimum.intel import OVModelForCausalLM

        model = OVModelForCausalLM.from_pretrained(self.model.ref, export=True, compile=False, load_in_8bit=False)
        model.save_pretrained(tmp)

    def ov_config(self) -> dict:
        precision = self.options.openvino_precision
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if precision != "default":
            config.update(INFERENCE_PRECISION_HINT=precision, KV_CACHE_PRECISION=precision)
        if self.options.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.options.threads)
        return config

    def load(self):
        from optimum.intel import OVModelForCausalLM

        target = export_dir(self.model, self.name, self.versions())
        try:
            cached_export(target, self._export, self.options.progress)
        except Exception as exc:
            raise EngineError(f"openvino export of {self.model.name} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self.ov_model = OVModelForCausalLM.from_pretrained(target, ov_config=self.ov_config(), compile=True)

    def generate(self, input_ids: Sequence[int], new_tokens: int) -> Generation:
        return hf_generate(self.ov_model, input_ids, new_tokens, self.model)

    def thread_settings(self) -> dict:
        """torch's and OpenMP's (the base), plus OpenVINO's INFERENCE_NUM_THREADS: as the compiled
        model reports it where it can, else as configured (None: OpenVINO's default)."""
        out = super().thread_settings()
        out["openvino_num_threads"] = self.ov_config().get("INFERENCE_NUM_THREADS")
        try:
            compiled = self.ov_model.request.get_compiled_model()
            out["openvino_num_threads"] = compiled.get_property("INFERENCE_NUM_THREADS")
            out["openvino_num_streams"] = str(compiled.get_property("NUM_STREAMS"))
        except Exception:  # not loaded, or a version without the property
            pass
        return out

    def close(self):
        self.ov_model = None
